"""LaPerm as an Optax gradient transformation (semantics: README.md).

The paper's algorithm (Qiu & Suda 2020, Algorithm 1), step by step:

1. Sort each weight vector's initial values: the pool
   (:func:`laperm_jax.sorted_pool`, in :func:`_init_state`).
2. Every step, the inner optimizer proposes ``u`` from the gradients
   (``inner.update``, in ``update_fn``).
3. Every ``k``-th step (``is_sync`` in ``update_fn``, ``k`` from
   :func:`laperm_jax._sync_period.period_at`), rank the candidate
   ``theta + u`` within each vector (:func:`_ranking_key`, plus the carried
   residual when ``carry_residual`` is on) ...
4. ... and give each entry the pool value of its rank
   (:func:`laperm_jax._pool.reconnect_leaf`); the update returned is
   ``reconnected - theta`` in the wider dtype (:func:`_update_to`).
   :func:`_sync` is steps 3 and 4.
5. Optionally record what the sync changed (:func:`_sync_changes`) and reset
   the inner state (:func:`_fresh_inner_state`).

A non-sync step costs what the inner optimizer costs: nothing it needs passes
through the ``lax.cond`` that holds the sync (a value leaving a conditional is
a materialised buffer and XLA does not fuse across it). The sync branch runs
the inner update itself (the same function of the same inputs) and returns
``reconnected - theta``; the non-sync branch returns zeros; a select outside
the cond, fused with the inner update and ``apply_updates``, picks
(:func:`_select_update`). The inner update outside the cond is ordered after
the cond by :func:`_after_cond`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from laperm_jax import _pool
from laperm_jax import _ranking
from laperm_jax import _residual
from laperm_jax import _sync_period
from laperm_jax._states import LaPermState
from laperm_jax._states import SyncChanges
from laperm_jax._typing import Mask
from laperm_jax._typing import PyTree
from laperm_jax._typing import SyncPeriod
from laperm_jax._typing import VectorAxes


def _on_pool(fn: Callable[..., Any], entries: PyTree, *trees: PyTree
             ) -> PyTree:
  """``fn(entry, *leaves)`` per reconnected leaf; ``MaskedNode`` elsewhere.

  ``entries`` is :func:`laperm_jax._pool.pool_like`'s tree; ``trees`` have
  params' structure (a ``MaskedNode`` subtree is fine where ``entries`` has
  one).
  """
  return jax.tree.map(
      lambda entry, *leaves: entry if _pool.is_masked(entry) else fn(
          entry, *leaves), entries, *trees, is_leaf=_pool.is_pool_entry)


def _params_shaped(tree: PyTree, params_def: jax.tree_util.PyTreeDef
                   ) -> PyTree:
  """A state tree (``MaskedNode`` at leaves without pool) in params' shape."""
  leaves = jax.tree.leaves(tree, is_leaf=_pool.is_masked)
  if len(leaves) != params_def.num_leaves:
    raise ValueError('the state does not match the params structure; '
                     'restore the state against jax.eval_shape(tx.init, '
                     'params).')
  return jax.tree.unflatten(params_def, leaves)


def _wide_dtype(param: jax.typing.ArrayLike, update: Any) -> jnp.dtype:
  """The wider of the param and update dtypes: the dtype of a sync update.

  ``apply_updates``' ``p + u`` then lands within an ulp of the pool value (an
  update rounded to bfloat16 could land thousands of ulps away).
  """
  return jnp.promote_types(jnp.result_type(param), update.dtype)


def _ranking_key(entry: _pool.PoolLeaf, param: jax.Array, update: jax.Array,
                 residual: jax.Array | None = None) -> jax.Array:
  """The candidate ``param + update`` in the param dtype, plus the residual."""
  del entry
  candidate = jnp.asarray(param + update).astype(jnp.result_type(param))
  if residual is None:
    return candidate
  return _residual.ranking_key(candidate, residual)


def _update_to(entry: _pool.PoolLeaf, param: jax.Array,
               reconnected: jax.Array, update: jax.Array) -> jax.Array:
  """``reconnected - param`` in the wider of the param and update dtypes."""
  del entry
  wide = _wide_dtype(param, update)
  return jnp.asarray(reconnected).astype(wide) - jnp.asarray(param).astype(
      wide)


