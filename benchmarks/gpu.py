"""Every GPU measurement in one command, for one device call.

Run ``python -m benchmarks.gpu --out DIR [--smoke] [--budget SECONDS]``
(``--smoke``: tiny shapes and runs, for checking the script on CPU). Parts,
each in its own process so that a crash or a time-out loses only that part,
and each writing its JSON as it goes:

1. ``reconnect``: every model's kernels reconnected in one jitted call, per
   variant of ``reconnect_rows``, against the int32 single-sort floor, the
   public ``laperm_jax.reconnect``, ``jnp.argsort`` + scatter and the
   original argsort(argsort) + gather, on LeNet-300-100, Conv7, the CIFAR
   ResNet, 2048², 4096² and a 1.0B-weight transformer layer stack; every
   output checked bit-identical to ``[auto]`` on the device. Ends with the
   variant that the measurements choose for this platform (the smallest
   geometric mean of paired ratios to the floor over the shapes).
2. ``train_step``: a jitted train step (plain Adam, LaPerm non-sync, LaPerm
   sync) on LeNet-300-100, Conv7 and an MLP large enough to keep the GPU
   busy; amortised overhead at the paper's k; whole sync periods in one
   ``fori_loop`` for the small models.
3. side by side (the GPU is not timed any more): the core test files on
   this backend (pytest), and Conv7 on Fashion-MNIST with LaPerm(Adam) and
   Adam (preset ``gpu_conv7_fashion``: the paper's 45 epochs, stopped at an
   epoch boundary if the budget runs out; results.json says where).

Writes ``DIR/gpu.json`` (everything), ``DIR/conv7_laperm.json`` and
``DIR/conv7_adam.json`` (the experiments' results.json), ``DIR/pytest.log``
and ``DIR/gpu.log``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

CORE_TESTS = ('tests/test_ranking.py', 'tests/test_ranking_tree.py',
              'tests/test_transform.py', 'tests/test_properties.py',
              'tests/test_errors.py', 'tests/test_lowering.py',
              'tests/test_non_sync_path.py')


def log(*args) -> None:
  print(f'[{time.strftime("%H:%M:%S")}]', *args, flush=True)


def write_json(path: str, obj) -> None:
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=1, default=float)
  os.replace(path + '.tmp', path)


# ------------------------------------------------------------- machine --
def machine_info() -> dict:
  import jax
  import optax
  info = dict(backend=jax.default_backend(), jax=jax.__version__,
              optax=optax.__version__,
              devices=[f'{d.platform}:{d.device_kind}' for d in jax.devices()],
              python=sys.version.split()[0])
  try:
    smi = subprocess.run(
        ['nvidia-smi', '--query-gpu=name,memory.total,driver_version',
         '--format=csv,noheader'], capture_output=True, text=True, timeout=20)
    info['nvidia_smi'] = smi.stdout.strip()
  except (OSError, subprocess.SubprocessError):
    info['nvidia_smi'] = None
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True,
                            text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    commit = None
  # The device's copy of the tree may carry stale git metadata: the caller
  # passes the commit it sent.
  info['commit'] = os.environ.get('LAPERM_COMMIT') or commit
  return info


# ------------------------------------------------------ 1. reconnect --
def transformer_stack(d_model: int, layers: int) -> list[tuple[int, int]]:
  """Dense kernels (in, out) of a pre-LN transformer's layer stack."""
  per_layer = [(d_model, 3 * d_model), (d_model, d_model),
               (d_model, 4 * d_model), (4 * d_model, d_model)]
  return per_layer * layers


def reconnect_models(smoke: bool) -> dict:
  from benchmarks import kernels
  if smoke:
    return {'LeNet-300-100': kernels.lenet_300_100(),
            'Conv7': kernels.conv7(),
            'transformer d=128, 2 layers': transformer_stack(128, 2)}
  models = {name: fn() for name, fn in kernels.MODELS.items()}
  models['transformer stack d=2048, 20 layers (1.0B weights)'] = (
      transformer_stack(2048, 20))
  return models


def device_kernels(shapes, seed: int = 0):
  """Current weights and their pool, drawn on the device (fast at 1B)."""
  import jax

  import laperm_jax
  keys = jax.random.split(jax.random.key(seed), 2 * len(shapes))
  current = [jax.random.normal(k, s) for k, s in zip(keys[::2], shapes)]
  initial = [jax.random.normal(k, s) for k, s in zip(keys[1::2], shapes)]
  pool = laperm_jax.sorted_pool(initial, mask=lambda p: [True] * len(p))
  return current, pool


