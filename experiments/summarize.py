"""Markdown table of results.json files: ``python -m experiments.summarize DIR...``.

Each argument is a run directory (or a results.json); with ``--optimizer
both`` directories the LaPerm and Adam sub-runs are listed separately.
"""

from __future__ import annotations

import json
import os
import sys


def find_results(path: str) -> list[str]:
  if path.endswith('.json'):
    return [path]
  subs = [os.path.join(path, o, 'results.json') for o in ('laperm', 'adam')]
  subs = [s for s in subs if os.path.exists(s)]
  if subs:
    return subs
  own = os.path.join(path, 'results.json')
  return [own] if os.path.exists(own) else []


def row(path: str) -> list[str]:
  with open(path, encoding='utf-8') as f:
    res = json.load(f)
  cfg = res['config']
  init = cfg['init']
  if init != 'default':
    density = cfg['density']
    if isinstance(density, list):
      density = '/'.join(f'{d:.3g}' for d in density)
    init = f'{init} {density}'
  return [os.path.dirname(path), cfg['model'], res['dataset']['name'],
          cfg['optimizer'], init, str(cfg['k_steps']) if cfg['optimizer'] ==
          'laperm' else '-', f'{cfg["epochs"]:g}', str(cfg['seed']),
          f'{100 * res["final_test_accuracy"]:.2f}',
          f'{100 * res["best_test_accuracy"]:.2f}',
          f'{100 * res.get("initial_zero_fraction_reconnected", 0):.1f}',
          str(res['exact_permutation']), f'{res["wall_time_s"]:.0f}']


def main(argv=None) -> int:
  paths = [p for arg in (argv if argv is not None else sys.argv[1:])
           for p in find_results(arg)]
  header = ['run', 'model', 'data', 'optimizer', 'init', 'k', 'epochs', 'seed',
            'final (%)', 'best post-sync (%)', 'zeros at init (%)', 'exact perm.', 'wall (s)']
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '|'.join('---' for _ in header) + '|')
  for p in paths:
    print('| ' + ' | '.join(row(p)) + ' |')
  return 0


if __name__ == '__main__':
  sys.exit(main())