def _sync(entries: PyTree, params: PyTree, inner_updates: PyTree,
          residual: PyTree | None, beta: _residual.Carry | None,
          variant: str | None) -> tuple[PyTree, PyTree, PyTree | None]:
  """Steps 3 and 4: rank the candidates, take the pool values in that order.

  Returns:
    ``(updates, reconnected, residual)``: per reconnected leaf the update
    onto the reconnected weights, the reconnected weights, and the carried
    residual (None without carry); ``MaskedNode`` at leaves without pool.
  """
  if residual is None:
    keys = _on_pool(_ranking_key, entries, params, inner_updates)
  else:
    keys = _on_pool(_ranking_key, entries, params, inner_updates, residual)
  reconnected = _on_pool(
      lambda entry, key: _pool.reconnect_leaf(entry, key, variant), entries,
      keys)
  if residual is not None and beta is not None:
    carry: _residual.Carry = beta
    residual = _on_pool(
        lambda _, key, q, r: _residual.carried(key, q, r, carry), entries,
        keys, reconnected, residual)
  updates = _on_pool(_update_to, entries, params, reconnected, inner_updates)
  return updates, reconnected, residual


def _sync_changes(entries: PyTree, previous: PyTree, reconnected: PyTree
                  ) -> SyncChanges:
  """What a sync changed between ``previous`` and ``reconnected`` weights."""
  def count(fn):
    per_leaf = _on_pool(lambda _, a, b: jnp.sum(fn(a, b), dtype=jnp.int32),
                        entries, previous, reconnected)
    return sum(jax.tree.leaves(per_leaf), jnp.zeros([], jnp.int32))
  changed = count(lambda a, b: ~_pool.same_values(a, b))
  created = count(lambda a, b: (a == 0) & ~(b == 0))
  removed = count(lambda a, b: ~(a == 0) & (b == 0))
  total = sum(entry.values.size for entry in jax.tree.leaves(
      entries, is_leaf=_pool.is_pool_entry) if not _pool.is_masked(entry))
  fraction = changed.astype(jnp.float32) / max(total, 1)
  return SyncChanges(reconnected, fraction, created, removed)


_SCHEDULE_STATES = (optax.ScaleByScheduleState, optax.InjectHyperparamsState,
                    optax.InjectStatefulHyperparamsState)


def _keep_schedule_counters(fresh: PyTree, old: PyTree) -> PyTree:
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


def _fresh_inner_state(init: Callable[[PyTree], PyTree], params: PyTree,
                       inner_state: PyTree, updates: PyTree) -> PyTree:
  """The inner state re-initialised at the reconnected params (step 5).

  Learning-rate schedule counters keep counting.
  """
  new_params = optax.apply_updates(params, updates)
  return _keep_schedule_counters(init(new_params), inner_state)


def _after_cond(token: jax.Array, grads: PyTree) -> PyTree:
  """``grads``, bit for bit, but known only once the sync cond has run.

  The inner update outside the cond updates the inner state in place (Adam
  writes its moments over the old ones, reading the gradients). The sync
  branch reads the old state. When nothing orders the two, XLA must keep the
  old state alive while the new one is written and copies every moment on
  every step. Feeding the gradients through a select on a token that comes
  out of the cond puts the in-place update after the sync branch's read.
  State leaves that do not read the gradients are scalars in optax's
  optimizers, so their copies cost nothing.

  The invariant: the token must be computed inside the cond, never forwarded
  from an operand by every branch. The sync branch returns
  ``jnp.maximum(count, 0)`` (the non-sync branch may forward ``count``).
  Returning ``count`` itself there, which looks like a harmless
  simplification, lets XLA see that every branch forwards the operand and
  replace the cond's output by the operand: the token then no longer depends
  on the cond and every moment copy comes back. Passing the gradients and the
  token through ``jax.lax.optimization_barrier`` instead of this select does
  not order the update either: XLA still copies every moment (the barrier
  only keeps its operands from being moved across it).
  ``tests/test_non_sync_path.py::test_a_donated_step_copies_nothing_param_sized``
  fails when either is planted.

  Args:
    token: the int32 count as it leaves the sync cond (never negative).
    grads: the gradients the inner update reads.

  Returns:
    ``grads``, unchanged in value (``-0.0`` and NaN included).
  """
  after = token < 0  # always False
  def ordered(g):
    if not isinstance(g, jax.Array):
      return g
    return jnp.where(after, jnp.zeros_like(g), g)
  return jax.tree.map(ordered, grads)


