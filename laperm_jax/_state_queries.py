"""LaPerm states inside any optax composition: find, read, check.

A composition holds exactly one LaPerm state: LaPerm is the outermost
transformation of what it wraps, so two of them cannot both sync the same
params. :func:`exact_params` and :func:`has_synced` raise unless they find
one; :func:`check_state` checks every one it finds.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from laperm_jax import _layouts
from laperm_jax import _pool
from laperm_jax._states import LaPermState
from laperm_jax._typing import PyTree


def _is_state(x: Any) -> bool:
  return isinstance(x, LaPermState)


def _find(opt_state: PyTree) -> list[tuple[Any, LaPermState]]:
  """(path, state) of every LaPermState in ``opt_state``, outermost first."""
  found = []
  for path, node in jax.tree_util.tree_flatten_with_path(
      opt_state, is_leaf=_is_state)[0]:
    if _is_state(node):
      found.append((path, node))
  return found


def _find_one(opt_state: PyTree, what: str) -> LaPermState:
  """The one LaPermState in ``opt_state``; raises for none or several."""
  found = _find(opt_state)
  if not found:
    raise ValueError(
        f'{what} found no LaPermState in opt_state: pass the state of a '
        'laperm(...) transformation or of a composition holding one.')
  if len(found) > 1:
    where = ', '.join(_layouts.leaf_name(p) for p, _ in found)
    raise ValueError(
        f'{what} expects one LaPermState in opt_state, found {len(found)} '
        f'(at {where}): a composition holds one laperm(...), outermost.')
  return found[0][1]


def _unwrap(x: Any) -> Any:
  """The array of an ``nnx.Variable`` (``x[...]``), or ``x`` itself."""
  if hasattr(x, 'get_value'):
    return x.get_value()
  return x


def exact_params(opt_state: PyTree, params: PyTree) -> PyTree:
  """The params with every reconnected weight exactly on its pool value.

  For evaluation and export: finds the one LaPerm state in ``opt_state``, in
  any composition (``optax.chain``, ``optax.apply_if_finite``,
  ``optax.MultiSteps``, ``optax.inject_hyperparams``, the ``opt_state`` of a
  Flax ``nnx.Optimizer``), and reconnects ``params`` against its pool with
  its own vector axes. Right after a sync this removes the rounding of
  ``optax.apply_updates``; between syncs it gives the weights a sync would
  give them now. Works under ``jit``.

  Args:
    opt_state: the optimizer state the user holds: one LaPermState, in any
      composition (a ValueError names where when there are none or several).
    params: the current params (the tree ``tx.init`` got).

  Returns:
    ``params`` with every reconnected leaf an exact per-vector permutation of
    its pool (the same tree structure, e.g. NNX ``Param`` nodes).

  Example:
    >>> import jax.numpy as jnp, optax, laperm_jax
    >>> params = {'w': jnp.array([[1.], [2.], [3.]])}
    >>> tx = optax.chain(optax.clip(1.0), laperm_jax.laperm(optax.sgd(1.), 3))
    >>> state = tx.init(params)
    >>> laperm_jax.exact_params(state, {'w': jnp.array([[.5], [-7.], [.1]])})
    {'w': Array([[3.],
           [1.],
           [2.]], dtype=float32)}
  """
  return _pool.reconnect(params, _find_one(opt_state, 'exact_params').pool)


def has_synced(opt_state: PyTree) -> jax.Array:
  """Whether the last LaPerm update call synced (like ``MultiSteps.has_updated``).

  Args:
    opt_state: a state holding one LaPermState, in any composition (a
      ValueError names where when there are none or several).

  Returns:
    A boolean scalar array: True when the last update call of the LaPerm
    state synced (its weights are then permutations of the pool, up to the
    rounding of ``optax.apply_updates``); False at init.

  Example:
    >>> import jax.numpy as jnp, optax, laperm_jax
    >>> params = {'w': jnp.ones((3, 2))}
    >>> tx = laperm_jax.laperm(optax.sgd(0.1), sync_period=2)
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   _, state = tx.update(params, state, params)
    ...   print(bool(laperm_jax.has_synced(state)))
    False
    True
  """
  state = _find_one(opt_state, 'has_synced')
  count = jnp.asarray(_unwrap(state.count))
  since = jnp.asarray(_unwrap(state.steps_since_sync))
  return (count > 0) & (since == 0)


def _described(tree: PyTree) -> dict[str, Any]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path, simple=True, separator='/'): leaf
          for path, leaf in leaves}


def _node_at(tree: PyTree, path: tuple[Any, ...]) -> Any:
  """The node of ``tree`` at ``path``; attributes or items, as stored."""
  node = tree
  for entry in path:
    key: Any = getattr(entry, 'name', getattr(entry, 'key',
                                              getattr(entry, 'idx', None)))
    if isinstance(entry, jax.tree_util.GetAttrKey) and hasattr(node, key):
      node = getattr(node, key)
    else:
      try:
        node = node[key]
      except (KeyError, IndexError, TypeError):
        return None
  return node


def check_state(tx: optax.GradientTransformation, opt_state: PyTree,
                params: PyTree) -> PyTree:
  """Checks a restored state against the transformation and params.

  For every LaPermState in ``tx``'s state (in any composition): it is a
  ``LaPermState`` (not the dicts Orbax returns without a target); the whole
  state has the tree, shapes and dtypes of ``jax.eval_shape(tx.init,
  params)`` (so the mask, the inner optimizers and the params tree agree);
  every pool leaf is sorted along its vector axes (so the checkpoint was
  written with these axes); the counters are consistent. Nothing is
  allocated but scalars: the sortedness check runs where each pool shard
  lives. Call it outside ``jit``, once after a restore.

  Args:
    tx: the transformation that will continue training.
    opt_state: the restored state.
    params: the restored params (arrays or ``jax.ShapeDtypeStruct``\\ s).

  Returns:
    ``opt_state``, unchanged, so that it can be used inline.

  Raises:
    TypeError: where ``tx``'s state holds a LaPermState, ``opt_state`` does
      not.
    ValueError: anything else does not match, with the leaf's path.

  Example:
    >>> import jax, jax.numpy as jnp, optax, laperm_jax
    >>> params = {'w': jnp.array([[2., -1.], [0., 3.]])}
    >>> tx = optax.apply_if_finite(laperm_jax.laperm(optax.adam(1e-3), 10), 3)
    >>> state = tx.init(params)
    >>> laperm_jax.check_state(tx, state, params) is state
    True
    >>> other = laperm_jax.laperm(optax.adam(1e-3), 10, vector_axes=-1)
    >>> laperm_jax.check_state(other, state.inner_state, params)
    Traceback (most recent call last):
      ...
    ValueError: state.pool/w: the pool was built with vector axes (0,), this transformation uses (1,): pass the `vector_axes` of the run that wrote the state.
  """
  expected = jax.eval_shape(tx.init, params)
  expected_states = _find(expected)
  if not expected_states:
    raise ValueError(
        f'tx.init gives a {type(expected).__name__} that holds no '
        'LaPermState: pass the transformation that contains laperm(...).')
  for path, _ in expected_states:
    node = _node_at(opt_state, path)
    if not isinstance(node, LaPermState):
      where = f' at {_layouts.leaf_name(path)}' if path else ''
      raise TypeError(
          f'expected a LaPermState{where}, got {type(node).__name__}. '
          'Restore against a target, `jax.eval_shape(tx.init, params)`: '
          'without one, Orbax returns NamedTuples as dicts or lists.')
    _check_same_axes(node.pool, _node_at(expected, path).pool)
  want, got = _described(expected), _described(opt_state)
  missing = [k for k in want if k not in got]
  extra = [k for k in got if k not in want]
  if missing or extra:
    raise ValueError(
        'the state does not fit this transformation and params. '
        f'Leaves the transformation expects but the state lacks: '
        f'{missing or "none"}; leaves in the state it does not expect: '
        f'{extra or "none"}. A different pool means a different `mask` or '
        'params tree; a different inner_state, another inner optimizer.')
  expected_def: Any = jax.tree.structure(expected)
  if expected_def != jax.tree.structure(opt_state):
    raise ValueError(
        'the state has the right leaves in other containers (or pool leaves '
        f'of other vector axes): {jax.tree.structure(opt_state)} vs '
        f'{jax.tree.structure(expected)}.')
  for path, leaf in got.items():
    like = want[path]
    if jnp.shape(leaf) != like.shape or jnp.result_type(leaf) != like.dtype:
      raise ValueError(
          f'state.{path}: shape {jnp.shape(leaf)} and dtype '
          f'{jnp.result_type(leaf)}, but this transformation and params '
          f'give {like.shape} and {like.dtype}.')
  for _, state in _find(opt_state):
    count = int(_unwrap(state.count))
    since = int(_unwrap(state.steps_since_sync))
    if not 0 <= since <= count:
      raise ValueError(
          f'state.steps_since_sync={since} must be in [0, count={count}].')
    _check_pool_sorted(state.pool)
  return opt_state


def _check_same_axes(pool: PyTree, expected_pool: PyTree) -> None:
  got = jax.tree_util.tree_flatten_with_path(
      pool, is_leaf=_pool.is_pool_entry)[0]
  want = jax.tree.leaves(expected_pool, is_leaf=_pool.is_pool_entry)
  for (path, entry), like in zip(got, want):
    entry = _unwrap(entry)
    if (isinstance(entry, _pool.PoolLeaf) and isinstance(like, _pool.PoolLeaf)
        and entry.vector_axes != like.vector_axes):
      name = _layouts.leaf_name(path).strip("'")
      raise ValueError(
          f'state.pool/{name}: the pool was built with vector axes '
          f'{entry.vector_axes}, this transformation uses '
          f'{like.vector_axes}: pass the `vector_axes` of the run that wrote '
          'the state.')


def _check_pool_sorted(pool: PyTree) -> None:
  entries = jax.tree_util.tree_flatten_with_path(
      pool, is_leaf=_pool.is_pool_entry)[0]
  for path, entry in entries:
    entry = _unwrap(entry)
    if not isinstance(entry, _pool.PoolLeaf):
      continue
    if not bool(jax.jit(_pool.is_sorted)(entry)):
      name = _layouts.leaf_name(path).strip("'")
      raise ValueError(
          f'state.pool/{name}: the pool is not sorted along its vector axes '
          f'{entry.vector_axes}: the state was made with other '
          '`vector_axes` (or is not a LaPerm pool).')
