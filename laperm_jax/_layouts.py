"""Which leaves are reconnected and which axes form their weight vectors.

The defaults read each leaf's name (the last key of its tree path) and rank,
and Equinox layer types, as the README's layout table states. Options given
by the user (a value, a pytree prefix of params, or a callable of params) are
resolved here to one entry per leaf, in flattening order, so that every error
can name the leaf's path.
"""

from __future__ import annotations

from collections.abc import Callable
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from laperm_jax._typing import Mask
from laperm_jax._typing import PyTree
from laperm_jax._typing import VectorAxes

Axes = tuple[int, ...]

# Flax attention in-projections: kernel (in, heads, head_dim). One weight
# vector per head, its (in, head_dim) slice: a head's logits are dot products
# in its own head_dim space, so the head's projection is one unit (RESULTS.md,
# "Attention: a Vision Transformer", compares it with the fan-in axis 0 alone).
# A kernel of another rank keeps the fan-in axis 0.
_ATTENTION_IN = ('query', 'key', 'value')
_PER_HEAD = (0, 2)
# Names of leaves that are never reconnected by default, whatever their rank.
_NOT_WEIGHTS = ('bias', 'scale')


class _AllButFirst:
  """Axes spec: every axis but the first ((out, in, *kernel) layouts)."""


class _Ambiguous:
  """Axes spec of a leaf whose layout cannot be told: an error if used."""

  def __init__(self, message: str):
    self.message = message


ALL_BUT_FIRST = _AllButFirst()


def leaf_name(path: tuple[Any, ...]) -> str:
  """A readable name for a tree path, as used in error messages."""
  name = jax.tree_util.keystr(path, simple=True, separator='/')
  return repr(name) if name else 'params (root)'


def _key_name(entry: Any) -> str:
  for attribute in ('key', 'name'):
    value = getattr(entry, attribute, None)
    if isinstance(value, str):
      return value
  return ''


def strip_variable(path: tuple[Any, ...]) -> tuple[Any, ...]:
  """``path`` without the ``.value`` of a Flax NNX ``Variable`` at its end."""
  if (len(path) > 1 and isinstance(path[-1], jax.tree_util.GetAttrKey)
      and path[-1].name == 'value'):
    return tuple(path[:-1])
  return tuple(path)


def _names(path: tuple[Any, ...]) -> list[str]:
  """The string keys of a path, without NNX ``Variable`` wrappers."""
  return [_key_name(entry) for entry in strip_variable(path)]


def _equinox_norm_types() -> tuple[type, ...]:
  eqx = sys.modules.get('equinox')
  if eqx is None:
    return ()
  return tuple(getattr(eqx.nn, name) for name in
               ('LayerNorm', 'GroupNorm', 'RMSNorm', 'BatchNorm')
               if hasattr(eqx.nn, name))


def is_variable(x: Any) -> bool:
  """True for a Flax NNX ``Variable`` (a pytree node around one array)."""
  nnx = sys.modules.get('flax.nnx')
  return nnx is not None and isinstance(x, nnx.Variable)


def _is_floating(leaf: Any) -> bool:
  return jnp.issubdtype(jnp.result_type(leaf), jnp.floating)


def _default_axes(path: tuple[Any, ...], leaf: Any) -> Any:
  """The default spec of a leaf: None (all but last), a marker, or axes."""
  names = _names(path)
  name = names[-1] if names else ''
  parent = names[-2] if len(names) > 1 else ''
  ndim = jnp.ndim(leaf)
  if name == 'weight':  # PyTorch-style (out, in, *kernel); Equinox
    return ALL_BUT_FIRST
  if name == 'embedding':  # Flax Embed (vocab, features): one vector a token
    return (-1,)
  if name == 'kernel' and ndim >= 3:
    if parent in _ATTENTION_IN:
      return _PER_HEAD if ndim == 3 else (0,)
    if 'conv' in parent.lower() or parent == 'out':
      return None
    return _Ambiguous(
        f"{leaf_name(path)}: a rank-{ndim} 'kernel' is a Conv kernel "
        '(*window, in, out) or a DenseGeneral kernel (*in, *features), and '
        "its module name ('conv...', 'query'/'key'/'value', 'out') does not "
        'say which. Pass `vector_axes` for it: e.g. a callable returning '
        'a tree with (0,) at this leaf (fan-in axes of a DenseGeneral) and '
        'None (the default) elsewhere.')
  return None