def _select_update(is_sync: jax.Array, entries: PyTree, sync_updates: PyTree,
                   inner_updates: PyTree) -> PyTree:
  """Per reconnected leaf, the sync update on a sync step, else the inner
  update in the same (wider) dtype; the inner update elsewhere."""
  def select(entry, sync_update, update):
    if _pool.is_masked(entry):
      return update
    return jnp.where(is_sync, sync_update, jnp.asarray(update).astype(
        sync_update.dtype))
  return jax.tree.map(select, entries, sync_updates, inner_updates,
                      is_leaf=_pool.is_pool_entry)


class _StepInputs(NamedTuple):
  """What the sync cond's branches read besides the state they return.

  Passed to the branches as operands, never closed over: the branches are
  then the same two functions at every call, and ``lax.cond`` traces and
  compiles them once. (Branches that close over a step's arrays are new
  functions at every call: an un-jitted ``update`` would compile its cond
  again at every step, and keep every compiled copy.)
  """
  updates: PyTree
  inner_state: PyTree
  params: PyTree
  entries: PyTree
  extra_args: dict[str, Any]


Branch = Callable[..., tuple[PyTree, PyTree, PyTree, jax.Array]]


def _sync_branches(inner: optax.GradientTransformationExtraArgs,
                   beta: _residual.Carry | None, track_changes: bool,
                   variant: str | None) -> tuple[Branch, Branch]:
  """The sync cond's branches, functions of ``(step, token, changes,
  residual)`` returning ``(updates, changes, residual, token)``."""
  def inner_updates_of(step: _StepInputs) -> PyTree:
    return inner.update(step.updates, step.inner_state, params=step.params,
                        **step.extra_args)[0]

  def sync(step, token, changes, residual):
    params_def = jax.tree.structure(step.params)
    deltas, reconnected, new_residual = _sync(
        step.entries, step.params, inner_updates_of(step),
        _params_shaped(residual, params_def) if beta is not None else None,
        beta, variant)
    if track_changes:
      changes = _sync_changes(step.entries, _params_shaped(
          changes.previous, params_def), reconnected)
    return (deltas, changes, residual if beta is None else new_residual,
            jnp.maximum(token, 0))  # computed, never forwarded: _after_cond

  def no_sync(step, token, changes, residual):
    u_avals = jax.eval_shape(lambda: inner_updates_of(step))
    return (_zero_updates(step.entries, step.params, u_avals), changes,
            residual, token)

  return sync, no_sync


def _as_operands(branches: tuple[Branch, Branch], step: _StepInputs
                 ) -> tuple[tuple[Branch, ...], _StepInputs]:
  """The branches and the step to pass them as operands.

  Extra args that are not all arrays (a callable, a Python flag the inner
  optimizer branches on) cannot be operands: they are closed over instead,
  and an un-jitted update then compiles its cond at every call.
  """
  if all(isinstance(x, (jax.Array, np.ndarray, np.generic))
         for x in jax.tree.leaves(step.extra_args)):
    return branches, step
  extra_args = step.extra_args

  def closing_over_extra_args(branch):
    return lambda step, *rest: branch(step._replace(extra_args=extra_args),
                                      *rest)
  return (tuple(closing_over_extra_args(b) for b in branches),
          step._replace(extra_args={}))


def _reset_branches(inner: optax.GradientTransformation
                    ) -> tuple[Callable[..., PyTree], Callable[..., PyTree]]:
  """The inner-state reset cond's branches, functions of ``(inner_state,
  params, updates)``: a fresh state (step 5) on a sync, else the state."""
  def reset(inner_state, params, updates):
    return _fresh_inner_state(inner.init, params, inner_state, updates)

  def keep(inner_state, params, updates):
    del params, updates
    return inner_state

  return reset, keep


def _init_changes(pool: PyTree, params: PyTree) -> SyncChanges:
  previous = jax.tree.map(
      lambda entry, p: entry if _pool.is_masked(entry) else jnp.asarray(p),
      pool, params, is_leaf=_pool.is_pool_entry)
  zero = jnp.zeros([], jnp.int32)
  return SyncChanges(previous, jnp.zeros([], jnp.float32), zero, zero)


