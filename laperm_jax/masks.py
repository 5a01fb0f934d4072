"""Which leaves are reconnected, and how per-leaf options reach every leaf.

``mask`` follows ``optax.masked``: a pytree prefix of params whose leaves are
bools (True = reconnected), or a callable of params returning one. The
default, :func:`default_mask`, selects floating-point leaves of rank >= 2:
kernels are reconnected, biases and norm scales are left to the inner
optimizer, as in the paper (``skip_bias``, ``skip_bn``).

Resolution works on flattened leaves with their tree paths, so that every
error names the leaf it is about. Flax NNX ``Variable`` nodes pass through:
they are pytree nodes whose single child is the array.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from laperm_jax import vectors

PyTree = Any
MaskOrFn = PyTree | Callable[[PyTree], PyTree] | None


def default_mask(params: PyTree) -> PyTree:
  """The default LaPerm mask: True for floating-point leaves of rank >= 2.

  Integer, boolean, complex and scalar leaves, and 1-D leaves such as biases
  and batch-norm scales, are not reconnected.

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
  def is_kernel(leaf):
    dtype = jnp.result_type(leaf)
    return bool(jnp.ndim(leaf) >= 2 and jnp.issubdtype(dtype, jnp.floating))
  return jax.tree.map(is_kernel, params)


def leaf_name(path) -> str:
  """A readable name for a tree path, as used in error messages."""
  name = jax.tree_util.keystr(path, simple=True, separator='/')
  return repr(name) if name else 'params (root)'


def broadcast_prefix(prefix: PyTree, params: PyTree, what: str,
                     is_leaf: Callable[[Any], bool] | None = None) -> list:
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


def _as_bool(value, name) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (np.ndarray, jax.Array)) and value.shape == () and (
      value.dtype == bool) and not isinstance(value, jax.core.Tracer):
    return bool(value)
  raise TypeError(
      f'mask entry for {name} must be a Python bool (True = reconnected), got '
      f'{value!r}.')


def resolve_mask(mask: MaskOrFn, params: PyTree) -> list[bool]:
  """Per-leaf booleans (flattening order of params) for a mask or callable."""
  if mask is None:
    mask = default_mask
  mask_tree = mask(params) if callable(mask) else mask
  flags = broadcast_prefix(mask_tree, params, 'mask')
  paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  return [_as_bool(f, leaf_name(p)) for f, p in zip(flags, paths)]


def resolve_vector_axes(vector_axes, params: PyTree) -> list:
  """Per-leaf axes specs (flattening order of params).

  ``vector_axes`` is None, an int or a tuple of ints (for every leaf), a
  pytree prefix of params with such specs as leaves, or a callable of params
  returning such a prefix.
  """
  num_leaves = len(jax.tree.leaves(params))
  if callable(vector_axes):
    vector_axes = vector_axes(params)
  if vectors.is_axes_spec(vector_axes):
    return [vector_axes] * num_leaves
  return broadcast_prefix(vector_axes, params, 'vector_axes',
                          is_leaf=vectors.is_axes_spec)
