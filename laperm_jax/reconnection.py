"""The pool of initial values and the exact sync, at the level of pytrees.

* :func:`sorted_pool` sorts every reconnected leaf within each weight vector;
  the result has the leaf's shape and dtype (so its sharding carries over),
  and ``optax.MaskedNode()`` stands for leaves that are not reconnected.
* :func:`reconnect` gives every leaf with a pool its pool values in the rank
  order of its current values: the LaPerm sync, exact to the bit.
* :func:`is_permutation_of_pool` checks that params are, vector by vector,
  permutations of their pool.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from laperm_jax import masks
from laperm_jax import ranking
from laperm_jax import sharding
from laperm_jax import sort_keys
from laperm_jax import vectors

PyTree = Any


def is_masked(x) -> bool:
  """True for the placeholder of a leaf without pool."""
  return isinstance(x, optax.MaskedNode)


def _on_rows(fn, leaf, axes, *others, rows_out: bool = True):
  """Applies ``fn`` to the rows of ``leaf`` (and of ``others``, same shape).

  The one place where the tree level meets the sort: sharded leaves are laid
  out so that no vector axis is sharded (:mod:`laperm_jax.sharding`), and a
  leaf-shaped result is put back on ``leaf``'s sharding.
  """
  leaf = jnp.asarray(leaf)
  target = sharding.sort_sharding(leaf, axes)
  rows = [vectors.to_rows(sharding.to_sort_layout(jnp.asarray(x), target),
                          axes) for x in (leaf, *others)]
  out = sharding.map_rows(fn, *rows)
  if not rows_out:
    return out
  return sharding.restore_layout(
      vectors.from_rows(out, axes, jnp.shape(leaf)), leaf, target)


def check_reconnectable(leaf, name: str) -> None:
  """Raises a clear error unless ``leaf`` can be reconnected."""
  dtype = jnp.result_type(leaf)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f'{name}: only floating-point leaves can be reconnected, this one is '
        f'{dtype}; exclude it with `mask`.')
  if jnp.ndim(leaf) < 1:
    raise ValueError(
        f'{name}: a scalar leaf has no weight vector to reconnect; exclude it '
        'with `mask`.')


def sorted_pool(params: PyTree, mask=None, vector_axes=None) -> PyTree:
  """Sorts each weight vector of every masked leaf: the LaPerm pool.

  Args:
    params: the initial parameters, after any sparse or shared-value set-up.
    mask: which leaves are reconnected, as in :func:`laperm_jax.laperm`
      (default :func:`laperm_jax.default_mask`).
    vector_axes: which axes form one weight vector, as in
      :func:`laperm_jax.laperm` (default: every axis but the last).

  Returns:
    A pytree with the structure of params, holding for reconnected leaves an
    array of the leaf's shape and dtype whose weight vectors are sorted
    ascending (in the row-major order of the vector axes), and
    ``optax.MaskedNode()`` elsewhere.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax import sorted_pool
    >>> pool = sorted_pool({'w': jnp.array([[3., 0.], [1., 2.]]),
    ...                     'b': jnp.zeros(2)})
    >>> pool['w']
    Array([[1., 0.],
           [3., 2.]], dtype=float32)
    >>> pool['b']
    MaskedNode()
  """
  flags = masks.resolve_mask(mask, params)
  specs = masks.resolve_vector_axes(vector_axes, params)
  leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
  pool_leaves = []
  for (path, leaf), selected, spec in zip(leaves_with_paths, flags, specs):
    if not selected:
      pool_leaves.append(optax.MaskedNode())
      continue
    name = masks.leaf_name(path)
    check_reconnectable(leaf, name)
    axes = vectors.normalize_vector_axes(spec, jnp.ndim(leaf), name)
    pool_leaves.append(_on_rows(ranking.sort_rows, leaf, axes))
  return jax.tree.unflatten(treedef, pool_leaves)


def _zip_with_pool(params: PyTree, pool: PyTree, vector_axes):
  """(name, param, pool leaf or None, axes spec) per leaf; checks structure."""
  pool_leaves, pool_def = jax.tree.flatten(pool, is_leaf=is_masked)
  leaves_with_paths, params_def = jax.tree_util.tree_flatten_with_path(params)
  if pool_def != params_def:
    pool_leaves_with_paths, _ = jax.tree_util.tree_flatten_with_path(
        pool, is_leaf=is_masked)
    pool_paths = [masks.leaf_name(p) for p, _ in pool_leaves_with_paths]
    param_paths = [masks.leaf_name(p) for p, _ in leaves_with_paths]
    missing = [p for p in pool_paths if p not in param_paths]
    extra = [p for p in param_paths if p not in pool_paths]
    raise ValueError(
        'params do not have the structure the LaPerm pool was built for '
        f'(leaves missing from params: {missing or "none"}; leaves not in '
        f'the pool: {extra or "none"}; params {params_def} vs pool '
        f'{pool_def}). Pass the same tree (same containers, keys and leaves) '
        'to init and update.')
  specs = masks.resolve_vector_axes(vector_axes, params)
  for (path, leaf), pool_leaf, spec in zip(leaves_with_paths, pool_leaves,
                                           specs):
    name = masks.leaf_name(path)
    if is_masked(pool_leaf):
      yield name, leaf, None, spec
      continue
    if jnp.shape(leaf) != jnp.shape(pool_leaf):
      raise ValueError(
          f'{name}: shape {jnp.shape(leaf)} does not match its pool '
          f'{jnp.shape(pool_leaf)}: params changed shape since init.')
    yield name, leaf, pool_leaf, spec


def check_params(params: PyTree, pool: PyTree) -> None:
  """Raises a clear error unless params fit the pool built at init.

  Same tree structure, and for every leaf with a pool the same shape and
  dtype (the pool's values are fixed at init; a sync cannot move them into
  another dtype or shape).

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax.reconnection import check_params
    >>> pool = sorted_pool({'w': jnp.ones((2, 2))})
    >>> check_params({'w': jnp.zeros((2, 2))}, pool)  # fine: returns None
  """
  for name, leaf, pool_leaf, _ in _zip_with_pool(params, pool, None):
    if pool_leaf is not None and (jnp.result_type(leaf) !=
                                  jnp.result_type(pool_leaf)):
      raise TypeError(
          f'{name}: dtype {jnp.result_type(leaf)} does not match its pool '
          f'({jnp.result_type(pool_leaf)}): params changed dtype since init. '
          'Cast params back, or build the state from params of the new dtype.')


def reconnect(params: PyTree, pool: PyTree, *, vector_axes=None) -> PyTree:
  """The exact LaPerm sync: pool values arranged in the rank order of params.

  Within every weight vector of every leaf that has a pool, the entry of rank
  ``r`` (0 = smallest; ties broken by position; ``-0.0 == +0.0``; NaNs rank
  last) receives the pool's ``r``-th smallest value. Leaves without pool come
  back unchanged. The result is bit-exact: sorting a reconnected vector gives
  its pool vector.

  Args:
    params: current parameters (same structure as when the pool was built).
    pool: the pool, e.g. ``state.pool`` of a :class:`LaPermState` or the
      output of :func:`sorted_pool`.
    vector_axes: the same ``vector_axes`` the pool was built with.

  Returns:
    Parameters whose reconnected leaves are exact permutations of their pool,
    with the pool's dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax import reconnect, sorted_pool
    >>> pool = sorted_pool({'w': jnp.array([[1.], [2.], [3.]])})
    >>> reconnect({'w': jnp.array([[0.5], [-7.], [0.1]])}, pool)['w']
    Array([[3.],
           [1.],
           [2.]], dtype=float32)
  """
  new_leaves = []
  for name, leaf, pool_leaf, spec in _zip_with_pool(params, pool, vector_axes):
    if pool_leaf is None:
      new_leaves.append(leaf)
      continue
    axes = vectors.normalize_vector_axes(spec, jnp.ndim(leaf), name)
    new_leaves.append(_on_rows(ranking.reconnect_rows, leaf, axes, pool_leaf))
  return jax.tree.unflatten(jax.tree.structure(params), new_leaves)


def _same_values(a: jax.Array, b: jax.Array) -> jax.Array:
  # Compares order keys, not floats: XLA:CPU float compares treat subnormals
  # as zero, and NaN != NaN. Keys tie exactly where the ranking ties (-0.0
  # and +0.0; any two NaNs).
  try:
    return sort_keys.total_order_key(a) == sort_keys.total_order_key(b)
  except TypeError:  # a float without an integer key (e.g. float8)
    return a == b


def is_permutation_of_pool(params: PyTree, pool: PyTree, *,
                           vector_axes=None) -> PyTree:
  """Whether each reconnected leaf is, per vector, a permutation of its pool.

  Args:
    params: parameters to check.
    pool: the pool (``state.pool``).
    vector_axes: the same ``vector_axes`` the pool was built with.

  Returns:
    A pytree with the pool's structure, holding a boolean scalar array per
    leaf with a pool (True when every weight vector, sorted, equals its pool vector
    value for value; ``-0.0`` matches ``+0.0`` and NaN matches NaN),
    ``optax.MaskedNode()`` elsewhere. ``all(jax.tree.leaves(result))`` is the
    answer for the whole tree.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax import is_permutation_of_pool, sorted_pool
    >>> pool = sorted_pool({'w': jnp.array([[1.], [2.]])})
    >>> bool(is_permutation_of_pool({'w': jnp.array([[2.], [1.]])}, pool)['w'])
    True
  """
  results = []
  for name, leaf, pool_leaf, spec in _zip_with_pool(params, pool, vector_axes):
    if pool_leaf is None:
      results.append(optax.MaskedNode())
      continue
    axes = vectors.normalize_vector_axes(spec, jnp.ndim(leaf), name)
    results.append(_on_rows(
        lambda rows, pool_rows: jnp.all(
            _same_values(ranking.sort_rows(rows), pool_rows), axis=-1),
        leaf, axes, pool_leaf, rows_out=False).all())
  return jax.tree.unflatten(jax.tree.structure(params), results)