def _default_selected(path: tuple[Any, ...], leaf: Any) -> bool:
  if jnp.ndim(leaf) < 2 or not _is_floating(leaf):
    return False
  names = _names(path)
  return not (names and names[-1] in _NOT_WEIGHTS)


def _per_leaf(fn: Callable[[Any, Any], Any], params: PyTree) -> list[Any]:
  """``fn(path, leaf)`` per leaf; leaves of Equinox norm layers give False."""
  norm_types = _equinox_norm_types()
  out = []
  for path, node in jax.tree_util.tree_flatten_with_path(
      params, is_leaf=lambda x: isinstance(x, norm_types))[0]:
    if norm_types and isinstance(node, norm_types):
      out.extend([False] * len(jax.tree.leaves(node)))
    else:
      out.append(fn(path, node))
  return out


def default_mask(params: PyTree) -> PyTree:
  """The default LaPerm mask: weight matrices and kernels, by name and rank.

  True for floating-point leaves of rank >= 2, except leaves named ``bias``
  or ``scale`` (an Equinox Conv bias is ``(out, 1, 1)``) and the parameters
  of Equinox norm layers. Biases, norm scales, integer and scalar leaves are
  trained by the inner optimizer alone, as in the paper.

  Args:
    params: a pytree of arrays (or of ``jax.ShapeDtypeStruct``).

  Returns:
    A pytree of Python bools with the structure of ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax import default_mask
    >>> default_mask({'kernel': jnp.zeros((3, 2)), 'bias': jnp.zeros(2)})
    {'bias': False, 'kernel': True}
  """
  flags = _per_leaf(_default_selected, params)
  return jax.tree.unflatten(jax.tree.structure(params), flags)


def default_vector_axes(params: PyTree) -> PyTree:
  """The weight-vector axes LaPerm uses for each leaf when none are given.

  One vector per output unit: every axis but the last for Flax/Keras/Haiku
  layouts (``kernel (in, out)``, ``(*window, in, out)``, and any leaf of
  another name), every axis but the first for leaves named ``weight``
  (PyTorch/Equinox ``(out, in, *window)``), the last axis for Flax
  ``embedding`` tables (one vector per token, as an Equinox
  ``Embedding.weight`` row). One vector per head for the ``query``, ``key``
  and ``value`` kernels ``(in, heads, head_dim)`` of Flax attention: the
  head's ``(in, head_dim)`` slice, axes ``(0, 2)``. A rank >= 3 ``kernel``
  whose module name does not tell a Conv from a DenseGeneral makes
  :func:`laperm` raise when it is reconnected without ``vector_axes``.

  Args:
    params: a pytree of arrays (or of ``jax.ShapeDtypeStruct``).

  Returns:
    A pytree with the structure of ``params``: a tuple of non-negative axes
    per leaf of rank >= 1, None for scalars and ambiguous kernels.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax import default_vector_axes
    >>> default_vector_axes({'Conv_0': {'kernel': jnp.zeros((2, 3, 4, 8))},
    ...                      'weight': jnp.zeros((8, 4, 3, 3))})
    {'Conv_0': {'kernel': (0, 1, 2)}, 'weight': (1, 2, 3)}
    >>> default_vector_axes({'query': {'kernel': jnp.zeros((8, 2, 4))}})
    {'query': {'kernel': (0, 2)}}
  """
  def axes(path, leaf):
    spec = _default_axes(path, leaf)
    if jnp.ndim(leaf) < 1 or isinstance(spec, _Ambiguous):
      return None
    return normalize_vector_axes(spec, jnp.ndim(leaf), leaf_name(path))
  leaves = [axes(p, x) for p, x in
            jax.tree_util.tree_flatten_with_path(params)[0]]
  return jax.tree.unflatten(jax.tree.structure(params), leaves)


def broadcast_prefix(prefix: PyTree, params: PyTree, what: str,
                     is_leaf: Callable[[Any], bool] | None = None
                     ) -> list[Any]:
  """One entry of ``prefix`` per leaf of ``params``, in flattening order."""
  out = []
  def extend(value, subtree):
    out.extend([value] * len(jax.tree.leaves(subtree)))
  try:
    jax.tree.map(extend, prefix, params, is_leaf=is_leaf)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f'{what} must be a pytree prefix of params (same containers and keys, '
        f'with one value per leaf or per subtree). Structure of params: '
        f'{jax.tree.structure(params)}; details: {e}') from None
  return out