def part_reconnect(work: str, smoke: bool, only: str | None = None) -> None:
  from benchmarks import reconnect as rb
  from benchmarks import timing
  from laperm_jax import _ranking as ranking

  results = dict(models={}, variants=list(ranking.VARIANTS))
  path = os.path.join(work, 'reconnect.json')

  for name, shapes in reconnect_models(smoke).items():
    if only and not any(o in name for o in only.split(',')):
      continue
    t0 = time.time()
    size = sum(math.prod(s) for s in shapes)
    log(f'reconnect: {name}, {len(shapes)} kernels, {size:,} weights')
    current, pool = device_kernels(shapes)
    rows, pool_rows = rb.row_inputs(current, pool)
    jitted = rb.jitted_contenders(current, pool, rows, pool_rows,
                                  layout_experiment=False,
                                  keyed_non_minor=True)
    checks = rb.bit_identical_to_auto(jitted)
    contenders = {label: timing.blocking(fn, *args)
                  for label, (fn, args) in jitted.items()}
    rounds = 3 if size > 10**8 else 7 if size > 2 * 10**6 else 25
    stats = timing.interleaved(contenders, rounds=rounds, warmup=1)
    floor = 'floor: int32 sort'
    results['models'][name] = dict(
        kernels=[list(s) for s in shapes], weights=size, rounds=rounds,
        bit_identical_to_auto=checks,
        ms={label: dict(min=s['min'] * 1e3, median=s['median'] * 1e3)
            for label, s in stats.items()},
        paired_ratio_to_floor={label: timing.paired_ratio(stats, label, floor)
                               for label in stats},
        min_ratio_to_floor={label: s['min'] / stats[floor]['min']
                            for label, s in stats.items()},
        original_over_auto=timing.paired_ratio(
            stats, 'original formulation (JAX)', 'reconnect_rows[auto]'),
        table=timing.table(stats, floor, f'{name}: {len(shapes)} kernels, '
                           f'{size:,} weights'),
        seconds=time.time() - t0)
    print(results['models'][name]['table'], flush=True)
    del current, pool, rows, pool_rows, jitted, contenders
    results['choice'] = choose_variant(results['models'], ranking.VARIANTS)
    write_json(path, results)
  log('reconnect: choice', results.get('choice'))


def choose_variant(models: dict, variants) -> dict:
  """The variant with the smallest geometric mean ratio to the floor."""
  per_variant = {}
  for variant in variants:
    ratios = [m['paired_ratio_to_floor'][f'reconnect_rows[{variant}]']
              for m in models.values()]
    per_variant[variant] = dict(
        geomean=math.exp(sum(map(math.log, ratios)) / len(ratios)),
        worst=max(ratios))
  best = min(per_variant, key=lambda v: (per_variant[v]['geomean'],
                                         per_variant[v]['worst']))
  return dict(chosen=best, per_variant=per_variant,
              rule='smallest geometric mean over the models of the paired '
                   'median ratio to the int32 floor (ties: smallest worst)')


# ----------------------------------------------------- 2. train step --
def mlp_model(widths: tuple[int, ...]):
  import jax

  from benchmarks import train_step as ts

  def init(key):
    keys = jax.random.split(key, len(widths) - 1)
    return {f'dense{i}': {'kernel': ts.he_uniform(k, (m, n)),
                          'bias': jax.numpy.zeros(n, jax.numpy.float32)}
            for i, (k, m, n) in enumerate(zip(keys, widths[:-1],
                                              widths[1:]))}

  def apply(params, x):
    x = x.reshape(x.shape[0], -1)
    for i in range(len(widths) - 1):
      x = x @ params[f'dense{i}']['kernel'] + params[f'dense{i}']['bias']
      if i < len(widths) - 2:
        x = jax.nn.relu(x)
    return x
  return init, apply


