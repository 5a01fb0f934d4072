"""LaPerm as an Optax gradient transformation (semantics: README.md)."""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from laperm_jax import _pool
from laperm_jax import _residual

SyncPeriod = int | jax.Array | Callable[[jax.Array], jax.Array | int]


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
  previous: optax.Params
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
  count: jax.Array
  steps_since_sync: jax.Array
  inner_state: optax.OptState
  pool: optax.Params
  changes: SyncChanges | optax.EmptyState = optax.EmptyState()
  residual: optax.Params | optax.EmptyState = optax.EmptyState()


def _validate_sync_period(sync_period) -> None:
  """Checks a concrete sync period; tracers and schedules pass unchecked."""
  if callable(sync_period) or isinstance(sync_period, jax.core.Tracer):
    return
  if isinstance(sync_period, (bool, np.bool_)):
    raise TypeError(f'sync_period must be a positive int, got {sync_period!r}.')
  if isinstance(sync_period, (np.ndarray, jax.Array)):
    if sync_period.shape != () or not jnp.issubdtype(sync_period.dtype,
                                                     jnp.integer):
      raise TypeError('sync_period must be a positive int or an integer '
                      f'scalar array, got {sync_period!r}.')
    sync_period = int(sync_period)
  elif not isinstance(sync_period, (int, np.integer)):
    raise TypeError(
        'sync_period must be a positive int or a schedule (a callable of the '
        f'int32 step count), got {sync_period!r}.')
  if sync_period <= 0:
    raise ValueError(f'sync_period must be positive, got {sync_period}.')


def _period_at(sync_period: SyncPeriod, count: jax.Array) -> jax.Array:
  if callable(sync_period):
    period = sync_period(count)
    if not isinstance(period, jax.core.Tracer):
      try:
        _validate_sync_period(period)
      except (TypeError, ValueError) as e:
        where = ('' if isinstance(count, jax.core.Tracer) else
                 f' at count {int(count)}')
        raise type(e)(f'the sync_period schedule returned {period!r}{where}: '
                      f'{e}') from None
    return jnp.asarray(period, dtype=jnp.int32)
  return jnp.asarray(sync_period, dtype=jnp.int32)


_SCHEDULE_STATES = (optax.ScaleByScheduleState, optax.InjectHyperparamsState,
                    optax.InjectStatefulHyperparamsState)


def _keep_schedule_counters(fresh: optax.OptState, old: optax.OptState
                            ) -> optax.OptState:
  """``fresh`` with the schedule counters (and injected values) of ``old``."""
  def keep(f, o):
    if isinstance(f, optax.ScaleByScheduleState):
      return o
    if isinstance(f, _SCHEDULE_STATES):  # inject_hyperparams
      return o._replace(inner_state=_keep_schedule_counters(f.inner_state,
                                                            o.inner_state))
    return f
  return jax.tree.map(keep, fresh, old,
                      is_leaf=lambda x: isinstance(x, _SCHEDULE_STATES))


def _count_changes(pool, previous, reconnected, changes: SyncChanges
                   ) -> SyncChanges:
  changed = created = removed = jnp.zeros([], jnp.int32)
  total = 0
  for entry, before, after in zip(
      jax.tree.leaves(pool, is_leaf=_pool.is_pool_entry),
      jax.tree.leaves(previous, is_leaf=_pool.is_masked),
      jax.tree.leaves(reconnected, is_leaf=_pool.is_masked)):
    if _pool.is_masked(entry):
      continue
    was_zero, is_zero = before == 0, after == 0
    changed += jnp.sum(~_pool.same_values(before, after), dtype=jnp.int32)
    created += jnp.sum(was_zero & ~is_zero, dtype=jnp.int32)
    removed += jnp.sum(~was_zero & is_zero, dtype=jnp.int32)
    total += before.size
  fraction = changed.astype(jnp.float32) / max(total, 1)
  return SyncChanges(reconnected, fraction, created, removed)