def _as_bool(value: Any, name: str) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (np.ndarray, jax.Array)) and value.shape == () and (
      value.dtype == bool) and not isinstance(value, jax.core.Tracer):
    return bool(value)
  raise TypeError(
      f'mask entry for {name} must be a Python bool (True = reconnected), got '
      f'{value!r}.')


def resolve_mask(mask: Mask | None, params: PyTree) -> list[bool]:
  """Per-leaf booleans (flattening order of params) for a mask or callable."""
  if mask is None:
    return _per_leaf(_default_selected, params)
  mask_tree = mask(params) if callable(mask) else mask
  flags = broadcast_prefix(mask_tree, params, 'mask')
  paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  return [_as_bool(f, leaf_name(p)) for f, p in zip(flags, paths)]


def _is_int(x: Any) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool,
                                                                  np.bool_))


def is_axes_spec(x: Any) -> bool:
  """One leaf's axes: None (the default), an int or a tuple of ints."""
  if x is None or _is_int(x):
    return True
  return isinstance(x, tuple) and all(_is_int(a) for a in x)


def _reject_int_lists(prefix: PyTree) -> None:
  lists = jax.tree_util.tree_flatten_with_path(
      prefix, is_leaf=lambda x: isinstance(x, list) and bool(x) and all(
          _is_int(a) for a in x))[0]
  for path, node in lists:
    if isinstance(node, list):
      where = f' at {leaf_name(path)}' if path else ''
      raise TypeError(
          f'vector_axes{where} is a list of ints, {node!r}: give one leaf\'s '
          f'axes as a tuple, {tuple(node)!r}; a per-leaf prefix of a list in '
          'params as a list of tuples or None, e.g. '
          f'{[(a,) for a in node]!r}.')


def given_vector_axes(vector_axes: VectorAxes | None, params: PyTree
                      ) -> list[Any]:
  """Per-leaf axes specs as given (flattening order); None where not given."""
  if callable(vector_axes):
    vector_axes = vector_axes(params)
  _reject_int_lists(vector_axes)
  if is_axes_spec(vector_axes):
    return [vector_axes] * len(jax.tree.leaves(params))
  return broadcast_prefix(vector_axes, params, 'vector_axes',
                          is_leaf=is_axes_spec)


def resolve_vector_axes(vector_axes: VectorAxes | None, params: PyTree
                        ) -> list[Any]:
  """Per-leaf axes specs (flattening order of params), defaults filled in."""
  given = given_vector_axes(vector_axes, params)
  defaults = [_default_axes(p, x) for p, x in
              jax.tree_util.tree_flatten_with_path(params)[0]]
  return [d if g is None else g for g, d in zip(given, defaults)]


def normalize_vector_axes(spec: Any, ndim: int, name: str = 'leaf') -> Axes:
  """Resolves one leaf's axes spec against its rank ``ndim``.

  ``None`` means every axis but the last (a 1-D leaf is one vector); an int
  or a tuple of ints (negative values count from the end) names the axes, in
  the order of each vector's entries. Returns distinct non-negative axes.
  """
  if ndim < 1:
    raise ValueError(
        f'{name}: a scalar leaf has no weight vector to reconnect; exclude it '
        'with `mask`.')
  if isinstance(spec, _Ambiguous):
    # A value (which axes) is missing, not a wrong type.
    raise ValueError(spec.message)  # noqa: TRY004
  if spec is None or (spec is ALL_BUT_FIRST and ndim == 1):
    return (0,) if ndim == 1 else tuple(range(ndim - 1))
  if spec is ALL_BUT_FIRST:
    return tuple(range(1, ndim))
  if not is_axes_spec(spec):
    raise TypeError(
        f'{name}: vector_axes must be None, an int or a tuple of ints, got '
        f'{spec!r}.')
  axes = (int(spec),) if _is_int(spec) else tuple(int(a) for a in spec)
  if not axes:
    raise ValueError(f'{name}: vector_axes must name at least one axis.')
  for a in axes:
    if not -ndim <= a < ndim:
      raise ValueError(
          f'{name}: vector axis {a} is out of range for a leaf of rank {ndim}.')
  axes = tuple(a % ndim for a in axes)
  if len(set(axes)) != len(axes):
    raise ValueError(f'{name}: vector_axes {spec!r} repeats an axis.')
  return axes
