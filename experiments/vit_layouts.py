"""Compare weight-vector layouts: ``python -m experiments.vit_layouts``.

Trains LaPerm once per named layout of ``experiments.vit.LAYOUTS`` (each
passed to ``laperm_jax.laperm`` as ``vector_axes``) with the same run flags
as ``experiments.train`` (preset, k, seed, ``--val-split`` ...), on one
loaded dataset, and writes ``layouts.json`` (one row per layout, with the
run's provenance) and ``layouts.md`` to ``--out``. Meant for the validation
split: the layouts are a tuning choice.
"""

from __future__ import annotations

import argparse
import os
import sys

from experiments import analyze
from experiments import cli
from experiments import training
from experiments import vit


def layout_row(layout: str, results: dict) -> dict:
  """The summary of one layout's run."""
  return dict(layout=layout,
              final_accuracy=results['final_test_accuracy'],
              best_accuracy=results['best_test_accuracy'],
              evaluated_on=results['dataset']['name'],
              exact_permutation=results['exact_permutation'],
              exact_permutation_library=results['exact_permutation_library'],
              train_time_s=results['train_time_s'])


def run_layouts(args, layouts: list[str]) -> dict:
  """LaPerm for each layout; rows in the order given."""
  dataset = cli.load_dataset(cli.config_from_args(args))
  rows, last = [], None
  for layout in layouts:
    cfg = cli.config_from_args(args, optimizer='laperm', layout=layout)
    last = training.run(cfg, progress=not args.no_progress,
                        pipeline=cli.make_pipeline(cfg, dataset)).results
    rows.append(layout_row(layout, last))
    print(f'{layout}: final {cli.pct(rows[-1]["final_accuracy"])}%',
          flush=True)
  config = {k: v for k, v in last['config'].items() if k != 'layout'}
  return dict(rows=rows, config=config, provenance=last['provenance'])


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m experiments.vit_layouts',
                                   description=__doc__.split('\n')[0])
  cli.add_run_args(parser)
  parser.add_argument('--layouts', default=','.join(vit.LAYOUTS),
                      help='comma-separated names of experiments.vit.LAYOUTS')
  parser.add_argument('--out', default='runs/layouts')
  return parser


def main(argv=None) -> int:
  args = cli.parse(build_parser(), argv)
  layouts = args.layouts.split(',')
  unknown = sorted(set(layouts) - set(vit.LAYOUTS))
  if unknown:
    cli.fail(f'unknown layouts {unknown}; choose from {", ".join(vit.LAYOUTS)}')
  os.makedirs(args.out, exist_ok=True)
  out = run_layouts(args, layouts)
  cli.write_json(os.path.join(args.out, 'layouts.json'), out)
  rows = [[r['layout'], cli.pct(r['final_accuracy']),
           cli.pct(r['best_accuracy']), r['exact_permutation']]
          for r in out['rows']]
  analyze.write_md(os.path.join(args.out, 'layouts.md'),
                   f'Layouts: {args.model} on {out["rows"][0]["evaluated_on"]}',
                   analyze.markdown_table(['layout', 'final (%)', 'best (%)',
                                           'exact permutation'], rows))
  print(f'wrote {os.path.join(args.out, "layouts.json")}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
