"""Smoke test of an installed laperm_jax wheel, run outside the checkout.

Checks that laperm_jax is imported from site-packages (not from a checkout), that the installed
metadata carries the version and the licence, that the wheel installed no ``experiments``
package, and runs the docstring example of every public name against the installed code.
"""

import doctest
import importlib.metadata
import importlib.util
import pathlib
import sys

import laperm_jax


def main() -> None:
  location = pathlib.Path(laperm_jax.__file__).resolve()
  if 'site-packages' not in location.parts:
    sys.exit(f'laperm_jax was imported from {location}, not from the installed wheel')
  if importlib.util.find_spec('experiments') is not None:
    sys.exit('an `experiments` package is importable: the wheel must install laperm_jax only')
  dist = importlib.metadata.distribution('laperm_jax')
  if dist.version != laperm_jax.__version__:
    sys.exit(f'metadata version {dist.version} != laperm_jax.__version__ '
             f'{laperm_jax.__version__}')
  licences = [f for f in dist.files or [] if f.name == 'LICENSE']
  if not licences or 'MIT License' not in licences[0].read_text():
    sys.exit('the installed dist-info has no MIT LICENSE file')
  finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
  examples = 0
  # Type aliases (laperm_jax._typing) carry no docstring of their own to run: the API page
  # documents them.
  from laperm_jax import _typing  # pylint: disable=import-outside-toplevel
  aliases = {name for name in laperm_jax.__all__
             if getattr(_typing, name, None) is getattr(laperm_jax, name)}
  for name in laperm_jax.__all__:
    if name in aliases:
      continue
    tests = [t for t in finder.find(getattr(laperm_jax, name), name) if t.examples]
    if not tests:
      sys.exit(f'laperm_jax.{name} has no docstring example')
    for test in tests:
      runner.run(test)
      examples += len(test.examples)
  result = runner.summarize(verbose=False)
  if result.failed:
    sys.exit(f'{result.failed} of {result.attempted} docstring examples failed')
  print(f'laperm_jax {dist.version} from {location.parent}: {len(laperm_jax.__all__)} public '
        f'names, {examples} docstring examples pass; licence in the dist-info; no experiments')


if __name__ == '__main__':
  main()
