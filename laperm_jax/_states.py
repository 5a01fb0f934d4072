"""The state of :func:`laperm_jax.laperm` and its record of sync changes."""

from __future__ import annotations

from typing import NamedTuple

import jax
import optax

from laperm_jax._typing import PyTree


class SyncChanges(NamedTuple):
  """What the last sync changed (``laperm(..., track_changes=True)``).

  Attributes:
    previous: the exact weights after the last sync (at init: the initial
      weights), ``optax.MaskedNode()`` for leaves without pool: one more copy
      of the reconnected params.
    changed_fraction: float32 scalar, the fraction of reconnected weights
      whose value the last sync changed (0 before the first sync). 0 at a
      sync means that it moved nothing: ``k`` (times the learning rate) is
      too small for any weight to overtake another.
    created: int32 scalar, reconnected weights that were 0 and are not.
    removed: int32 scalar, reconnected weights that were not 0 and are.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from laperm_jax import laperm
    >>> params = {'w': jnp.array([[0., 1.], [2., 0.]])}
    >>> tx = laperm(optax.sgd(1.0), sync_period=1, track_changes=True)
    >>> state = tx.init(params)
    >>> grads = {'w': jnp.array([[-5., 0.], [0., 0.]])}  # w[0, 0] overtakes
    >>> updates, state = tx.update(grads, state, params)
    >>> changes = state.changes
    >>> float(changes.changed_fraction), int(changes.created), int(changes.removed)
    (0.5, 1, 1)
  """
  previous: PyTree
  changed_fraction: jax.Array
  created: jax.Array
  removed: jax.Array


class LaPermState(NamedTuple):
  """State of :func:`laperm`.

  Attributes:
    count: int32 scalar, the number of update calls so far.
    steps_since_sync: int32 scalar, update calls since the last sync (0 right
      after a sync); always below the current sync period.
    inner_state: the inner optimizer's state, never reset or permuted at a sync
      unless ``reset_inner_state=True``.
    pool: per reconnected leaf a :class:`PoolLeaf` (its initial values sorted
      within each weight vector, and the vector axes);
      ``optax.MaskedNode()`` for leaves that are not reconnected.
    changes: a :class:`SyncChanges` with ``track_changes=True``, else
      ``optax.EmptyState()``.
    residual: with ``carry_residual > 0``, per reconnected leaf the residual
      the next sync adds to the candidate before ranking (``MaskedNode`` for
      leaves without pool); else ``optax.EmptyState()``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from laperm_jax import laperm
    >>> params = {'w': jnp.array([[3., 0.], [1., 2.]]), 'b': jnp.zeros(2)}
    >>> state = laperm(optax.sgd(0.1), sync_period=5).init(params)
    >>> int(state.count), int(state.steps_since_sync)
    (0, 0)
    >>> state.pool['w'].values  # each column sorted; 'b' has no pool
    Array([[1., 0.],
           [3., 2.]], dtype=float32)
  """
  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count
  steps_since_sync: jax.Array
  inner_state: PyTree
  pool: PyTree
  changes: SyncChanges | optax.EmptyState = optax.EmptyState()
  residual: PyTree | optax.EmptyState = optax.EmptyState()
