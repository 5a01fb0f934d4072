"""Other structures of the library's computations, kept as benchmark contenders.

Each computes what the library computes, bit for bit, with the work laid out
another way, so that a benchmark can time the library's choice against it.

``reconnect``: ``laperm_jax.reconnect`` with an index scatter and contiguous
row blocks.

A CPU-only restatement of ``laperm_jax.reconnect`` as it stood at commit
6eba5f5 (the ``'packed'`` variant): transpose each kernel to rows, a packed
single-operand sort for the order, a scatter with an explicit row-index
array, large leaves in contiguous row blocks under ``lax.map`` (whose stacked
output is zero-filled first), and a transpose back. Bit-identical to the
current code; only the layout of the work differs.

``updates_through_cond``: ``laperm``'s update with the inner update passed
through the ``lax.cond`` (the structure at commit 98b36b7): it runs outside the
``lax.cond`` and the reconnected leaves' updates pass through it (the
non-sync branch returns them unchanged). Only what a non-sync step does
matters for the benchmark; mask, dtypes and options are left out.
"""

import jax
import jax.numpy as jnp
import optax

import laperm_jax
from laperm_jax import _ranking
from laperm_jax import _rows


def _reconnect_rows(current, pool):
  order = _ranking._order_packed(current)  # pylint: disable=protected-access
  row_index = jax.lax.broadcasted_iota(jnp.int32, order.shape, 0)
  return jnp.zeros_like(pool).at[row_index, order].set(pool,
                                                       unique_indices=True)


def _blocked(current, pool):
  num_vectors, length = current.shape
  rows = _ranking.block_rows(num_vectors, length,
                             _ranking.CPU_BLOCK_ELEMENTS)
  if rows == num_vectors:
    return _reconnect_rows(current, pool)
  blocks = (current.reshape(-1, rows, length), pool.reshape(-1, rows, length))
  out = jax.lax.map(lambda block: _reconnect_rows(*block), blocks)
  return out.reshape(num_vectors, length)


def reconnect(current_leaves, pool_leaves):
  """Reconnects a list of kernels against a list of ``PoolLeaf``s."""
  out = []
  for x, entry in zip(current_leaves, pool_leaves):
    axes = entry.vector_axes
    rows = _blocked(_rows.to_rows(x, axes), _rows.to_rows(entry.values, axes))
    out.append(_rows.from_rows(rows, axes, x.shape))
  return out


def updates_through_cond(inner: optax.GradientTransformation, sync_period: int
                         ) -> optax.GradientTransformation:
  """``laperm(inner, sync_period)``, default mask, updates through the cond."""
  def init_fn(params):
    return (jnp.zeros([], jnp.int32), inner.init(params),
            laperm_jax.sorted_pool(params))

  def update_fn(updates, state, params):
    count, inner_state, pool = state
    inner_updates, inner_state = inner.update(updates, inner_state, params)
    is_sync = (count + 1) % sync_period == 0
    treedef = jax.tree.structure(params)
    p_leaves = treedef.flatten_up_to(params)
    u_leaves = treedef.flatten_up_to(inner_updates)
    entries = treedef.flatten_up_to(jax.tree.map(
        lambda e: None if isinstance(e, optax.MaskedNode) else e, pool,
        is_leaf=lambda e: isinstance(e, (optax.MaskedNode,
                                         laperm_jax.PoolLeaf))))
    picked = [i for i, e in enumerate(entries) if e is not None]

    def sync(picked_updates):
      by_index = dict(zip(picked, picked_updates))
      candidate = jax.tree.unflatten(treedef, [
          p + by_index[i] if i in by_index else p
          for i, p in enumerate(p_leaves)])
      q_leaves = treedef.flatten_up_to(laperm_jax.reconnect(candidate, pool))
      return [q_leaves[i] - p_leaves[i] for i in picked]

    new_picked = jax.lax.cond(is_sync, sync, lambda u: u,
                              [u_leaves[i] for i in picked])
    by_index = dict(zip(picked, new_picked))
    return jax.tree.unflatten(treedef, [
        by_index.get(i, u) for i, u in enumerate(u_leaves)]), (
            count + 1, inner_state, pool)

  return optax.GradientTransformation(init_fn, update_fn)
