"""Sparse-training baselines for sparse LaPerm, as Optax transformations.

Three ways to train a network whose sparse init fixes a number of active
connections per layer (the zeros of ``laperm_jax.sparse_init``):

* :func:`fixed_mask`: the inner optimizer on the init's mask, forever;
* :func:`sparse_evolutionary_training` (SET, Mocanu et al. 2018): every
  ``update_period`` steps each layer drops the fraction ``drop_fraction`` of
  its active weights of smallest magnitude and regrows as many at random;
* :func:`rigl` (RigL, Evci et al. 2020): the same, regrowing where the dense
  gradient is largest, the fraction decayed by a cosine to zero at
  ``end_step``.

A layer is a selected leaf (default: every leaf of rank >= 2, the kernels);
other leaves are trained densely. The active set of a layer is its non-zero
entries at ``init``. Gradients of inactive entries are zeroed before the
inner optimizer and its updates are masked, so inactive weights stay exactly
0. At a topology update (the step ``t`` with ``t % update_period == 0`` and
``t < end_step``, 1-based), the inner step runs first on the current mask;
then the drop ranks the resulting weights, the growth chooses among every
entry inactive after the drop (a connection just dropped may grow again, as
in the RigL reference code), grown weights are set to 0 and the inner
state of every entry not kept (dropped, grown, inactive) is zeroed, so that
moments live on kept connections only. Each layer keeps its active count.
Ties: ``experiments.sparse_topology``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from experiments import sparse_topology

Selected = Callable[[optax.Params], Any] | Any
FractionSchedule = Callable[[jax.Array], jax.Array]
REGROWTH = ('random', 'gradient')


class SparseTrainingState(NamedTuple):
  """State of the sparse-training transformations of this module.

  Attributes:
    count: int32 scalar, the number of update calls so far.
    inner_state: the inner optimizer's state.
    mask: per selected leaf a bool array, True where a connection is
      active; ``optax.MaskedNode()`` for leaves trained densely.
    key: the PRNG key of random regrowth (SET); split at each topology
      update, unused by the other rules.
    topology_updates: int32 scalar, topology updates done so far.
    created: int32 scalar, connections made active by those updates, summed
      (a connection dropped and regrown by the same update is not counted).
    removed: int32 scalar, connections made inactive, summed; equal to
      ``created``, since every layer keeps its active count.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> params = {'w': jnp.array([[0., 1.], [2., 0.]]), 'b': jnp.zeros(2)}
    >>> state = fixed_mask(optax.sgd(0.1)).init(params)
    >>> state.mask['w']
    Array([[False,  True],
           [ True, False]], dtype=bool)
  """
  count: jax.Array
  inner_state: optax.OptState
  mask: optax.Params
  key: jax.Array
  topology_updates: jax.Array
  created: jax.Array
  removed: jax.Array


def _is_masked_node(x) -> bool:
  return isinstance(x, optax.MaskedNode)


def _default_selected(params: optax.Params) -> Any:
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def _selection(selected: Selected | None, params: optax.Params) -> Any:
  if selected is None:
    return _default_selected(params)
  return selected(params) if callable(selected) else selected


def _masked(mask: optax.Params, tree: optax.Params) -> optax.Params:
  """``tree`` with the entries of inactive connections set to 0."""
  return jax.tree.map(
      lambda m, x: x if _is_masked_node(m) else jnp.where(m, x, 0).astype(
          x.dtype), mask, tree, is_leaf=_is_masked_node)


class _Rewiring(NamedTuple):
  """One topology update's rule: how much to drop and where to grow."""
  update_period: int
  end_step: int
  drop_fraction: FractionSchedule
  regrowth: str


def _rewire_leaf(rule: _Rewiring, fraction, key, active, param, update,
                 grad):
  """(update, new mask, kept) of one layer at a topology update."""
  candidate = optax.apply_updates(param, update)
  count = sparse_topology.drop_count(fraction, active)
  dropped = sparse_topology.drop_smallest(candidate, active, count)
  after_drop = active & ~dropped
  if rule.regrowth == 'gradient':
    scores = jnp.abs(grad)
  else:
    scores = jax.random.uniform(key, param.shape)
  grown = sparse_topology.grow_largest(scores, ~after_drop, count)
  kept = after_drop & ~grown
  # Kept weights take the inner step; every other weight becomes exactly 0
  # (p + (-p)), grown ones included.
  new_update = jnp.where(kept, update, -param).astype(update.dtype)
  return new_update, after_drop | grown, kept