def part_train_step(work: str, smoke: bool, only: str | None = None
                    ) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from benchmarks import alternatives
  from benchmarks import timing
  from benchmarks import train_step as ts
  import laperm_jax

  path = os.path.join(work, 'train_step.json')
  big_widths = (1024, 256, 256, 10) if smoke else (1024, 8192, 8192, 8192,
                                                     8192, 10)
  big_batch = 64 if smoke else 2048
  big_init, big_apply = mlp_model(big_widths)
  # (init, apply, batch, input shape, paper-like k, rounds per step timing)
  models = {
      'LeNet-300-100': (ts.lenet_init, ts.lenet_apply, 128, (28, 28, 1), 250,
                        300),
      'Conv7': (ts.conv7_init, ts.conv7_apply, 50, (28, 28, 1), 1200, 200),
      f'MLP {"-".join(map(str, big_widths))}': (
          big_init, big_apply, big_batch, (big_widths[0],), 1000, 30),
  }
  if smoke:
    models = {k: v[:4] + (min(v[4], 20), 5) for k, v in models.items()}
  if only:
    models = {name: spec for name, spec in models.items()
              if any(o in name for o in only.split(','))}
  results = {}
  adam = optax.adam(1e-3, eps=1e-7)
  for name, (init, apply, batch, in_shape, k, rounds) in models.items():
    t0 = time.time()
    log(f'train_step: {name}')
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch,) + in_shape), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    txs = {'plain': adam,
           'laperm non-sync': laperm_jax.laperm(adam, sync_period=2**30),
           'laperm sync': laperm_jax.laperm(adam, sync_period=1),
           ts.THROUGH_COND: alternatives.updates_through_cond(adam, 2**30)}
    runners = {}
    for label, tx in txs.items():
      params = init(jax.random.key(0))
      runners[label] = ts.Runner(ts.make_step(apply, tx), params,
                                 tx.init(params), x, y)
    stats = timing.interleaved(runners, rounds=rounds, warmup=3)
    paired = {label: timing.paired_ratio(stats, label, 'plain')
              for label in stats}
    minima = {label: stats[label]['min'] / stats['plain']['min']
              for label in stats}
    entry = dict(
        batch=batch, k=k, rounds=rounds,
        params=sum(p.size for p in jax.tree.leaves(init(jax.random.key(0)))),
        step_ms={label: dict(min=s['min'] * 1e3, median=s['median'] * 1e3)
                 for label, s in stats.items()},
        ratio_to_plain=dict(paired_median=paired, minima=minima),
        amortised_at_k={how: ((k - 1) * r['laperm non-sync'] +
                              r['laperm sync']) / k
                        for how, r in (('paired_median', paired),
                                       ('minima', minima))},
        table=timing.table(stats, 'plain', f'{name}: train step, batch '
                           f'{batch}, {rounds} rounds'))
    fresh = init(jax.random.key(0))
    compiled = jax.jit(ts.make_step(apply, txs['laperm non-sync']),
                       donate_argnums=(0, 1)).lower(
                           fresh, txs['laperm non-sync'].init(fresh), x,
                           y).compile()
    entry['param_sized_copies_in_laperm_step'] = ts.param_sized_copies(
        compiled.as_text(), fresh)
    del runners, compiled
    print(entry['table'], flush=True)
    print('param-sized copies in the LaPerm step:',
          entry['param_sized_copies_in_laperm_step'], flush=True)
    if not name.startswith('MLP'):
      entry['periods'] = periods(init, apply, x, y, k, smoke)
      print(entry['periods'], flush=True)
    entry['seconds'] = time.time() - t0
    results[name] = entry
    write_json(path, results)


def periods(init, apply, x, y, k: int, smoke: bool) -> dict:
  """k steps per call (one fori_loop); LaPerm with period k syncs once."""
  import jax
  import optax

  from benchmarks import timing
  from benchmarks import train_step as ts
  import laperm_jax
  adam = optax.adam(1e-3, eps=1e-7)
  txs = {'plain': adam, 'laperm': laperm_jax.laperm(adam, sync_period=k),
         'laperm non-sync': laperm_jax.laperm(adam, sync_period=2**30)}
  runners = {}
  for label, tx in txs.items():
    params = init(jax.random.key(0))
    runners[label] = ts.Runner(ts.make_period(ts.make_step(apply, tx), k),
                               params, tx.init(params), x, y)
  rounds = 3 if smoke else 7
  stats = timing.interleaved(runners, rounds=rounds, warmup=1)
  return dict(
      k=k, rounds=rounds,
      ms_per_step_min={label: s['min'] / k * 1e3
                       for label, s in stats.items()},
      ratio_to_plain_paired={label: timing.paired_ratio(stats, label, 'plain')
                             for label in stats},
      ratio_to_plain_minima={label: s['min'] / stats['plain']['min']
                             for label, s in stats.items()})


