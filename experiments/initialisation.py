"""theta_0 of a run: the model's init, then sparse or shared-value set-up.

Also which leaves are reconnected (the mask handed to ``laperm``) and which
are decayed by ``--weight-decay``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from experiments import models as models_lib
from experiments.config import RunConfig
import laperm_jax


class InitialVariables(NamedTuple):
  """The variables a run starts from.

  Attributes:
    params: theta_0, after the sparse or shared-value set-up.
    batch_stats: batch-norm statistics (``{}`` for models without BN).
    mask: per params leaf, whether LaPerm reconnects it.
  """
  params: Any
  batch_stats: Any
  mask: Any


def per_leaf_density(params: Any, density: float | list[float],
                     first_layer: str, mask: Any,
                     first_layer_floor: float | None) -> Any:
  """A full pytree of keep probabilities (1.0 where the mask is False).

  >>> params = {'a': {'kernel': 0}, 'b': {'kernel': 0}}
  >>> mask = {'a': {'kernel': True}, 'b': {'kernel': True}}
  >>> per_leaf_density(params, [0.1, 0.5], 'a', mask, first_layer_floor=0.8)
  {'a': {'kernel': 0.8}, 'b': {'kernel': 0.5}}
  """
  masked_paths = [p for p, f in jax.tree_util.tree_flatten_with_path(mask)[0]
                  if f]
  if isinstance(density, (list, tuple)):
    if len(density) == 1:
      density = density[0]
    elif len(density) != len(masked_paths):
      raise ValueError(f'--density has {len(density)} values but the model '
                       f'has {len(masked_paths)} kernels')
  def leaf_density(path, leaf, flag):
    del leaf
    if not flag:
      return 1.0
    d = (density[masked_paths.index(path)] if isinstance(density, (list, tuple))
         else float(density))
    if first_layer_floor is not None and path[0].key == first_layer:
      d = max(d, first_layer_floor)
    return float(d)
  return jax.tree_util.tree_map_with_path(leaf_density, params, mask)


def initial_variables(cfg: RunConfig, spec: models_lib.ModelSpec, model: Any,
                      image_shape: tuple[int, ...]) -> InitialVariables:
  """theta_0, batch statistics and the reconnection mask of a run.

  The model's init from ``cfg.seed``; with ``--init sparse`` a Bernoulli keep
  mask on every kernel, with ``--init shared`` kernels of values in {0, w}.
  """
  k_init, k_sparse = jax.random.split(jax.random.key(cfg.seed))
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  variables = model.init({'params': k_init}, dummy, train=False)
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})
  kernels = models_lib.kernel_mask(params)
  if cfg.init == 'sparse':
    density = per_leaf_density(params, cfg.density, spec.first_layer, kernels,
                               first_layer_floor=cfg.first_layer_min_density)
    params = laperm_jax.sparse_init(k_sparse, params, density, mask=kernels)
  elif cfg.init == 'shared':
    density = per_leaf_density(params, cfg.density, spec.first_layer, kernels,
                               first_layer_floor=None)
    params = laperm_jax.shared_value_init(k_sparse, params, cfg.shared_value,
                                          density, mask=kernels)
  permute_biases = (spec.permute_biases if cfg.permute_biases is None
                    else cfg.permute_biases)
  mask = models_lib.reconnect_mask(params, permute_biases)
  return InitialVariables(params, batch_stats, mask)


def decay_mask(params: Any, scope: str) -> Any:
  """Which leaves ``--weight-decay`` applies to (``--weight-decay-scope``).

  >>> params = {'dense_0': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)},
  ...           'dense_1': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}}
  >>> decay_mask(params, 'hidden')['dense_1']['kernel']
  False
  """
  kernels = models_lib.kernel_mask(params)
  if scope == 'conv':
    return jax.tree.map(lambda f, p: bool(f and p.ndim == 4), kernels, params)
  if scope == 'hidden':
    last = max(k for k in params if k.startswith('dense'))
    return {name: jax.tree.map(lambda f, name=name: bool(f and name != last),
                               sub)
            for name, sub in kernels.items()}
  return kernels
