"""The pool of initial values, and the exact sync of a params tree against it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from laperm_jax import _layouts
from laperm_jax import _ranking
from laperm_jax import _rows
from laperm_jax import _sort_keys
from laperm_jax._typing import Mask
from laperm_jax._typing import PyTree
from laperm_jax._typing import VectorAxes


@dataclasses.dataclass(frozen=True, eq=False)
class PoolLeaf:
  """The pool of one reconnected leaf: a pytree node, its axes static.

  Attributes:
    values: the leaf's initial values sorted ascending within each weight
      vector, an array of the param's shape, dtype and sharding (its only
      pytree child, so ``jax.tree.map`` over a state maps it).
    vector_axes: the axes of the param that form one weight vector, a tuple
      of non-negative ints (pytree metadata: part of the tree structure, so
      the pool cannot be used with other axes).

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax import sorted_pool
    >>> pool = sorted_pool({'weight': jnp.array([[3., 0.], [1., 2.]])})
    >>> pool['weight'].vector_axes, pool['weight'].values
    ((1,), Array([[0., 3.],
           [1., 2.]], dtype=float32))
  """
  values: jax.Array
  vector_axes: tuple[int, ...]


jax.tree_util.register_dataclass(PoolLeaf, data_fields=['values'],
                                 meta_fields=['vector_axes'])


def is_masked(x: Any) -> bool:
  """True for the placeholder of a leaf without pool."""
  return isinstance(x, optax.MaskedNode) or (type(x) is tuple and not x)


def is_pool_entry(x: Any) -> bool:
  """True for a pool entry: a :class:`PoolLeaf` or ``optax.MaskedNode``."""
  return isinstance(x, (PoolLeaf, optax.MaskedNode))


def _is_entry_or_empty_tuple(x: Any) -> bool:
  # Flax NNX hands back a MaskedNode inside an optimizer state as `()`.
  return is_pool_entry(x) or (type(x) is tuple and not x)


def check_reconnectable(leaf: jax.typing.ArrayLike, name: str) -> None:
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


def sorted_pool(params: PyTree, *, mask: Mask = None,
                vector_axes: VectorAxes = None) -> PyTree:
  """Sorts each weight vector of every masked leaf: the LaPerm pool.

  Args:
    params: the initial parameters, after any sparse or shared-value set-up.
    mask: which leaves are reconnected, as in :func:`laperm_jax.laperm`
      (default :func:`laperm_jax.default_mask`).
    vector_axes: which axes form one weight vector, as in
      :func:`laperm_jax.laperm` (default
      :func:`laperm_jax.default_vector_axes`).

  Returns:
    A pytree with the structure of params: a :class:`PoolLeaf` per
    reconnected leaf (its vectors sorted ascending, in the row-major order of
    its vector axes), ``optax.MaskedNode()`` elsewhere.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax import sorted_pool
    >>> pool = sorted_pool({'kernel': jnp.array([[3., 0.], [1., 2.]]),
    ...                     'bias': jnp.zeros(2)})
    >>> pool['kernel'].values
    Array([[1., 0.],
           [3., 2.]], dtype=float32)
    >>> pool['bias']
    MaskedNode()
  """
  flags = _layouts.resolve_mask(mask, params)
  specs = _layouts.resolve_vector_axes(vector_axes, params)
  leaves_with_paths = jax.tree_util.tree_flatten_with_path(params)[0]
  # Flax NNX Variables stay inside the PoolLeaf (PoolLeaf(Param(values))):
  # then nnx.Optimizer keeps the PoolLeaf a container of its state.
  nodes, treedef = jax.tree_util.tree_flatten(params,
                                              is_leaf=_layouts.is_variable)
  entries = []
  for (path, leaf), node, selected, spec in zip(leaves_with_paths, nodes,
                                                flags, specs):
    if not selected:
      entries.append(optax.MaskedNode())
      continue
    name = _layouts.leaf_name(path)
    check_reconnectable(leaf, name)
    axes = _layouts.normalize_vector_axes(spec, jnp.ndim(leaf), name)
    values = _rows.on_rows(_ranking.sort_rows, leaf, axes,
                           trace_key=_ranking.trace_key())
    entries.append(PoolLeaf(jax.tree.map(lambda _, v=values: v, node), axes))
  return jax.tree.unflatten(treedef, entries)


def _path_names(leaves_with_paths: list[tuple[Any, Any]]) -> list[str]:
  return [_layouts.leaf_name(_layouts.strip_variable(path))
          for path, _ in leaves_with_paths]


def zip_checked(params: PyTree, pool: PyTree,
                vector_axes: VectorAxes = None
                ) -> Iterator[tuple[str, Any, PoolLeaf | None]]:
  """(name, param, PoolLeaf or None) per leaf of params, checking the fit.

  Raises where params and pool differ in structure or shape, where the pool
  holds something else than pool entries, and where ``vector_axes`` (when
  given) differ from the pool's. A ``PoolLeaf`` holding a Flax NNX
  ``Variable`` comes back holding its array.

  Params and pool match leaf by leaf, by tree path; containers may differ
  where they wrap single leaves (Flax NNX ``Param`` in the params, the
  optimizer's ``OptVariable`` in the pool).
  """
  param_items = jax.tree_util.tree_flatten_with_path(params)[0]
  param_names = _path_names(param_items)
  for is_entry in (_is_entry_or_empty_tuple, is_pool_entry):
    pool_items = jax.tree_util.tree_flatten_with_path(pool,
                                                      is_leaf=is_entry)[0]
    pool_names = _path_names(pool_items)
    if param_names == pool_names:
      break
  else:
    missing = [p for p in pool_names if p not in param_names]
    extra = [p for p in param_names if p not in pool_names]
    raise ValueError(
        'params do not have the structure the LaPerm pool was built for '
        f'(leaves missing from params: {missing or "none"}; leaves not in '
        f'the pool: {extra or "none"}'
        + ('; same leaves in another order' if not (missing or extra) else '')
        + '). Pass the tree that init got (same containers, keys and leaves); '
        'for a Flax NNX model, `nnx.state(model, nnx.Param)`.')
  given = (None if vector_axes is None else
           _layouts.given_vector_axes(vector_axes, params))
  for index, ((path, leaf), (_, entry)) in enumerate(zip(param_items,
                                                         pool_items)):
    name = _layouts.leaf_name(_layouts.strip_variable(path))
    if is_masked(entry):
      yield name, leaf, None
      continue
    if not isinstance(entry, PoolLeaf):
      raise TypeError(
          f'{name}: the pool holds a {type(entry).__name__} here, not a '
          'laperm_jax.PoolLeaf. Pass `state.pool` or the output of '
          '`sorted_pool` (restore checkpoints against '
          '`jax.eval_shape(tx.init, params)`).')
    values: Any = entry.values
    if _layouts.is_variable(values):
      entry = PoolLeaf(values.get_value(), entry.vector_axes)
    if jnp.shape(leaf) != jnp.shape(entry.values):
      raise ValueError(
          f'{name}: shape {jnp.shape(leaf)} does not match its pool '
          f'{jnp.shape(entry.values)}: params changed shape since init.')
    if given is not None and given[index] is not None:
      axes = _layouts.normalize_vector_axes(given[index], jnp.ndim(leaf), name)
      if axes != entry.vector_axes:
        raise ValueError(
            f'{name}: vector_axes {axes} differ from the axes the pool was '
            f'built with, {entry.vector_axes}. The pool records its axes: '
            'leave `vector_axes` out.')
    yield name, leaf, entry


def check_param_dtypes(params: PyTree, pool: PyTree) -> None:
  """Raises a clear error unless each reconnected leaf has its pool's dtype.

  Structure and shapes are checked on the way (:func:`zip_checked`).
  """
  for name, leaf, entry in zip_checked(params, pool):
    if entry is not None and (jnp.result_type(leaf) !=
                              jnp.result_type(entry.values)):
      raise TypeError(
          f'{name}: dtype {jnp.result_type(leaf)} does not match its pool '
          f'({jnp.result_type(entry.values)}): params changed dtype since '
          'init. Cast params back, or build the state from params of the new '
          'dtype.')


def reconnect(params: PyTree, pool: PyTree, *,
              vector_axes: VectorAxes = None,
              variant: str | None = None) -> PyTree:
  """The exact LaPerm sync: pool values arranged in the rank order of params.

  Within every weight vector of every leaf that has a pool, the entry of rank
  ``r`` (0 = smallest; ties broken by position; ``-0.0 == +0.0``; NaNs rank
  last) receives the pool's ``r``-th smallest value. Leaves without pool come
  back unchanged. The result is bit-exact: sorting a reconnected vector gives
  its pool vector. The vector axes are the pool's own.

  Args:
    params: current parameters (the tree the pool was built from).
    pool: the pool, e.g. ``state.pool`` of a :class:`LaPermState` or the
      output of :func:`sorted_pool`.
    vector_axes: optional; when given, it must agree with the pool's axes
      (an error names the leaf where it does not).
    variant: how XLA is asked to sort, one of ``'packed'``,
      ``'packed_cosort'``, ``'keyed'``, ``'keyed_cosort'``, or ``'auto'``
      (the measured choice for the platform compiled for). All give the
      same bits; only the speed differs. None (default): the environment
      variable ``LAPERM_JAX_RECONNECT_VARIANT`` if set, else ``'auto'``.

  Returns:
    Parameters whose reconnected leaves are exact permutations of their pool,
    with the pool's dtype. For a state inside a composition of optax
    transformations, :func:`exact_params` finds the pool by itself.

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
  for _, leaf, entry in zip_checked(params, pool, vector_axes):
    new_leaves.append(leaf if entry is None else
                      reconnect_leaf(entry, leaf, variant))
  return jax.tree.unflatten(jax.tree.structure(params), new_leaves)


def reconnect_leaf(entry: PoolLeaf, leaf: jax.typing.ArrayLike,
                   variant: str | None = None) -> jax.Array:
  """One leaf's pool values in the rank order of ``leaf``, per vector."""
  return _rows.on_rows(_reconnect_rows_with(variant), leaf, entry.vector_axes,
                       entry.values, trace_key=_ranking.trace_key(variant))


@functools.cache
def _reconnect_rows_with(variant: str | None
                         ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """:func:`laperm_jax._ranking.reconnect_rows` with ``variant``, the same
  function at every call (:func:`laperm_jax._rows.on_rows` keeps its
  compiled program)."""
  def reconnect_rows(current: jax.Array, pool: jax.Array) -> jax.Array:
    return _ranking.reconnect_rows(current, pool, variant=variant)
  return reconnect_rows


def pool_like(params: PyTree, pool: PyTree) -> PyTree:
  """The pool as a tree of params' structure, checked against params.

  A :class:`PoolLeaf` (holding an array) where a leaf is reconnected,
  ``optax.MaskedNode()`` elsewhere: per-leaf work is then a ``jax.tree.map``
  over it and params-shaped trees, ``is_leaf=is_pool_entry``.
  """
  entries = [optax.MaskedNode() if entry is None else entry
             for _, _, entry in zip_checked(params, pool)]
  return jax.tree.unflatten(jax.tree.structure(params), entries)


def same_values(a: jax.Array, b: jax.Array) -> jax.Array:
  """Elementwise: whether ``a`` and ``b`` tie in the ranking's order."""
  # Order keys, not floats: XLA:CPU float compares treat subnormals as zero,
  # and NaN != NaN. Keys tie exactly where the ranking ties.
  try:
    return _sort_keys.total_order_key(a) == _sort_keys.total_order_key(b)
  except TypeError:  # a float without an integer key (e.g. float8)
    return a == b


def _ascending(rows: jax.Array) -> jax.Array:
  try:
    keys = _sort_keys.total_order_key(rows)
  except TypeError:
    keys = rows
  return jnp.all(keys[:, :-1] <= keys[:, 1:], axis=-1)


def is_permutation_of_pool(params: PyTree, pool: PyTree, *,
                           vector_axes: VectorAxes = None) -> PyTree:
  """Whether each reconnected leaf is, per vector, a permutation of its pool.

  Args:
    params: parameters to check.
    pool: the pool (``state.pool``); its vector axes are used.
    vector_axes: optional; when given, it must agree with the pool's axes.

  Returns:
    A pytree with the params' structure: a boolean scalar array per leaf with
    a pool (True when every weight vector, sorted, equals its pool vector
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
  for _, leaf, entry in zip_checked(params, pool, vector_axes):
    if entry is None:
      results.append(optax.MaskedNode())
      continue
    results.append(_rows.on_rows(
        _rows_match_pool, leaf, entry.vector_axes, entry.values,
        rows_out=False, trace_key=_ranking.trace_key()).all())
  return jax.tree.unflatten(jax.tree.structure(params), results)


def _rows_match_pool(rows: jax.Array, pool_rows: jax.Array) -> jax.Array:
  """Per row: whether the row, sorted, is its pool row value for value."""
  return jnp.all(same_values(_ranking.sort_rows(rows), pool_rows), axis=-1)


def is_sorted(entry: PoolLeaf) -> jax.Array:
  """A boolean scalar: every vector of a pool leaf ascends (no gather)."""
  return _rows.on_rows(_ascending, entry.values, entry.vector_axes,
                       rows_out=False).all()
