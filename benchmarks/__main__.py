"""``python -m benchmarks``: every benchmark with its default settings."""

import sys

from benchmarks import reconnect
from benchmarks import train_step

if __name__ == '__main__':
  for module in (reconnect, train_step):
    sys.argv = [module.__name__]
    module.main()