def laperm(
    inner: optax.GradientTransformation,
    sync_period: SyncPeriod,
    *,
    mask=None,
    vector_axes=None,
    reset_inner_state: bool = False,
    track_changes: bool = False,
    carry_residual: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  """LaPerm: an inner optimizer plus a reconnection of weights every k steps.

  Each update call runs the inner optimizer; on sync calls (every ``k``-th)
  the candidate weights ``params + inner_updates`` are reconnected and the
  update returned for a reconnected leaf is ``reconnected - params``, in the
  wider of the param and update dtypes. LaPerm must be the outermost
  transformation: learning rate, clipping and weight decay go inside
  ``inner``. The README states the semantics in full.

  Args:
    inner: the inner optimizer, any optax transformation (e.g.
      ``optax.adam(1e-3)``); ``params`` and extra arguments are forwarded.
      Its ``update`` is traced more than once (the sync branch runs it
      itself), so it must be a pure function of its arguments, as optax
      requires.
    sync_period: ``k``, a positive int, or a schedule: a callable of the int32
      count of previous update calls returning ``k``.
    mask: which leaves are reconnected, with ``optax.masked`` semantics (True =
      reconnected; a pytree prefix of params or a callable of params).
      Default :func:`default_mask`.
    vector_axes: which axes form one weight vector: an int or a tuple of ints
      for every reconnected leaf, or a pytree prefix of params with such
      values (None = the default for that leaf), or a callable of params
      returning one. Default :func:`default_vector_axes`. A list is never
      read as axes.
    reset_inner_state: re-initialise the inner state (at the reconnected
      params) at each sync, except learning-rate schedule counters
      (``optax.scale_by_schedule``, ``optax.inject_hyperparams``), which keep
      counting. Off by default: the paper keeps the state.
    track_changes: keep :class:`SyncChanges` in the state (one more copy of
      the reconnected params), computed on sync steps only.
    carry_residual: ``beta`` in [0, 1]. None (default) or 0 is the paper's
      sync.
      Otherwise a sync ranks ``params + inner_updates + residual``, and keeps
      ``residual = beta * (ranked - reconnected)``: what the sync rounded off
      is remembered by the next ranking (error feedback), so weights pushed
      the same way over several periods overtake even when one period's push
      is smaller than the gap between pool values (shared-value ``{0, w}``
      networks). The synced weights are still exact permutations of the
      pool. One more copy of the reconnected params in the state.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`LaPermState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from laperm_jax import laperm
    >>> params = {'w': jnp.array([[1., 2.], [3., 4.]]), 'b': jnp.zeros(2)}
    >>> tx = laperm(optax.sgd(1.0), sync_period=2)
    >>> state = tx.init(params)
    >>> grads = {'w': jnp.array([[0., -5.], [0., 0.]]), 'b': jnp.ones(2)}
    >>> for _ in range(2):
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> params['w']  # column 1 swapped its values; they never change
    Array([[1., 4.],
           [3., 2.]], dtype=float32)

  References:
    Qiu & Suda, `Train-by-Reconnect: Decoupling Locations of Weights from
    Their Values <https://arxiv.org/abs/2003.02570>`_, NeurIPS 2020.
  """
  _validate_sync_period(sync_period)
  beta = _residual.validate(carry_residual)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params: optax.Params) -> LaPermState:
    if callable(sync_period):
      _period_at(sync_period, jnp.zeros([], jnp.int32))
    pool = _pool.sorted_pool(params, mask, vector_axes)
    changes = optax.EmptyState()
    if track_changes:
      previous = jax.tree.map(
          lambda entry, p: entry if _pool.is_masked(entry) else jnp.asarray(p),
          pool, params, is_leaf=_pool.is_pool_entry)
      zero = jnp.zeros([], jnp.int32)
      changes = SyncChanges(previous, jnp.zeros([], jnp.float32), zero, zero)
    return LaPermState(
        count=jnp.zeros([], jnp.int32),
        steps_since_sync=jnp.zeros([], jnp.int32),
        inner_state=inner.init(params),
        pool=pool,
        changes=changes,
        residual=(_residual.init(pool, params) if beta is not None else
                  optax.EmptyState()),
    )

  def update_fn(updates: optax.Updates, state: LaPermState,
                params: optax.Params | None = None, **extra_args
                ) -> tuple[optax.Updates, LaPermState]:
    if params is None:
      raise ValueError(
          'laperm needs the current params: call '
          '`tx.update(grads, state, params)`. The sync replaces weights, so '
          'it must see them.')
    _pool.check_params(params, state.pool)
    period = _period_at(sync_period, state.count)
    steps_since_sync = state.steps_since_sync + 1
    is_sync = steps_since_sync >= period
    treedef = jax.tree.structure(params)
    entries = [entry for _, _, entry in _pool.zip_with_pool(params,
                                                            state.pool)]
    picked = [i for i, entry in enumerate(entries) if entry is not None]
    p_leaves = treedef.flatten_up_to(params)

    def inner_update(grads, inner_state):
      return inner.update(grads, inner_state, params, **extra_args)

    # The returned update of a reconnected leaf is in the wider of the param
    # and update dtypes, so that apply_updates' `p + u` lands within an ulp
    # of the pool value (an update rounded to bfloat16 could land thousands
    # of ulps away).
    u_avals = treedef.flatten_up_to(
        jax.eval_shape(inner_update, updates, state.inner_state)[0])
    wide = {i: jnp.promote_types(jnp.result_type(p_leaves[i]),
                                 u_avals[i].dtype) for i in picked}

    # A non-sync step must cost what the inner optimizer costs. Whatever
    # leaves a `lax.cond` is a materialised buffer, and XLA does not fuse
    # across a conditional: inner updates passed through it are written and
    # read once more per step and cannot fuse into apply_updates' add (1.07-
    # 1.11x a plain Adam step on LeNet-300-100, CPU, BENCHMARKS.md). So nothing
    # the non-sync path needs goes through the cond: the sync branch runs the
    # inner update itself (the same function of the same inputs) and returns
    # `reconnected - params`; the non-sync branch returns zeros (a memset),
    # and a select outside, fused with the inner update and apply_updates,
    # picks. The cond also returns a scalar `order` that the gradients pass
    # through on their way to the inner update below (without it XLA copies
    # every moment: BENCHMARKS.md).
    def sync(order, changes, residual):
      inner_updates, _ = inner_update(updates, state.inner_state)
      u_leaves = treedef.flatten_up_to(inner_updates)
      by_index = {i: u_leaves[i] for i in picked}
      c_leaves = [jnp.asarray(p + by_index[i]).astype(jnp.result_type(p))
                  if i in by_index else p for i, p in enumerate(p_leaves)]
      if beta is not None:
        r_leaves = _residual.aligned(residual, len(p_leaves))
        c_leaves = _residual.ranking_keys(c_leaves, r_leaves)
      candidate = jax.tree.unflatten(treedef, c_leaves)
      q_leaves = treedef.flatten_up_to(_pool.reconnect(candidate, state.pool))
      if beta is not None:
        residual = _residual.rebuilt(treedef, _residual.carried(
            c_leaves, q_leaves, r_leaves, beta))
      deltas = [jnp.asarray(q_leaves[i]).astype(wide[i]) -
                jnp.asarray(p_leaves[i]).astype(wide[i]) for i in picked]
      if track_changes:
        reconnected = jax.tree.unflatten(treedef, [
            optax.MaskedNode() if entry is None else q
            for entry, q in zip(entries, q_leaves)])
        changes = _count_changes(state.pool, changes.previous, reconnected,
                                 changes)
      return deltas, changes, residual, jnp.maximum(order, 0)

    def no_sync(order, changes, residual):
      deltas = [jnp.zeros_like(p_leaves[i], wide[i]) for i in picked]
      return deltas, changes, residual, order

    empty = ()
    deltas, changes, residual, order = jax.lax.cond(
        is_sync, sync, no_sync, state.count,
        state.changes if track_changes else empty,
        state.residual if beta is not None else empty)
    if beta is None:
      residual = state.residual
    if not track_changes:
      changes = state.changes

    # The gradients, bit for bit, but known only once the cond has run: the
    # inner state's in-place update (Adam's moments read the gradients) then
    # comes after the sync branch's read of the old state. State leaves that
    # do not read the gradients are scalars in optax's optimizers.
    after_cond = order < 0  # always False
    def ordered(g):
      if not isinstance(g, jax.Array):
        return g
      return jnp.where(after_cond, jnp.zeros_like(g), g)
    inner_updates, inner_state = inner_update(jax.tree.map(ordered, updates),
                                              state.inner_state)
    u_leaves = treedef.flatten_up_to(inner_updates)
    by_index = dict(zip(picked, deltas))
    new_updates = jax.tree.unflatten(treedef, [
        jnp.where(is_sync, by_index[i], jnp.asarray(u).astype(wide[i]))
        if i in by_index else u for i, u in enumerate(u_leaves)])
    if reset_inner_state:
      def fresh(inner_state, new_updates):
        new_params = optax.apply_updates(params, new_updates)
        return _keep_schedule_counters(inner.init(new_params), inner_state)
      inner_state = jax.lax.cond(is_sync, fresh, lambda s, _: s,
                                 inner_state, new_updates)
    new_state = LaPermState(
        count=optax.safe_increment(state.count),
        steps_since_sync=jnp.where(is_sync, 0, steps_since_sync).astype(
            jnp.int32),
        inner_state=inner_state,
        pool=state.pool,
        changes=changes,
        residual=residual,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
