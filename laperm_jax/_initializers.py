"""Sparse and shared-value initialisations, applied before the pool is built.

Each selected leaf gets an independent Bernoulli keep mask (its key folded
from ``key`` and the leaf's position in the tree).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from laperm_jax import _layouts
from laperm_jax import _pool
from laperm_jax._typing import Mask
from laperm_jax._typing import PyTree


def _check_density(density: Any, name: str) -> None:
  if isinstance(density, jax.core.Tracer):
    return
  if not 0.0 <= float(density) <= 1.0:
    raise ValueError(f'{name}: density must be in [0, 1], got {density}.')


def _map_selected(key: jax.Array, params: PyTree, density: PyTree,
                  mask: Mask | None,
                  make_leaf: Callable[[jax.Array, jax.Array], jax.Array]
                  ) -> PyTree:
  flags = _layouts.resolve_mask(mask, params)
  densities = _layouts.broadcast_prefix(density, params, 'density')
  leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
  new_leaves = []
  for index, ((path, leaf), selected, leaf_density) in enumerate(
      zip(leaves_with_paths, flags, densities)):
    if not selected:
      new_leaves.append(leaf)
      continue
    name = _layouts.leaf_name(path)
    _pool.check_reconnectable(leaf, name)
    _check_density(leaf_density, name)
    keep = jax.random.bernoulli(jax.random.fold_in(key, index), leaf_density,
                                jnp.shape(leaf))
    new_leaves.append(make_leaf(jnp.asarray(leaf), keep))
  return jax.tree.unflatten(treedef, new_leaves)


def sparse_init(key: jax.Array, params: PyTree, density: PyTree, *,
                mask: Mask = None) -> PyTree:
  """Random sparse initialisation: zero each selected weight w.p. 1 - density.

  Args:
    key: a PRNG key.
    params: initial parameters.
    density: keep probability (fraction of weights kept non-zero), a float in
      [0, 1] or a pytree prefix of params with one per subtree.
    mask: which leaves are pruned (default
      :func:`laperm_jax.default_mask`: kernels only).

  Returns:
    params with every selected leaf multiplied by an independent Bernoulli
    keep mask; other leaves unchanged.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from laperm_jax import sparse_init
    >>> params = {'w': jnp.ones((100, 10)), 'b': jnp.ones(10)}
    >>> sparse = sparse_init(jax.random.key(0), params, density=0.3)
    >>> 0.2 < float(jnp.mean(sparse['w'] != 0)) < 0.4, bool(sparse['b'].all())
    (True, True)
  """
  return _map_selected(key, params, density, mask,
                       lambda leaf, keep: jnp.where(keep, leaf, 0).astype(
                           leaf.dtype))


def shared_value_init(key: jax.Array, params: PyTree, value: float,
                      density: PyTree, *, mask: Mask = None
                      ) -> PyTree:
  """Weight-agnostic initialisation: selected weights in {0, value}.

  Args:
    key: a PRNG key.
    params: initial parameters (only shapes and dtypes of selected leaves
      matter).
    value: the shared weight value ``w``.
    density: probability that a weight is ``value`` rather than 0; a float or
      a pytree prefix of params.
    mask: which leaves are set (default :func:`laperm_jax.default_mask`).

  Returns:
    params with every selected leaf equal to ``value`` times an independent
    Bernoulli keep mask.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from laperm_jax import shared_value_init
    >>> params = {'w': jnp.zeros((784, 10))}
    >>> agnostic = shared_value_init(jax.random.key(0), params, 0.08, 0.6)
    >>> bool(jnp.all((agnostic['w'] == 0) | (agnostic['w'] == jnp.float32(0.08))))
    True
  """
  return _map_selected(key, params, density, mask,
                       lambda leaf, keep: jnp.where(keep, value, 0).astype(
                           leaf.dtype))
