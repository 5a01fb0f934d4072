"""The array-level rules of dynamic sparse training: drop, grow, how many.

One layer is one array; its connections are its entries. These functions
hold no tree plumbing (``experiments.sparse_baselines`` maps them over a
model) and no randomness of their own: SET's random regrowth is
:func:`grow_largest` of uniform random scores.

Ties are broken by the flat (C-order) index of an entry, lowest first, so
that every rule is deterministic (a stable sort): this matters in sparse
layers, where many candidates share the score 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _lowest_ranked(score: jax.Array, count: jax.Array) -> jax.Array:
  """True for the ``count`` entries of smallest ``score``; ties by index."""
  flat = score.ravel()
  order = jnp.argsort(flat, stable=True)
  rank = jnp.zeros(flat.shape, jnp.int32).at[order].set(
      jnp.arange(flat.size, dtype=jnp.int32))
  return (rank < count).reshape(score.shape)


def drop_count(fraction: jax.Array | float, active: jax.Array) -> jax.Array:
  """How many of a layer's active connections one update drops.

  ``floor(fraction * number active)`` in float32, as an int32 scalar (the
  RigL reference implementation casts down the same way).

  Example:
    >>> import jax.numpy as jnp
    >>> int(drop_count(0.3, jnp.array([True, True, False, True, True])))
    1
  """
  n_active = jnp.sum(active, dtype=jnp.int32).astype(jnp.float32)
  return jnp.floor(jnp.float32(fraction) * n_active).astype(jnp.int32)


def drop_smallest(weights: jax.Array, active: jax.Array,
                  count: jax.Array | int) -> jax.Array:
  """The ``count`` active connections of smallest magnitude (a bool mask).

  Args:
    weights: one layer's weights.
    active: bool, same shape: the connections that exist.
    count: how many to drop, at most the number active.

  Returns:
    A bool array, True where a connection is dropped; ties in ``|weights|``
    go to the lower flat index.

  Example:
    >>> import jax.numpy as jnp
    >>> w = jnp.array([0.5, -0.1, 0.0, 0.3])
    >>> drop_smallest(w, jnp.array([True, True, False, True]), 2)
    Array([False,  True, False,  True], dtype=bool)
  """
  score = jnp.where(active, jnp.abs(weights), jnp.inf)
  return _lowest_ranked(score, count) & active


def grow_largest(scores: jax.Array, candidates: jax.Array,
                 count: jax.Array | int) -> jax.Array:
  """The ``count`` candidate positions of largest score (a bool mask).

  RigL grows where ``|dense gradient|`` is largest; SET grows at random,
  which is this function of i.i.d. uniform scores.

  Args:
    scores: one layer's scores (finite).
    candidates: bool, same shape: where a connection may grow.
    count: how many to grow, at most the number of candidates.

  Returns:
    A bool array, True where a connection grows; ties in ``scores`` go to
    the lower flat index.

  Example:
    >>> import jax.numpy as jnp
    >>> g = jnp.array([0.2, 0.9, 0.9, 0.4])
    >>> grow_largest(g, jnp.array([True, False, True, True]), 2)
    Array([False, False,  True,  True], dtype=bool)
  """
  score = jnp.where(candidates, -scores, jnp.inf)
  return _lowest_ranked(score, count) & candidates
