"""LaPerm as an Optax gradient transformation.

LaPerm ("lookahead permutation", Qiu & Suda, NeurIPS 2020) trains a network
without changing its weight values. An inner optimizer takes ordinary steps;
every ``k`` steps each weight vector (the incoming weights of one output unit)
is overwritten by its own sorted *initial* values, arranged in the rank order
of the current weights. Only positions change: training "reconnects".

How an update call works. The inner optimizer's update always runs, with
``params`` and extra arguments forwarded. On a sync call the candidate weights
``params + inner_updates`` are reconnected against the pool, and the update
returned for a reconnected leaf is ``reconnected - params``, so that
``optax.apply_updates`` lands on the reconnected weights: params stay the
user's plain tree and nothing has to be called after ``apply_updates``. The
sync runs inside one ``lax.cond`` on a scalar predicate, so non-sync steps do
not execute the sort.

Floating point. ``p + (q - p)`` is not always exactly ``q``. Through
``apply_updates`` a reconnected weight ``w`` satisfies
``|w - q| <= ulp(max(|p|, |q|))`` (two correctly rounded operations, each
half an ulp of a number no larger than ``max(|p|, |q|)`` in magnitude), and
is exact when ``q == 0``, when ``q == p``, and whenever ``p`` and ``q`` are
within a factor of two of each other (Sterbenz). The pool never drifts: it is
built once and only read. For evaluation and export, ``reconnect(params,
state.pool)`` returns exact pool values.

When ``k`` is read. With an int ``k`` syncs happen on update calls ``k, 2k,
3k, ...`` (1-based). With a schedule, on every call ``k = sync_period(count)``
is read, where ``count`` is the number of update calls before this one
(0 on the first call, as in ``optax.MultiSteps``), and the call syncs when
``steps_since_sync + 1 >= k``: ``k`` counts calls since the last sync.
A schedule is checked at ``init`` (count 0) and wherever its value is
concrete: ``k`` that is 0, negative, fractional or boolean is an error. Under
``jit`` (or when ``optax.inject_hyperparams`` makes ``sync_period`` a tracer)
the value cannot be checked; a traced ``k < 1`` then behaves exactly as
``k = 1``: every call syncs.

Non-finite values. Ranking puts ``-inf`` first, ``+inf`` after every finite
value and NaNs (of either sign) last, ties by position. A sync therefore
turns a NaN or infinite candidate weight into a finite pool value, which
would hide divergence (while a NaN gradient poisons Adam's moments for
good). To stop on divergence, compose with ``optax.apply_if_finite``, which
checks the incoming gradients and counts skipped steps in
``total_notfinite``. Around LaPerm,
``optax.apply_if_finite(laperm(...), max_consecutive_errors=n)`` skips the
whole step: LaPerm's counters do not advance, so a due sync moves to the
next finite step. Around the inner optimizer,
``laperm(optax.apply_if_finite(inner, n), k)``, only the inner step is
skipped: LaPerm counts the call and a due sync reconnects the unchanged
weights. Stop training when ``total_notfinite`` grows.

Sharded params. The pool is built with ``jax.tree.map``-like plumbing from
the params, so it carries each param's sharding (and, under Flax NNX, its
sharding metadata), as Adam's moments do. A sync sorts each weight vector
where it lives; see :mod:`laperm_jax.sharding` for layouts that split a
vector across devices.

Checkpoints. Restore the state against ``jax.eval_shape(tx.init, params)``
so that it comes back as a :class:`LaPermState`, then call
:func:`laperm_jax.check_state`. The pool is never rebuilt from the current
weights.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from laperm_jax import reconnection

PyTree = Any
SyncPeriod = int | jax.Array | Callable[[jax.Array], jax.Array | int]


class LaPermState(NamedTuple):
  """State of :func:`laperm`.

  Attributes:
    count: int32 scalar, the number of update calls so far.
    steps_since_sync: int32 scalar, update calls since the last sync (0 right
      after a sync); always below the current sync period.
    inner_state: the inner optimizer's state, never reset or permuted at a sync
      unless ``reset_inner_state=True``.
    pool: per reconnected leaf, its initial values sorted within each weight
      vector (an array of the leaf's shape and dtype); ``optax.MaskedNode()``
      for leaves that are not reconnected.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from laperm_jax import laperm
    >>> params = {'w': jnp.array([[3., 0.], [1., 2.]]), 'b': jnp.zeros(2)}
    >>> state = laperm(optax.sgd(0.1), sync_period=5).init(params)
    >>> int(state.count), int(state.steps_since_sync)
    (0, 0)
    >>> state.pool
    {'b': MaskedNode(), 'w': Array([[1., 0.],
           [3., 2.]], dtype=float32)}
  """
  count: jax.Array
  steps_since_sync: jax.Array
  inner_state: optax.OptState
  pool: PyTree


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


def laperm(
    inner: optax.GradientTransformation,
    sync_period: SyncPeriod,
    *,
    mask=None,
    vector_axes=None,
    reset_inner_state: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """LaPerm: an inner optimizer plus a reconnection of weights every k steps.

  LaPerm must be the outermost transformation: anything placed after it in a
  chain (``optax.chain(laperm(...), optax.scale(...))``) rescales the sync
  update and breaks it. Learning rate, clipping and weight decay go inside
  ``inner``. Transformations before it (``optax.chain(clip, laperm(...))``)
  only change the gradients the inner optimizer sees.

  Other compositions: under ``jax.vmap`` of the update over an ensemble the
  ``lax.cond`` predicate becomes batched (when the states' counters are
  batched), so the sort runs on every step; the results stay correct and
  equal per-member runs. ``optax.MultiSteps(laperm(...), every_k_schedule=m)``
  calls LaPerm once per ``m`` micro-steps, so ``k`` counts accumulated steps.
  ``optax.inject_hyperparams`` works around the inner optimizer, and around
  ``laperm`` itself (``static_args=('inner',)``; ``sync_period`` then arrives
  as a tracer, see Semantics in the README or the docs).

  Args:
    inner: the inner optimizer, any optax transformation (e.g.
      ``optax.adam(1e-3)``); ``params`` and extra arguments are forwarded.
    sync_period: ``k``, a positive int, or a schedule: a callable of the int32
      count of previous update calls returning ``k`` (Semantics in the README
      or the docs says exactly when it is read).
    mask: which leaves are reconnected, with ``optax.masked`` semantics (True =
      reconnected; a pytree prefix of params or a callable of params).
      Default :func:`laperm_jax.default_mask`: floating leaves of rank >= 2.
    vector_axes: which axes form one weight vector. Default: every axis but
      the last (one vector per output unit of Flax Dense/Conv kernels); a 1-D
      leaf is one vector. An int or a tuple of ints applies to every leaf (e.g.
      ``-1`` for Equinox's ``(out, in)`` Linear); a pytree prefix of params
      with such values, or a callable of params returning one, sets it per
      leaf.
    reset_inner_state: re-initialise the inner state (at the reconnected
      params) at each sync. Off by default: the paper keeps it.

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
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    if callable(sync_period):
      _period_at(sync_period, jnp.zeros([], jnp.int32))
    return LaPermState(
        count=jnp.zeros([], jnp.int32),
        steps_since_sync=jnp.zeros([], jnp.int32),
        inner_state=inner.init(params),
        pool=reconnection.sorted_pool(params, mask, vector_axes),
    )

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(
          'laperm needs the current params: call '
          '`tx.update(grads, state, params)`. The sync replaces weights, so '
          'it must see them.')
    reconnection.check_params(params, state.pool)
    inner_updates, inner_state = inner.update(
        updates, state.inner_state, params, **extra_args)
    period = _period_at(sync_period, state.count)
    steps_since_sync = state.steps_since_sync + 1
    is_sync = steps_since_sync >= period

    def sync(params, inner_updates, inner_state, pool):
      candidate = jax.tree.map(
          lambda p, u: jnp.asarray(p + u).astype(jnp.asarray(p).dtype),
          params, inner_updates)
      reconnected = reconnection.reconnect(candidate, pool,
                                            vector_axes=vector_axes)
      def sync_update(pool_leaf, p, q, u):
        if reconnection.is_masked(pool_leaf):
          return u
        return jnp.asarray(q - p).astype(jnp.asarray(u).dtype)
      sync_updates = jax.tree.map(sync_update, pool, params, reconnected,
                                  inner_updates, is_leaf=reconnection.is_masked)
      if reset_inner_state:
        inner_state = inner.init(optax.apply_updates(params, sync_updates))
      return sync_updates, inner_state

    def no_sync(params, inner_updates, inner_state, pool):
      del params, pool
      return inner_updates, inner_state

    new_updates, inner_state = jax.lax.cond(
        is_sync, sync, no_sync, params, inner_updates, inner_state, state.pool)
    new_state = LaPermState(
        count=optax.safe_increment(state.count),
        steps_since_sync=jnp.where(is_sync, 0, steps_since_sync).astype(
            jnp.int32),
        inner_state=inner_state,
        pool=state.pool,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