# ------------------------------------------- 3. tests and a real run --
def junit_summary(path: str) -> dict:
  if not os.path.exists(path):
    return dict(available=False)
  root = ET.parse(path).getroot()
  suites = [root] if root.tag == 'testsuite' else list(root)
  summary = dict(available=True, tests=0, failures=0, errors=0, skipped=0,
                 time_s=0.0, failed=[])
  for suite in suites:
    for key in ('tests', 'failures', 'errors', 'skipped'):
      summary[key] += int(suite.get(key, 0))
    summary['time_s'] += float(suite.get('time', 0))
    for case in suite.iter('testcase'):
      for bad in list(case.findall('failure')) + list(case.findall('error')):
        summary['failed'].append(dict(
            test=f'{case.get("classname")}::{case.get("name")}',
            message=(bad.get('message') or '')[:400]))
  return summary


def start_training(optimizer: str, work: str, data_dir: str | None,
                   smoke: bool, time_limit: float, env: dict):
  out = os.path.join(work, f'conv7_{optimizer}')
  cmd = [sys.executable, '-m', 'experiments.train', '--optimizer', optimizer,
         '--out', out, '--no-progress']
  cmd += ['--preset', 'gpu_conv7_fashion', '--time-limit', str(time_limit)]
  if smoke:
    cmd += ['--train-subset', '500', '--test-subset', '200', '--k', '10',
            '--epochs', '3']
  if data_dir:
    cmd += ['--data-dir', data_dir]
  log('start:', ' '.join(cmd))
  # The log stays open for the child's lifetime; the Popen owns it.
  logf = open(os.path.join(work, f'conv7_{optimizer}.log'), 'w')  # noqa: SIM115
  return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)


def comparison_at_equal_epochs(laperm: dict, adam: dict) -> dict | None:
  """Test accuracy of both at the last epoch both reached (post-sync)."""
  if not laperm or not adam:
    return None
  lap = {h['step']: h['test_accuracy'] for h in laperm['history']
         if h['after_sync']}
  ada = {h['step']: h['test_accuracy'] for h in adam['history']}
  common = sorted(set(lap) & set(ada))
  if not common:
    return None
  step = common[-1]
  spe = laperm['config']['steps_per_epoch']
  return dict(step=step, epochs=step / spe, laperm=lap[step], adam=ada[step],
              laperm_minus_adam_pt=100 * (lap[step] - ada[step]))


# ---------------------------------------------------------- orchestra --
def run_part(part: str, work: str, smoke: bool, timeout: float,
             env: dict, only: str | None = None) -> dict:
  t0 = time.time()
  cmd = [sys.executable, '-m', 'benchmarks.gpu', '--part', part, '--work',
         work] + (['--smoke'] if smoke else []) + (
             ['--only', only] if only else [])
  log(f'part {part}: timeout {timeout:.0f} s')
  try:
    proc = subprocess.run(cmd, env=env, timeout=max(timeout, 10))
    status = f'exit {proc.returncode}'
  except subprocess.TimeoutExpired:
    status = 'timed out (partial results kept)'
  log(f'part {part}: {status} after {time.time() - t0:.0f} s')
  return dict(status=status, seconds=time.time() - t0)


