"""Array-level reconnection of rows: the one place where LaPerm sorts.

Everything here works on 2-D arrays of shape ``(num_vectors, vector_length)``:
one weight vector per row. Tree plumbing and axis handling live elsewhere
(``vectors.py``, ``reconnection.py``), so that the sort itself can be studied,
benchmarked and replaced in isolation.

Ordering semantics (shared by every implementation and by the NumPy reference
in the tests):

* ascending order, ``-0.0`` and ``+0.0`` compare equal;
* NaNs (of either sign) rank after ``+inf``, all NaNs equal;
* ties are broken by position within the row (a stable sort).
"""

import jax
import jax.numpy as jnp


def sort_rows(rows: jax.Array) -> jax.Array:
  """Sorts each row ascending: how the pool of initial values is stored.

  Args:
    rows: array of shape ``(num_vectors, vector_length)``.

  Returns:
    The rows sorted ascending along the last axis.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax.ranking import sort_rows
    >>> sort_rows(jnp.array([[3., 1., 2.]]))
    Array([[1., 2., 3.]], dtype=float32)
  """
  return jnp.sort(rows, axis=-1)


def stable_argsort_rows(rows: jax.Array) -> jax.Array:
  """Stable int32 argsort of each row (ties by position, NaNs last)."""
  return jnp.argsort(rows, axis=-1, stable=True).astype(jnp.int32)


def reconnect_rows(current: jax.Array, sorted_pool: jax.Array) -> jax.Array:
  """Gives each row its pool values in the rank order of its current values.

  The entry of rank ``r`` in ``current[i]`` (0 = smallest, ties broken by
  position) receives ``sorted_pool[i, r]``. This is the scatter formulation:
  ``new[i, argsort(current[i])] = sorted_pool[i]``, one stable sort per row
  and no second argsort.

  Args:
    current: array of shape ``(num_vectors, vector_length)``: the weights
      whose ranks decide the arrangement.
    sorted_pool: array of the same shape, each row sorted ascending.

  Returns:
    An array of ``sorted_pool``'s dtype and ``current``'s shape whose rows are
    permutations of the pool rows, in the rank order of ``current``.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax.ranking import reconnect_rows
    >>> reconnect_rows(jnp.array([[0.3, -2.0, 0.1]]),
    ...                jnp.array([[10., 20., 30.]]))
    Array([[30., 10., 20.]], dtype=float32)
  """
  if current.shape != sorted_pool.shape:
    raise ValueError(
        f'current {current.shape} and sorted_pool {sorted_pool.shape} must '
        'have the same shape.')
  if current.ndim != 2:
    raise ValueError(f'expected 2-D rows, got shape {current.shape}.')
  order = stable_argsort_rows(current)
  row_index = jnp.arange(current.shape[0], dtype=jnp.int32)[:, None]
  return jnp.zeros_like(sorted_pool).at[row_index, order].set(
      sorted_pool, unique_indices=True)
