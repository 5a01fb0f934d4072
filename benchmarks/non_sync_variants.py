"""Where a non-sync step's cost goes: shapes of the update around a cond.

Run ``python -m benchmarks.non_sync_variants [--rounds N] [--donate no]
[--sync]``.
Each contender wraps ``optax.adam`` with a step counter, the pool and a
sync (``laperm_jax.reconnect``) that never fires (k = 2^30), and differs only
in how the returned update depends on the ``lax.cond`` that holds the sync.
A LeNet-300-100 train step (batch 128) is timed side by side for each, and
the compiled step's param-sized copies are counted. These are the designs
measured for the non-sync path; ``laperm`` itself has the shape of
``order + zeros + select``. With ``--sync`` every step syncs instead, and
``laperm`` is timed against the updates-through-the-cond structure: what
its structure costs on a sync step.
"""

import argparse

import jax
import jax.numpy as jnp
import optax

from benchmarks import alternatives
from benchmarks import timing
from benchmarks import train_step
import laperm_jax

NEVER = 2**30
THROUGH_COND = 'inner update through the cond'


def _select(flag, a, b):
  return jax.tree.map(lambda x, y: jnp.where(flag, x, y), a, b)


def _zeros(tree):
  return jax.tree.map(jnp.zeros_like, tree)


def variant(shape: str, inner=None, sync_period: int = NEVER
            ) -> optax.GradientTransformation:
  """``inner`` (Adam) with a sync every ``sync_period`` steps, wired as
  ``shape`` (by default one that never fires)."""
  inner = inner or optax.adam(1e-3, eps=1e-7)
  if shape == THROUGH_COND:
    return alternatives.updates_through_cond(inner, sync_period)

  def init_fn(params):
    return (jnp.zeros([], jnp.int32), inner.init(params),
            laperm_jax.sorted_pool(params))

  def update_fn(grads, state, params):
    count, inner_state, pool = state
    is_sync = (count + 1) % sync_period == 0

    def target(p, u):  # reconnected - params, for the whole tree
      candidate = jax.tree.map(jnp.add, p, u)
      return jax.tree.map(jnp.subtract,
                          laperm_jax.reconnect(candidate, pool), p)

    def recomputed_target(p, g, s):
      return target(p, inner.update(g, s, p)[0])

    if shape == 'zeros + select, update outside':
      u, inner_state = inner.update(grads, inner_state, params)
      x = jax.lax.cond(is_sync, target, lambda p, u: _zeros(u), params, u)
      out = _select(is_sync, x, u)
    elif shape == 'gradients forwarded + select, update outside':
      u, inner_state = inner.update(grads, inner_state, params)
      x = jax.lax.cond(is_sync, lambda p, u, g: target(p, u),
                       lambda p, u, g: g, params, u, grads)
      out = _select(is_sync, x, u)
    elif shape == 'zeros + select, update recomputed in the sync':
      x = jax.lax.cond(is_sync, recomputed_target,
                       lambda p, g, s: _zeros(p), params, grads, inner_state)
      u, inner_state = inner.update(grads, inner_state, params)
      out = _select(is_sync, x, u)
    elif shape == 'same, gradients through an optimization barrier':
      x = jax.lax.cond(is_sync, recomputed_target,
                       lambda p, g, s: _zeros(p), params, grads, inner_state)
      x, ordered = jax.lax.optimization_barrier((x, grads))
      u, inner_state = inner.update(ordered, inner_state, params)
      out = _select(is_sync, x, u)
    elif shape == 'same, gradients through a scalar of the cond':
      x, order = jax.lax.cond(
          is_sync,
          lambda c, p, g, s: (recomputed_target(p, g, s), jnp.maximum(c, 0)),
          lambda c, p, g, s: (_zeros(p), c), count, params, grads,
          inner_state)
      ordered = jax.tree.map(
          lambda g: jnp.where(order < 0, jnp.zeros_like(g), g), grads)
      u, inner_state = inner.update(ordered, inner_state, params)
      out = _select(is_sync, x, u)
    elif shape == 'no cond: select reading the pool (floor of a select)':
      u, inner_state = inner.update(grads, inner_state, params)
      out = jax.tree.map(
          lambda e, v: v if isinstance(e, optax.MaskedNode) else jnp.where(
              count > NEVER, e.values, v), pool, u,
          is_leaf=lambda e: isinstance(e, (optax.MaskedNode,
                                           laperm_jax.PoolLeaf)))
    else:
      raise ValueError(shape)
    return out, (count + 1, inner_state, pool)

  return optax.GradientTransformation(init_fn, update_fn)


SHAPES = (
    THROUGH_COND,
    'zeros + select, update outside',
    'gradients forwarded + select, update outside',
    'zeros + select, update recomputed in the sync',
    'same, gradients through an optimization barrier',
    'same, gradients through a scalar of the cond',
    'no cond: select reading the pool (floor of a select)',
)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=500)
  parser.add_argument('--donate', choices=('yes', 'no'), default='yes')
  parser.add_argument('--sync', action='store_true',
                      help='every step syncs: laperm against the updates-'
                      'through-the-cond structure')
  args = parser.parse_args()
  donate = args.donate == 'yes'
  print(f'machine: {timing.machine()}')
  init, apply, batch_size = train_step.MODELS['LeNet-300-100']
  x, y = train_step.batch(batch_size)
  adam = optax.adam(1e-3, eps=1e-7)
  if args.sync:
    txs = {'plain': adam, 'laperm sync': laperm_jax.laperm(adam, 1),
           'sync, ' + THROUGH_COND: variant(THROUGH_COND, sync_period=1)}
  else:
    txs = {'plain': adam,
           'laperm non-sync': laperm_jax.laperm(adam, sync_period=NEVER)}
    txs.update({shape: variant(shape) for shape in SHAPES})
  runners, copies = {}, {}
  for label, tx in txs.items():
    params = init(jax.random.key(0))
    state = tx.init(params)
    runner = train_step.Runner(train_step.make_step(apply, tx), params, state,
                               x, y, donate=donate)
    hlo = runner.step.lower(params, state, x, y).compile().as_text()
    copies[label] = len(train_step.param_sized_copies(hlo, params))
    runners[label] = runner
  stats = timing.interleaved(runners, rounds=args.rounds, warmup=5)
  print(f'\n### LeNet-300-100 {"sync" if args.sync else "non-sync"} step, '
        f'{args.rounds} rounds, params and state '
        f'{"donated" if donate else "not donated"}\n')
  print('| shape | paired median / plain | minima / plain '
        '| param-sized copies |')
  print('|---|---:|---:|---:|')
  for label, s in stats.items():
    print(f'| {label} | {timing.paired_ratio(stats, label, "plain"):.2f} | '
          f'{s["min"] / stats["plain"]["min"]:.2f} | {copies[label]} |')


if __name__ == '__main__':
  main()
