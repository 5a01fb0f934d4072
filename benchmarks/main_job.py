"""What the main job costs: LaPerm against Adam, each run alone, cold.

Run ``python -m benchmarks.main_job [--pairs N] [--out DIR]``. Runs the
README's main command, ``python -m experiments.train --optimizer laperm``
and ``--optimizer adam``, each as its own process with the persistent
compilation cache off (a cold start), interleaved (laperm, adam, laperm,
adam, ...) so that both see the same load of a shared machine. Per process
it records the whole process wall time and, from its results.json, the
compile time, the steady training time (no compilation) and the number of
syncs. It prints, per pair and over the pairs (median of the per-pair
ratios), LaPerm / Adam for the steady training time and the process wall
time, and the cost of one sync in plain steps,
``(T_laperm - T_adam) / syncs / (T_adam / steps)``; and writes everything,
with commit and machine, to ``DIR/main_job.json`` (default
``benchmarks/results/main-job-cpu-<date>``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIMIZERS = ('laperm', 'adam')


def run_once(optimizer: str, out: str, extra: list[str]) -> dict:
  """One cold process of the main command; its timings."""
  command = [sys.executable, '-m', 'experiments.train', '--optimizer',
             optimizer, '--no-compile-cache', '--no-progress', '--out', out]
  start = time.perf_counter()
  subprocess.run(command + extra, cwd=ROOT, check=True,
                 stdout=subprocess.DEVNULL)
  process_s = time.perf_counter() - start
  with open(os.path.join(out, 'results.json'), encoding='utf-8') as f:
    res = json.load(f)
  return dict(optimizer=optimizer, process_wall_s=process_s,
              run_wall_s=res['wall_time_s'],
              compile_time_s=res['compile_time_s'],
              train_time_s=res['train_time_s'],
              steps_per_second=res['steps_per_second'],
              n_syncs=res['n_syncs'],
              total_steps=res['config']['total_steps'],
              compiled_programs=res['compiled_programs'],
              final_test_accuracy=res['final_test_accuracy'])


def pair_ratios(laperm: dict, adam: dict) -> dict:
  """LaPerm / Adam of one interleaved pair, and the sync cost in steps.

  >>> lap = dict(train_time_s=2.5, process_wall_s=12.0, n_syncs=5,
  ...            total_steps=100)
  >>> pair_ratios(lap, dict(train_time_s=2.0, process_wall_s=10.0))
  {'train_time': 1.25, 'process_wall': 1.2, 'sync_cost_plain_steps': 5.0}
  """
  plain_step_s = adam['train_time_s'] / laperm['total_steps']
  extra_s = laperm['train_time_s'] - adam['train_time_s']
  return dict(
      train_time=laperm['train_time_s'] / adam['train_time_s'],
      process_wall=laperm['process_wall_s'] / adam['process_wall_s'],
      sync_cost_plain_steps=extra_s / laperm['n_syncs'] / plain_step_s)


def summarise(runs: list[dict]) -> dict:
  """Per-pair ratios, their medians and the medians of each quantity."""
  pairs = [pair_ratios(runs[i], runs[i + 1]) for i in range(0, len(runs), 2)]
  median = lambda values: statistics.median(values)
  per_optimizer = {
      opt: {key: median([r[key] for r in runs if r['optimizer'] == opt])
            for key in ('process_wall_s', 'compile_time_s', 'train_time_s',
                        'steps_per_second')}
      for opt in OPTIMIZERS}
  return dict(pairs=pairs,
              median_ratio={key: median([p[key] for p in pairs])
                            for key in pairs[0]},
              median=per_optimizer)


def table(summary: dict) -> str:
  """The markdown table of the medians, and the spread over the pairs."""
  med = summary['median']
  rows = ['| | process wall (s) | compile (s) | train, steady (s) | '
          'steps/s |', '|---|---|---|---|---|']
  for opt in OPTIMIZERS:
    m = med[opt]
    rows.append(f'| {opt} | {m["process_wall_s"]:.1f} | '
                f'{m["compile_time_s"]:.1f} | {m["train_time_s"]:.2f} | '
                f'{m["steps_per_second"]:.0f} |')
  ratio, pairs = summary['median_ratio'], summary['pairs']
  spread = lambda key: (f'{min(p[key] for p in pairs):.2f}'
                        f'–{max(p[key] for p in pairs):.2f}')
  rows.append(f'| LaPerm / Adam, median of {len(pairs)} pairs (range) | '
              f'{ratio["process_wall"]:.2f}x ({spread("process_wall")}) | | '
              f'{ratio["train_time"]:.2f}x ({spread("train_time")}) | |')
  rows.append(f'\nA sync costs {ratio["sync_cost_plain_steps"]:.1f} plain '
              f'steps beyond a plain step (median of pairs; range '
              f'{spread("sync_cost_plain_steps")}).')
  return '\n'.join(rows)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.main_job')
  parser.add_argument('--pairs', type=int, default=3)
  parser.add_argument('--out', default=os.path.join(
      ROOT, 'benchmarks', 'results',
      f'main-job-cpu-{datetime.date.today().isoformat()}'))
  parser.add_argument('extra', nargs='*',
                      help='more experiments.train flags (after --)')
  args = parser.parse_args(argv)
  runs = []
  with tempfile.TemporaryDirectory() as scratch:
    for i in range(args.pairs):
      for opt in OPTIMIZERS:
        runs.append(run_once(opt, os.path.join(scratch, f'{opt}{i}'),
                             args.extra))
        print(f'pair {i + 1} {opt}: process {runs[-1]["process_wall_s"]:.1f} s'
              f', compile {runs[-1]["compile_time_s"]:.1f} s, train '
              f'{runs[-1]["train_time_s"]:.2f} s', flush=True)
  summary = summarise(runs)
  for i, pair in enumerate(summary['pairs']):
    print(f'pair {i + 1}: train {pair["train_time"]:.2f}x, process '
          f'{pair["process_wall"]:.2f}x, a sync = '
          f'{pair["sync_cost_plain_steps"]:.1f} plain steps')
  print(table(summary))
  path = records.write(args.out, 'main_job.json', 'benchmarks.main_job',
                       argv, dict(runs=runs, **summary))
  print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