def _rewire(rule: _Rewiring, inner: optax.GradientTransformation, operands):
  """A topology update over the tree: new updates and state."""
  updates, grads, params, state = operands
  fraction = rule.drop_fraction(state.count)
  key, subkey = jax.random.split(state.key)
  masks, mask_def = jax.tree.flatten(state.mask, is_leaf=_is_masked_node)
  new_updates = jax.tree.leaves(updates)
  new_masks, keep = list(masks), [True] * len(masks)
  created = removed = jnp.zeros([], jnp.int32)
  param_leaves, grad_leaves = jax.tree.leaves(params), jax.tree.leaves(grads)
  for i, active in enumerate(masks):
    if _is_masked_node(active):
      continue
    new_updates[i], new_masks[i], keep[i] = _rewire_leaf(
        rule, fraction, jax.random.fold_in(subkey, i), active,
        param_leaves[i], new_updates[i], grad_leaves[i])
    created += jnp.sum(new_masks[i] & ~active, dtype=jnp.int32)
    removed += jnp.sum(active & ~new_masks[i], dtype=jnp.int32)
  keep_tree = jax.tree.unflatten(jax.tree.structure(params), keep)
  inner_state = optax.tree.map_params(
      inner, lambda v, k: jnp.where(k, v, jnp.zeros_like(v)),
      state.inner_state, keep_tree)
  new_state = state._replace(
      inner_state=inner_state, mask=jax.tree.unflatten(mask_def, new_masks),
      key=key, topology_updates=optax.safe_increment(state.topology_updates),
      created=state.created + created, removed=state.removed + removed)
  return jax.tree.unflatten(jax.tree.structure(updates), new_updates), new_state


def _sparse_training(inner: optax.GradientTransformation,
                     selected: Selected | None, rule: _Rewiring | None,
                     seed: int) -> optax.GradientTransformationExtraArgs:
  """The shared machinery: masked inner steps, optional topology updates."""
  inner = optax.with_extra_args_support(inner)

  def init_fn(params: optax.Params) -> SparseTrainingState:
    selection = _selection(selected, params)
    mask = jax.tree.map(
        lambda flag, p: p != 0 if flag else optax.MaskedNode(),
        selection, params)
    zero = jnp.zeros([], jnp.int32)
    return SparseTrainingState(
        count=zero, inner_state=inner.init(params), mask=mask,
        key=jax.random.key(seed), topology_updates=zero, created=zero,
        removed=zero)

  def update_fn(updates: optax.Updates, state: SparseTrainingState,
                params: optax.Params | None = None, **extra_args
                ) -> tuple[optax.Updates, SparseTrainingState]:
    if params is None:
      raise ValueError('sparse training needs params: call '
                       'update(grads, state, params).')
    grads = updates
    inner_updates, inner_state = inner.update(
        _masked(state.mask, grads), state.inner_state, params, **extra_args)
    inner_updates = _masked(state.mask, inner_updates)
    state = state._replace(count=optax.safe_increment(state.count),
                           inner_state=inner_state)
    if rule is None:
      return inner_updates, state
    due = ((state.count % rule.update_period == 0) &
           (state.count < rule.end_step))
    return jax.lax.cond(
        due, lambda ops: _rewire(rule, inner, ops), lambda ops: (ops[0],
                                                                 ops[3]),
        (inner_updates, grads, params, state))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def fixed_mask(inner: optax.GradientTransformation, *,
               selected: Selected | None = None
               ) -> optax.GradientTransformationExtraArgs:
  """The inner optimizer on the fixed sparse mask of the initial params.

  The connections of a selected leaf are its non-zero entries at ``init``;
  the others keep the value 0 exactly through every step
  (``fixed_mask(optax.adam(lr))`` is "masked Adam").

  Args:
    inner: the optimizer of the active weights (lr inside).
    selected: which leaves are sparse layers: a pytree of bools like params
      or a callable of params returning one; default the leaves of rank
      >= 2.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`SparseTrainingState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> params = {'w': jnp.array([[0., 1.], [2., 0.]])}
    >>> tx = fixed_mask(optax.sgd(0.5))
    >>> state = tx.init(params)
    >>> updates, state = tx.update({'w': jnp.ones((2, 2))}, state, params)
    >>> optax.apply_updates(params, updates)['w']
    Array([[0. , 0.5],
           [1.5, 0. ]], dtype=float32)
  """
  return _sparse_training(inner, selected, None, seed=0)


