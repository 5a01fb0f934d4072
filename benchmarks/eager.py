"""What LaPerm costs outside ``jit``: un-jitted steps and pool functions.

Run ``python -m benchmarks.eager [--periods N] [--pool-rounds N] [--out DIR]``.
On LeNet-300-100's params (784x300, 300x100 and 100x10 kernels, biases), in
one process:

* **un-jitted steps**: ``tx.update`` and ``optax.apply_updates`` called as
  they are, for ``laperm(optax.adam(1e-3), 20)`` and plain ``optax.adam(1e-3)``,
  taking turns step by step after one warm-up period (which includes a sync);
  LaPerm's median non-sync step and median sync step against Adam's median
  step (paired within each step);
* **the pool outside jit, compile included**: ``sorted_pool`` called as it
  is against ``jax.jit(sorted_pool)``, each on params of shapes that neither
  has seen, taking turns round by round (the first call of each: what
  ``tx.init`` costs a user who does not jit it).

Prints the figures and writes them, with commit and machine, to
``DIR/eager.json`` (default ``benchmarks/results/eager-cpu-<date>``).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import records
import laperm_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = (784, 300, 100, 10)
K = 20


def lenet_params(widen: int = 0) -> dict:
  """LeNet-300-100's params; ``widen`` adds that many units to each hidden
  layer (a shape no earlier call has compiled for)."""
  rng = np.random.default_rng(0)
  sizes = (SIZES[0], SIZES[1] + widen, SIZES[2] + widen, SIZES[3])
  return {f'dense_{i}': {
      'kernel': jnp.asarray(rng.normal(size=(a, b)) / np.sqrt(a), jnp.float32),
      'bias': jnp.zeros(b, jnp.float32)}
          for i, (a, b) in enumerate(itertools.pairwise(sizes))}


def timed(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def stepper(tx: optax.GradientTransformation, params: dict):
  """A zero-argument un-jitted step of ``tx`` (update and apply)."""
  grads = jax.tree.map(lambda p: jnp.cos(3.0 * p), params)
  carry = {'params': params, 'state': tx.init(params)}

  def step():
    updates, carry['state'] = tx.update(grads, carry['state'],
                                        carry['params'])
    carry['params'] = optax.apply_updates(carry['params'], updates)
    return carry['params']
  return step


def measure_steps(periods: int) -> dict:
  params = lenet_params()
  laperm = stepper(laperm_jax.laperm(optax.adam(1e-3), K), params)
  adam = stepper(optax.adam(1e-3), params)
  for _ in range(K):  # warm-up: a non-sync step and a sync compile
    timed(laperm)
    timed(adam)
  non_sync, sync = [], []
  for _ in range(periods):
    for index in range(1, K + 1):
      pair = (timed(laperm), timed(adam))
      (sync if index == K else non_sync).append(pair)

  def summary(pairs):
    return {'laperm_median_s': statistics.median(a for a, _ in pairs),
            'adam_median_s': statistics.median(b for _, b in pairs),
            'paired_ratio': statistics.median(a / b for a, b in pairs),
            'steps': len(pairs)}
  return {'non_sync': summary(non_sync), 'sync': summary(sync)}


def measure_pool(rounds: int) -> dict:
  pairs = []
  for r in range(rounds):
    eager = timed(lambda r=r: laperm_jax.sorted_pool(lenet_params(2 * r + 1)))
    jitted = timed(lambda r=r: jax.jit(laperm_jax.sorted_pool)(
        lenet_params(2 * r + 2)))
    pairs.append((eager, jitted))
  return {'eager_median_s': statistics.median(a for a, _ in pairs),
          'jit_median_s': statistics.median(b for _, b in pairs),
          'paired_ratio': statistics.median(a / b for a, b in pairs),
          'rounds': rounds, 'samples': pairs}


def render(record: dict) -> str:
  steps, pool = record['steps'], record['pool']
  rows = ['| | LaPerm (ms) | Adam (ms) | LaPerm / Adam, paired median |',
          '|---|---|---|---|']
  for name in ('non_sync', 'sync'):
    s = steps[name]
    rows.append(f'| un-jitted {name.replace("_", "-")} step ({s["steps"]} '
                f'steps) | {1e3 * s["laperm_median_s"]:.2f} | '
                f'{1e3 * s["adam_median_s"]:.2f} | {s["paired_ratio"]:.2f}x |')
  rows += ['', '| | un-jitted (s) | jit (s) | un-jitted / jit, paired median |',
           '|---|---|---|---|',
           f'| sorted_pool, first call ({pool["rounds"]} rounds) | '
           f'{pool["eager_median_s"]:.3f} | {pool["jit_median_s"]:.3f} | '
           f'{pool["paired_ratio"]:.2f}x |']
  return '\n'.join(rows)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.eager')
  parser.add_argument('--periods', type=int, default=10)
  parser.add_argument('--pool-rounds', type=int, default=5)
  parser.add_argument('--out', default=os.path.join(
      ROOT, 'benchmarks', 'results',
      f'eager-cpu-{datetime.date.today().isoformat()}'))
  args = parser.parse_args(argv)
  record = {'steps': measure_steps(args.periods),
            'pool': measure_pool(args.pool_rounds)}
  print(render(record))
  path = records.write(args.out, 'eager.json', 'benchmarks.eager', argv, record)
  print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
