"""The public reconnect as it was before issue 13, kept as a contender.

A frozen, CPU-only restatement of ``laperm_jax.reconnect`` at commit
6eba5f5 (the ``'packed'`` variant): transpose each kernel to rows, a packed
single-operand sort for the order, a scatter with an explicit row-index
array, large leaves in contiguous row blocks under ``lax.map`` (whose stacked
output is zero-filled first), and a transpose back. Bit-identical to the
current code; only the layout of the work differs.
"""

import jax
import jax.numpy as jnp

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