def orchestrate(args) -> None:
  start = time.time()
  deadline = start + args.budget
  out = args.out
  os.makedirs(out, exist_ok=True)
  work = args.work or os.path.join('/tmp', 'laperm_gpu_work')
  shutil.rmtree(work, ignore_errors=True)
  os.makedirs(work)
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE='false',
             PYTHONUNBUFFERED='1')
  report = dict(machine=machine_info(), smoke=args.smoke, parts={})
  log('machine', report['machine'])
  gpu_json = os.path.join(out, 'gpu.json')
  write_json(gpu_json, report)
  left = lambda: deadline - time.time()

  # 1 and 2: alone on the GPU, each with its share of the budget.
  parts = args.parts.split(',')
  if 'reconnect' in parts:
    report['parts']['reconnect'] = run_part(
        'reconnect', work, args.smoke, min(args.reconnect_s, left() - 200),
        env, args.only)
  if 'train_step' in parts:
    report['parts']['train_step'] = run_part(
        'train_step', work, args.smoke, min(args.train_step_s, left() - 150),
        env, args.only)
  for part in ('reconnect', 'train_step'):
    path = os.path.join(work, f'{part}.json')
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        report[part] = json.load(f)
  write_json(gpu_json, report)

  # 3: tests and the two trainings side by side.
  phase3 = time.time()
  time_limit = max(20.0, left() - 60)
  trainings = {opt: start_training(opt, work, args.data_dir, args.smoke,
                                   time_limit, env)
               for opt in ('laperm', 'adam') if 'conv7' in parts}
  report['tests'] = dict(status='not run')
  if 'tests' in parts:
    pytest_log = os.path.join(out, 'pytest.log')
    junit = os.path.join(out, 'pytest.xml')
    # -p no:benchmark: pytest-benchmark (on the device) warns under xdist,
    # and filterwarnings=error turns that into an internal error.
    cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
           '-p', 'no:benchmark', '-o', 'addopts=', '-m', 'not slow',
           '--doctest-modules', f'--junitxml={junit}', 'laperm_jax',
           *CORE_TESTS]
    if not args.smoke:
      cmd[3:3] = ['-n', str(args.test_workers)]
    log('start:', ' '.join(cmd))
    with open(pytest_log, 'w') as logf:
      tests = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                               env=env)
      try:
        tests.wait(timeout=max(10, left() - 15))
        report['tests'] = dict(exit=tests.returncode,
                               wall_s=time.time() - phase3)
      except subprocess.TimeoutExpired:
        tests.kill()
        report['tests'] = dict(exit=None, wall_s=time.time() - phase3,
                               status='killed at the deadline')
    report['tests'].update(junit_summary(junit))
    report['tests']['command'] = ' '.join(cmd[1:])
    log('tests:', {k: v for k, v in report['tests'].items() if k != 'failed'})
    write_json(gpu_json, report)

  conv7 = {}
  for opt, proc in trainings.items():
    try:
      proc.wait(timeout=max(5, left() - 5))
    except subprocess.TimeoutExpired:
      proc.kill()
      log(f'conv7 {opt}: killed at the deadline')
    res = os.path.join(work, f'conv7_{opt}', 'results.json')
    if os.path.exists(res):
      shutil.copy(res, os.path.join(out, f'conv7_{opt}.json'))
      with open(res, encoding='utf-8') as f:
        conv7[opt] = json.load(f)
    logpath = os.path.join(work, f'conv7_{opt}.log')
    with open(logpath, encoding='utf-8', errors='replace') as f:
      tail = f.read()[-3000:]
    print(f'--- conv7 {opt} log tail ---\n{tail}', flush=True)
  report['conv7_fashion'] = dict(
      preset=None if args.smoke else 'gpu_conv7_fashion',
      time_limit_s=time_limit,
      runs={opt: dict(final_test_accuracy=r['final_test_accuracy'],
                      best_test_accuracy=r['best_test_accuracy'],
                      epochs=r['history'][-1]['epoch'],
                      stopped_early=r.get('stopped_early'),
                      exact_permutation=r['exact_permutation'],
                      train_time_s=r['train_time_s'],
                      wall_time_s=r['wall_time_s'])
            for opt, r in conv7.items()},
      at_equal_epochs=comparison_at_equal_epochs(conv7.get('laperm'),
                                                 conv7.get('adam')))
  report['total_s'] = time.time() - start
  write_json(gpu_json, report)
  log('done in', f'{report["total_s"]:.0f} s:', json.dumps(
      dict(choice=report.get('reconnect', {}).get('choice', {}).get('chosen'),
           tests={k: report['tests'].get(k) for k in
                  ('tests', 'failures', 'errors', 'skipped')},
           conv7=report['conv7_fashion']['at_equal_epochs'])))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='runs/gpu')
  parser.add_argument('--work', default=None)
  parser.add_argument('--smoke', action='store_true')
  parser.add_argument('--budget', type=float, default=470.0,
                      help='seconds for everything')
  parser.add_argument('--reconnect-s', type=float, default=170.0)
  parser.add_argument('--train-step-s', type=float, default=90.0)
  parser.add_argument('--test-workers', type=int, default=4)
  parser.add_argument('--data-dir', default=None,
                      help='Fashion-MNIST IDX files for the Conv7 run')
  parser.add_argument('--part', choices=('reconnect', 'train_step'))
  parser.add_argument('--parts', default='reconnect,train_step,tests,conv7',
                      help='comma-separated parts to run')
  parser.add_argument('--only', default=None,
                      help='reconnect and train_step: comma-separated '
                      'substrings of model names to run (default all)')
  args = parser.parse_args()
  if args.part == 'reconnect':
    part_reconnect(args.work, args.smoke, args.only)
  elif args.part == 'train_step':
    part_train_step(args.work, args.smoke, args.only)
  else:
    orchestrate(args)


if __name__ == '__main__':
  main()
