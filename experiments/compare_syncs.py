"""Sync diagnostics of several runs side by side (RESULTS.md §8).

    python -m experiments.compare_syncs --out PLOT.png --title T \\
        paper=RUN_DIR carry=RUN_DIR ...

Each RUN_DIR holds a ``results.json`` written with ``--track-syncs``. Left:
accuracy just before (dashed) and just after (solid) every sync; right: the
percentage of reconnected weights each sync moved (log scale; a sync that
moved nothing is drawn at the bottom of the axis).
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position


def plot(runs: dict, path: str, title: str = '') -> None:
  fig, (ax_acc, ax_moved) = plt.subplots(1, 2, figsize=(10, 3.6))
  floor = 1e-3
  for label, records in runs.items():
    steps = [r['step'] for r in records]
    line, = ax_acc.plot(steps, [100 * r['acc_after'] for r in records],
                        '-', label=f'{label}: after sync')
    ax_acc.plot(steps, [100 * r['acc_before'] for r in records], '--',
                color=line.get_color(), alpha=0.7)
    ax_moved.plot(steps, [max(floor, 100 * r['changed_fraction'])
                          for r in records], '.-', color=line.get_color(),
                  label=label)
  ax_acc.set(xlabel='step', ylabel='accuracy (%)',
             title='after sync (solid), just before (dashed)')
  ax_moved.set(xlabel='step', ylabel='% of weights moved by the sync',
               yscale='log', ylim=(floor * 0.8, 100))
  for ax in (ax_acc, ax_moved):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--title', default='')
  parser.add_argument('runs', nargs='+', metavar='LABEL=RUN_DIR')
  args = parser.parse_args(argv)
  runs = {}
  for item in args.runs:
    label, run_dir = item.rsplit('=', 1)
    with open(os.path.join(run_dir, 'results.json')) as f:
      records = json.load(f).get('sync_records') or []
    if not records:
      parser.error(f'{run_dir}: no sync_records (run with --track-syncs)')
    runs[label] = records
  plot(runs, args.out, args.title)
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