def sparse_evolutionary_training(
    inner: optax.GradientTransformation, update_period: int,
    drop_fraction: float = 0.3, *, end_step: int | None = None,
    selected: Selected | None = None, seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """SET: magnitude drop and random regrowth every ``update_period`` steps.

  Args:
    inner: the optimizer of the active weights (lr inside).
    update_period: steps between topology updates (Mocanu et al.: one
      epoch).
    drop_fraction: zeta, the fraction of each layer's active weights
      replaced per update (Mocanu et al.: 0.3).
    end_step: no topology update at this step or later (default: none
      skipped).
    selected: which leaves are sparse layers (see :func:`fixed_mask`).
    seed: of the random regrowth.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`SparseTrainingState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> params = {'w': jnp.array([[0., 1.], [2., 0.], [0., 3.]])}
    >>> tx = sparse_evolutionary_training(optax.sgd(0.1), 1, 0.5)
    >>> state = tx.init(params)
    >>> updates, state = tx.update({'w': jnp.ones((3, 2))}, state, params)
    >>> int(state.mask['w'].sum()), int(state.created)
    (3, 1)

  References:
    Mocanu et al., `Scalable training of artificial neural networks with
    adaptive sparse connectivity inspired by network science
    <https://doi.org/10.1038/s41467-018-04316-3>`_, Nature Communications
    2018.
  """
  rule = _Rewiring(update_period, _no_end(end_step),
                   lambda count: jnp.float32(drop_fraction), 'random')
  return _sparse_training(inner, selected, rule, seed)


def rigl(inner: optax.GradientTransformation, end_step: int,
         update_period: int = 100, drop_fraction: float = 0.3, *,
         selected: Selected | None = None
         ) -> optax.GradientTransformationExtraArgs:
  """RigL: magnitude drop, regrowth where the dense gradient is largest.

  The drop fraction at step ``t`` is ``drop_fraction / 2 * (1 + cos(pi * t
  / end_step))`` (``optax.cosine_decay_schedule``); no update at
  ``end_step`` or later. The gradient is the one this update receives,
  dense (inactive entries included).

  Args:
    inner: the optimizer of the active weights (lr inside).
    end_step: the step where the fraction reaches 0 (the paper: 75% of
      training).
    update_period: steps between topology updates (the paper: 100).
    drop_fraction: the fraction at step 0 (the paper: 0.3).
    selected: which leaves are sparse layers (see :func:`fixed_mask`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`SparseTrainingState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> params = {'w': jnp.array([[0., 1.], [2., 0.], [0., 3.]])}
    >>> tx = rigl(optax.sgd(0.1), end_step=100, update_period=1,
    ...           drop_fraction=0.5)
    >>> state = tx.init(params)
    >>> grads = {'w': jnp.array([[0., 0.], [0., 5.], [0., 0.]])}
    >>> updates, state = tx.update(grads, state, params)
    >>> state.mask['w']  # 1.0 dropped, grown where |grad| is largest
    Array([[False, False],
           [ True,  True],
           [False,  True]], dtype=bool)

  References:
    Evci et al., `Rigging the Lottery: Making All Tickets Winners
    <https://arxiv.org/abs/1911.11134>`_, ICML 2020.
  """
  rule = _Rewiring(update_period, end_step,
                   optax.cosine_decay_schedule(drop_fraction, end_step),
                   'gradient')
  return _sparse_training(inner, selected, rule, seed=0)


def _no_end(end_step: int | None) -> int:
  return jnp.iinfo(jnp.int32).max if end_step is None else end_step


def topology_counts(opt_state: Any) -> dict:
  """results.json fields of a sparse-training state; {} for other states.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> state = fixed_mask(optax.sgd(0.1)).init({'w': jnp.ones((2, 2))})
    >>> topology_counts(state)
    {'topology_updates': 0, 'connections_created': 0, 'connections_removed': 0}
    >>> topology_counts(optax.sgd(0.1).init({'w': jnp.ones(2)}))
    {}
  """
  if not isinstance(opt_state, SparseTrainingState):
    return {}
  return {'topology_updates': int(opt_state.topology_updates),
          'connections_created': int(opt_state.created),
          'connections_removed': int(opt_state.removed)}


OPTIMIZERS = ('masked_adam', 'set', 'rigl')


def from_name(name: str, inner: optax.GradientTransformation, *,
              steps_per_epoch: int, total_steps: int, seed: int,
              selected: Selected | None = None
              ) -> optax.GradientTransformationExtraArgs:
  """The baseline ``--optimizer NAME`` of the experiments, around ``inner``.

  ``masked_adam``: :func:`fixed_mask`; ``set``: zeta 0.3 at the end of
  each epoch but the last, whose evaluation comes before any rewiring in
  Mocanu et al. 2018 (their MLP experiments); ``rigl``: the RigL paper's
  defaults, zeta 0.3, every 100 steps, cosine to 0 at 75% of training.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> tx = from_name('rigl', optax.adam(1e-3), steps_per_epoch=10,
    ...                total_steps=100, seed=0)
    >>> int(tx.init({'w': jnp.eye(2)}).topology_updates)
    0
  """
  if name == 'masked_adam':
    return fixed_mask(inner, selected=selected)
  if name == 'set':
    return sparse_evolutionary_training(inner, steps_per_epoch, 0.3,
                                        end_step=total_steps,
                                        selected=selected, seed=seed)
  if name == 'rigl':
    return rigl(inner, end_step=max(1, int(0.75 * total_steps)),
                update_period=100, drop_fraction=0.3, selected=selected)
  raise ValueError(f'unknown sparse baseline {name!r}; choose from '
                   f'{OPTIMIZERS}')
