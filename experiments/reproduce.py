"""Re-run the cheap rows of RESULTS.md and compare: ``python -m experiments.reproduce``.

Each row is a committed run directory under ``experiments/results/`` and the
``experiments.train`` flags that produced it: the default run, the LeNet
mnist5k rows (dense seeds 1 and 2, sparse) and F1 on mnist5k, a few minutes
on 2 CPU cores in all. Every row is re-run into ``--out`` and compared with
its committed ``results.json`` files, number by number (final and best
accuracy, every evaluation's accuracy and losses). The report says, per row,
whether the rerun is bit-identical and, if not, what moved, together with
whether this machine matches the one recorded in the committed file
(``provenance.machine``: CPU model and XLA's compile target, or the
accelerator).

On the recording machine, with the code of the commit a file records, a
rerun is bit-identical. On another CPU, LaPerm's
rank decisions amplify last-bit floating-point differences into different
arrangements: expect differences of a few tenths of a point (the spread of
the seeds), while Adam usually reproduces. Exit status 1 when a row differs
on a matching machine (a real reproduction failure), else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from experiments import provenance
from experiments import train

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')

_LENET = ['--preset', 'cpu_lenet300_mnist5k']
_SPARSE = _LENET + ['--seed', '1', '--optimizer', 'laperm', '--init',
                    'sparse']
ROWS: dict[str, list[str]] = {
    # committed directory under experiments/results -> train flags
    'default': [],
    'lenet300_mnist5k_seed1': _LENET + ['--seed', '1'],
    'lenet300_mnist5k_seed2': _LENET + ['--seed', '2'],
    'lenet300_mnist5k_sparse0.5_seed1': _SPARSE + [
        '--density', '0.5', '--first-layer-min-density', '0'],
    'lenet300_mnist5k_sparse0.3_seed1': _SPARSE + [
        '--density', '0.3', '--first-layer-min-density', '0'],
    'lenet300_mnist5k_sparse0.5_l1floor_seed1': _SPARSE + ['--density', '0.5'],
    'lenet300_mnist5k_sparse0.3_l1floor_seed1': _SPARSE + ['--density', '0.3'],
    'f1_mnist5k': ['--preset', 'cpu_f1_mnist5k', '--optimizer', 'laperm'],
}

# The numbers a rerun must give again (wall times and provenance may differ).
_ENTRY_FIELDS = ('step', 'test_accuracy', 'test_loss', 'train_loss',
                 'after_sync')
_FIELDS = ('final_test_accuracy', 'best_test_accuracy', 'best_step',
           'initial_test_accuracy', 'exact_permutation')


def result_files(directory: str) -> list[str]:
  """results.json paths of a run directory, relative to it."""
  names = [os.path.join(o, 'results.json') for o in ('laperm', 'adam')]
  names = [n for n in names if os.path.exists(os.path.join(directory, n))]
  return names or ['results.json']


def compare(recorded: dict, rerun: dict) -> list[str]:
  """What differs between two results.json contents (empty: bit-identical)."""
  diffs = []
  for field in _FIELDS:
    if field not in recorded:  # recorded before the field existed
      continue
    a, b = recorded.get(field), rerun.get(field)
    if a != b:
      if isinstance(a, float) and isinstance(b, float) and 'accuracy' in field:
        diffs.append(f'{field} {100 * a:.2f} -> {100 * b:.2f} '
                     f'({100 * (b - a):+.2f} pt)')
      else:
        diffs.append(f'{field} {a!r} -> {b!r}')
  h_a, h_b = recorded.get('history', []), rerun.get('history', [])
  if len(h_a) != len(h_b):
    diffs.append(f'{len(h_a)} evaluations -> {len(h_b)}')
  else:
    moved = [(x, y) for x, y in zip(h_a, h_b)
             if any(x.get(f) != y.get(f) for f in _ENTRY_FIELDS if f in x)]
    if moved:
      worst = max(abs(x['test_accuracy'] - y['test_accuracy'])
                  for x, y in moved)
      fields = sorted({f for x, y in moved for f in _ENTRY_FIELDS
                       if f in x and x.get(f) != y.get(f)})
      diffs.append(f'{len(moved)} of {len(h_a)} evaluations differ in '
                   f'{", ".join(fields)} (largest accuracy change '
                   f'{100 * worst:.2f} pt)')
  return diffs


def reproduce_row(name: str, argv: list[str], out: str,
                  results_dir: str | None = None) -> dict:
  committed = os.path.join(results_dir or RESULTS, name)
  if not os.path.isdir(committed):
    raise FileNotFoundError(f'no committed run {committed}')
  run_dir = os.path.join(out, name)
  if os.path.isdir(run_dir):
    shutil.rmtree(run_dir)
  code = train.main(argv + ['--no-progress', '--out', run_dir])
  if code:
    raise RuntimeError(f'{name}: experiments.train exited with {code}')
  here = provenance.machine()
  files = {}
  for rel in result_files(committed):
    with open(os.path.join(committed, rel), encoding='utf-8') as f:
      recorded = json.load(f)
    with open(os.path.join(run_dir, rel), encoding='utf-8') as f:
      rerun = json.load(f)
    same, why = provenance.same_machine(
        (recorded.get('provenance') or {}).get('machine'), here)
    files[rel] = dict(
        identical=not compare(recorded, rerun), differences=compare(recorded,
                                                                   rerun),
        recorded_final=recorded['final_test_accuracy'],
        rerun_final=rerun['final_test_accuracy'],
        recorded_commit=((recorded.get('provenance') or {}).get('git') or
                         {}).get('commit'),
        same_machine=same, machine_note=why)
  return dict(row=name, command=' '.join(['python -m experiments.train'] +
                                         argv), files=files)


def report_lines(rows: list[dict]) -> list[str]:
  lines = ['| row | run | recorded final | rerun final | bit-identical | '
           'same machine | differences |', '|---|---|---|---|---|---|---|']
  for row in rows:
    for rel, f in row['files'].items():
      run = os.path.dirname(rel) or 'laperm'
      lines.append(
          f'| {row["row"]} | {run} | {100 * f["recorded_final"]:.2f} | '
          f'{100 * f["rerun_final"]:.2f} | {"yes" if f["identical"] else "no"}'
          f' | {f["same_machine"]} ({f["machine_note"]}) | '
          f'{"; ".join(f["differences"]) or "-"} |')
  return lines


def failed(rows: list[dict]) -> bool:
  """A row that differs although the recorded machine is this one."""
  return any(not f['identical'] and f['same_machine'] is True
             for row in rows for f in row['files'].values())


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m experiments.reproduce',
      description='Re-run the cheap rows of RESULTS.md and compare them with '
      'the committed results.')
  parser.add_argument('--rows', default=','.join(ROWS),
                      help='comma-separated, from: ' + ', '.join(ROWS))
  parser.add_argument('--out', default='runs/reproduce')
  parser.add_argument('--record', action='store_true',
                      help='copy the rerun results.json over the committed '
                      'one where it is bit-identical (adds provenance to '
                      'files recorded before it was kept)')
  args = parser.parse_args(argv)
  names = [n for n in args.rows.split(',') if n]
  unknown = sorted(set(names) - set(ROWS))
  if unknown:
    print(f'error: unknown rows {unknown}; choose from {", ".join(ROWS)}',
          file=sys.stderr)
    return 2
  rows = []
  for name in names:
    print(f'== {name}: python -m experiments.train {" ".join(ROWS[name])}',
          flush=True)
    rows.append(reproduce_row(name, ROWS[name], args.out))
  here = provenance.machine()
  target = here.get('xla_target') or {}
  summary = dict(machine=here, rows=rows, failed=failed(rows))
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'reproduce.json'), 'w',
            encoding='utf-8') as f:
    json.dump(summary, f, indent=1)
  print(f'\nthis machine: {here.get("cpu_model", here.get("device_kind"))}, '
        f'XLA target {target.get("cpu")}')
  print('\n'.join(report_lines(rows)))
  if args.record:
    for row in rows:
      for rel, f in row['files'].items():
        if f['identical']:
          shutil.copyfile(os.path.join(args.out, row['row'], rel),
                          os.path.join(RESULTS, row['row'], rel))
          print(f'recorded {row["row"]}/{rel}')
  return 1 if summary['failed'] else 0


if __name__ == '__main__':
  sys.exit(main())
