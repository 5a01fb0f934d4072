"""A benchmark's result file: its figures, the command, the date, provenance."""

from __future__ import annotations

import datetime
import json
import os
import sys

from experiments import provenance


def write(out: str, name: str, program: str, argv: list[str] | None,
          figures: dict) -> str:
  """Writes ``figures`` with how and where they were made to ``out/name``.

  Provenance is read first: opening a committed result file for writing
  would make the checkout look dirty.

  Args:
    out: the result directory (made if missing).
    name: the file name, e.g. ``'eager.json'``.
    program: the module run, e.g. ``'benchmarks.eager'``.
    argv: the arguments it was given (None: ``sys.argv[1:]``).
    figures: what was measured (JSON-serialisable).

  Returns:
    The path written.
  """
  record = dict(command=f'python -m {program} ' +
                ' '.join(argv if argv is not None else sys.argv[1:]),
                date=datetime.datetime.now(datetime.UTC)
                .isoformat(timespec='seconds'),
                **figures, provenance=provenance.collect())
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, name)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=1)
    f.write('\n')
  return path
