"""Checking a restored LaPerm state against the transformation and params.

A checkpoint holds the pool: the sorted initial values, which cannot be
recovered from the current weights. Restore it (with Orbax or anything else)
against ``jax.eval_shape(tx.init, params)`` so that the containers come back
as a :class:`~laperm_jax.LaPermState`, then call :func:`check_state`: it
catches a state written by a transformation with another mask, other vector
axes, another inner optimizer, or for another tree, and names the leaf.

Sharded runs: ``jax.eval_shape(tx.init, params)`` on sharded params gives
each leaf of the state its param's sharding; under an Explicit mesh that
sharding names the abstract mesh, so rebuild the targets on the concrete one
(``NamedSharding(mesh, leaf.sharding.spec)``) before handing them to Orbax.

What a state cannot tell: ``k`` and the inner optimizer's hyperparameters
(learning rate, ...) are not stored, so changing them on resume is allowed;
it takes effect from the restored step (``steps_since_sync`` keeps counting,
so if ``steps_since_sync + 1 >= k`` the next call syncs).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from laperm_jax import masks
from laperm_jax.reconnection import is_masked
from laperm_jax.transform import LaPermState

PyTree = Any


def _described(tree) -> dict[str, Any]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path, simple=True, separator='/'): leaf
          for path, leaf in leaves}


def check_state(tx: optax.GradientTransformation, state: LaPermState,
                params: PyTree) -> LaPermState:
  """Checks that ``state`` is a LaPerm state of ``tx`` for ``params``.

  Checks, each with an error that names the offending leaf: ``state`` is a
  :class:`~laperm_jax.LaPermState` (not the dicts Orbax returns without a
  target); it has the tree structure, shapes and dtypes of
  ``jax.eval_shape(tx.init, params)`` (so the mask, the inner optimizer and
  the params tree agree); every pool leaf is sorted along ``tx``'s vector
  axes (so ``vector_axes`` agree); the counters are consistent. Runs
  ``tx.init`` once on the pool; call it outside ``jit``, once after a
  restore.

  Args:
    tx: the transformation that will continue training (a :func:`laperm`,
      outermost).
    state: the restored state.
    params: the restored params (arrays or ``jax.ShapeDtypeStruct``\\ s are
      enough for the structure checks; the pool check needs only ``state``).

  Returns:
    ``state``, unchanged, so that it can be used inline.

  Raises:
    TypeError: ``state`` is not a ``LaPermState``.
    ValueError: anything else does not match, with the leaf's path.

  Example:
    >>> import jax, jax.numpy as jnp, optax, laperm_jax
    >>> params = {'w': jnp.array([[2., -1.], [0., 3.]])}
    >>> tx = laperm_jax.laperm(optax.adam(1e-3), sync_period=10)
    >>> state = tx.init(params)
    >>> laperm_jax.check_state(tx, state, params) is state
    True
    >>> other = laperm_jax.laperm(optax.adam(1e-3), 10, vector_axes=-1)
    >>> laperm_jax.check_state(other, state, params)
    Traceback (most recent call last):
      ...
    ValueError: state.pool/w: the pool is not sorted along this transformation's vector axes: the state was made with other `vector_axes` (or is not a LaPerm pool).
  """
  if not isinstance(state, LaPermState):
    raise TypeError(
        f'expected a LaPermState, got {type(state).__name__}. Restore against '
        'a target, `jax.eval_shape(tx.init, params)`: without one, Orbax '
        'returns NamedTuples as dicts or lists.')
  expected = jax.eval_shape(tx.init, params)
  if not isinstance(expected, LaPermState):
    raise ValueError(
        f'tx.init gives a {type(expected).__name__}, not a LaPermState: pass '
        'the laperm transformation itself (LaPerm is the outermost one).')
  want, got = _described(expected), _described(state)
  missing = [k for k in want if k not in got]
  extra = [k for k in got if k not in want]
  if missing or extra:
    raise ValueError(
        'the state does not fit this transformation and params. '
        f'Leaves the transformation expects but the state lacks: '
        f'{missing or "none"}; leaves in the state it does not expect: '
        f'{extra or "none"}. A different pool means a different `mask` or '
        'params tree; a different inner_state, another inner optimizer.')
  if jax.tree.structure(expected) != jax.tree.structure(state):
    raise ValueError(
        'the state has the right leaves in other containers: '
        f'{jax.tree.structure(state)} vs {jax.tree.structure(expected)}.')
  for path, leaf in got.items():
    like = want[path]
    if jnp.shape(leaf) != like.shape or jnp.result_type(leaf) != like.dtype:
      raise ValueError(
          f'state.{path}: shape {jnp.shape(leaf)} and dtype '
          f'{jnp.result_type(leaf)}, but this transformation and params '
          f'give {like.shape} and {like.dtype}.')
  count, since = int(state.count), int(state.steps_since_sync)
  if not 0 <= since <= count:
    raise ValueError(
        f'state.steps_since_sync={since} must be in [0, count={count}].')
  _check_pool_sorted(tx, state.pool, params)
  return state


def _check_pool_sorted(tx, pool: PyTree, params: PyTree) -> None:
  """Re-sorting a pool with ``tx``'s own settings must leave it unchanged."""
  as_params = jax.tree.map(
      lambda pool_leaf, p: (jnp.zeros(p.shape, p.dtype)
                            if is_masked(pool_leaf) else pool_leaf),
      pool, params, is_leaf=is_masked)
  resorted = tx.init(as_params).pool
  leaves, _ = jax.tree_util.tree_flatten_with_path(pool, is_leaf=is_masked)
  for (path, pool_leaf), again in zip(
      leaves, jax.tree.leaves(resorted, is_leaf=is_masked)):
    if is_masked(pool_leaf):
      continue
    if not np.array_equal(np.asarray(pool_leaf), np.asarray(again),
                          equal_nan=True):
      name = masks.leaf_name(path).strip("'")
      raise ValueError(
          f'state.pool/{name}: the pool is not sorted along this '
          "transformation's vector axes: the state was made with other "
          '`vector_axes` (or is not a LaPerm pool).')