def _init_state(inner: optax.GradientTransformation, params: PyTree,
                mask: Mask | None, vector_axes: VectorAxes | None,
                track_changes: bool, carry: bool) -> LaPermState:
  """Step 1: the pool, the inner state, zero counters (and residuals)."""
  pool = _pool.sorted_pool(params, mask=mask, vector_axes=vector_axes)
  return LaPermState(
      count=jnp.zeros([], jnp.int32),
      steps_since_sync=jnp.zeros([], jnp.int32),
      inner_state=inner.init(params),
      pool=pool,
      changes=(_init_changes(pool, params) if track_changes else
               optax.EmptyState()),
      residual=(_residual.init(pool, params) if carry else
                optax.EmptyState()),
  )


def _pool_for_update(params: PyTree | None, pool: PyTree) -> PyTree:
  """:func:`laperm_jax._pool.pool_like`, once params are known to fit."""
  if params is None:
    raise ValueError(
        'laperm needs the current params: call '
        '`tx.update(grads, state, params)`. The sync replaces weights, so '
        'it must see them.')
  _pool.check_param_dtypes(params, pool)
  return _pool.pool_like(params, pool)


def _zero_updates(entries: PyTree, params: PyTree, inner_updates: PyTree
                  ) -> PyTree:
  """The non-sync branch's updates: zeros in the sync update's dtype."""
  return _on_pool(lambda _, p, u: jnp.zeros_like(p, _wide_dtype(p, u)),
                  entries, params, inner_updates)


def laperm(
    inner: optax.GradientTransformation,
    sync_period: SyncPeriod,
    *,
    mask: Mask = None,
    vector_axes: VectorAxes = None,
    reset_inner_state: bool = False,
    track_changes: bool = False,
    carry_residual: float | jax.Array | None = None,
    reconnect_variant: str | None = None,
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
    sync_period: ``k``, a positive int (or int32 scalar array), or a
      schedule: a callable of the int32 count of previous update calls
      returning ``k``.
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
      pool. One more copy of the reconnected params in the state. A float
      scalar array (e.g. from ``optax.inject_hyperparams``) is accepted too.
    reconnect_variant: how XLA is asked to sort at a sync: ``'auto'`` (the
      measured choice for the platform compiled for), ``'packed'``,
      ``'packed_cosort'``, ``'keyed'`` or ``'keyed_cosort'``. Every variant
      gives the same bits; only the speed differs. None (default): the
      environment variable ``LAPERM_JAX_RECONNECT_VARIANT`` when it is set
      (read when the update is traced), else ``'auto'``.

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
  _sync_period.check_sync_period(sync_period)
  beta = _residual.carry_or_none(carry_residual)
  if reconnect_variant is not None:
    _ranking.forced_variant(reconnect_variant)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params: PyTree) -> LaPermState:
    if callable(sync_period):
      _sync_period.period_at(sync_period, jnp.zeros([], jnp.int32))
    return _init_state(inner, params, mask, vector_axes, track_changes,
                       beta is not None)

  sync_branches = _sync_branches(inner, beta, track_changes, reconnect_variant)
  reset_branches = _reset_branches(inner)

  def update_fn(updates: PyTree, state: LaPermState,
                params: PyTree | None = None, **extra_args: Any
                ) -> tuple[PyTree, LaPermState]:
    entries = _pool_for_update(params, state.pool)
    steps_since_sync = state.steps_since_sync + 1
    is_sync = steps_since_sync >= _sync_period.period_at(sync_period,
                                                         state.count)
    (sync, no_sync), step = _as_operands(sync_branches, _StepInputs(
        updates, state.inner_state, params, entries, extra_args))
    deltas, changes, residual, token = jax.lax.cond(
        is_sync, sync, no_sync, step, state.count,
        state.changes if track_changes else (),
        state.residual if beta is not None else ())
    inner_updates, inner_state = inner.update(
        _after_cond(token, updates), state.inner_state, params=params,
        **extra_args)
    new_updates = _select_update(is_sync, entries, deltas, inner_updates)
    if reset_inner_state:
      inner_state = jax.lax.cond(is_sync, *reset_branches, inner_state,
                                 params, new_updates)
    return new_updates, state._replace(
        count=optax.safe_increment(state.count),
        steps_since_sync=jnp.where(is_sync, 0, steps_since_sync).astype(
            jnp.int32),
        inner_state=inner_state,
        changes=changes if track_changes else state.changes,
        residual=residual if beta is not None else state.residual)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
