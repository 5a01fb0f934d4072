"""The optimizers a run can train with: one registry, name -> builder.

A builder takes an :class:`OptimizerSetup` (the run's config, learning-rate
schedule, sync period, initial params and reconnection mask) and returns a
:class:`BuiltOptimizer`. A new optimizer is one entry in ``OPTIMIZERS``; the
CLI's ``--optimizer`` choices, the config check and the training loop read
it from there. ``reconnects`` says whether the optimizer's state holds a
``laperm_jax.LaPermState`` (the protocol then evaluates after syncs, on
exact pool values).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import optax

from experiments import models as models_lib
from experiments import sparse_baselines
from experiments import vit
import laperm_jax

if TYPE_CHECKING:
  from experiments.config import RunConfig


class OptimizerSetup(NamedTuple):
  """What a builder gets.

  Attributes:
    config: the run's ``RunConfig``.
    learning_rate: the optax schedule of ``--lr`` and ``--lr-schedule``.
    sync_period: the steps between syncs (``--k``, resolved).
    params: the initial params (theta_0).
    mask: per leaf of ``params``, whether it is reconnected (a kernel, or a
      bias with ``--permute-biases``).
    steps_per_epoch: training steps per epoch.
    total_steps: the run's training steps.
  """
  config: RunConfig
  learning_rate: optax.ScalarOrSchedule
  sync_period: int
  params: Any
  mask: Any
  steps_per_epoch: int
  total_steps: int


class BuiltOptimizer(NamedTuple):
  """An optimizer ready for a run.

  Attributes:
    inner: the inner optimizer (``--inner``), the same for every entry.
    transform: what the run steps with (``inner`` itself for the baseline).
  """
  inner: optax.GradientTransformation
  transform: optax.GradientTransformation


class OptimizerEntry(NamedTuple):
  """One registry entry.

  Attributes:
    build: ``OptimizerSetup -> BuiltOptimizer``.
    reconnects: whether the state holds a ``laperm_jax.LaPermState``.
  """
  build: Callable[[OptimizerSetup], BuiltOptimizer]
  reconnects: bool


INNER_OPTIMIZERS: dict[str, Callable[[optax.ScalarOrSchedule],
                                     optax.GradientTransformation]] = {
    'adam': lambda lr: optax.adam(lr, b1=0.9, b2=0.999, eps=1e-7),
    'sgd': lambda lr: optax.sgd(lr),
    'momentum': lambda lr: optax.sgd(lr, momentum=0.9),
    'lars': lambda lr: optax.lars(lr, trust_coefficient=1.0),
}


def inner_optimizer(setup: OptimizerSetup) -> optax.GradientTransformation:
  """The ``--inner`` optimizer at the run's learning rate.

  >>> from experiments.config import RunConfig
  >>> setup = OptimizerSetup(RunConfig(inner='sgd'), 0.1, 20, {}, {}, 10, 100)
  >>> isinstance(inner_optimizer(setup), optax.GradientTransformation)
  True
  """
  return INNER_OPTIMIZERS[setup.config.inner](setup.learning_rate)


def build_baseline(setup: OptimizerSetup) -> BuiltOptimizer:
  """The inner optimizer alone, on the same pipeline (``--optimizer adam``).

  >>> from experiments.config import RunConfig
  >>> built = build_baseline(OptimizerSetup(RunConfig(), 1e-3, 20, {}, {}, 10,
  ...                                       100))
  >>> built.transform is built.inner
  True
  """
  inner = inner_optimizer(setup)
  return BuiltOptimizer(inner, inner)


def build_laperm(setup: OptimizerSetup) -> BuiltOptimizer:
  """LaPerm wrapping the inner optimizer (``--optimizer laperm``).

  Syncs every ``setup.sync_period`` steps on the leaves of ``setup.mask``,
  with the weight vectors of ``--layout`` (``experiments.vit.LAYOUTS``);
  keeps ``laperm_jax.SyncChanges`` in its state with ``--track-syncs`` and
  for ``--init sparse`` (whose evaluations record the connections each sync
  created and removed).

  >>> import jax.numpy as jnp
  >>> from experiments.config import RunConfig
  >>> params = {'w': jnp.ones((3, 2))}
  >>> built = build_laperm(OptimizerSetup(RunConfig(), 1e-3, 20, params,
  ...                                     {'w': True}, 10, 100))
  >>> type(built.transform.init(params)).__name__
  'LaPermState'
  """
  cfg = setup.config
  inner = inner_optimizer(setup)
  return BuiltOptimizer(inner, laperm_jax.laperm(
      inner, setup.sync_period, mask=setup.mask,
      carry_residual=cfg.carry_residual,
      reset_inner_state=cfg.reset_inner_state,
      track_changes=cfg.track_syncs or cfg.init == 'sparse',
      vector_axes=layout_vector_axes(cfg.layout)))


def layout_vector_axes(layout: str) -> Callable[[Any], Any] | None:
  """``laperm(vector_axes=...)`` for ``--layout``: None for the library's.

  >>> layout_vector_axes('default') is None
  True
  >>> import numpy as np
  >>> params = {'pos_embed': {'embedding': np.zeros((16, 8))}}
  >>> layout_vector_axes('pos_by_column')(params)
  {'pos_embed': {'embedding': (0,)}}
  """
  if layout == 'default':
    return None
  return lambda params: vit.vector_axes(layout, params)


def sparse_training_builder(name: str
                            ) -> Callable[[OptimizerSetup], BuiltOptimizer]:
  """The builder of a sparse-training baseline (``--optimizer masked_adam |
  set | rigl``, ``experiments.sparse_baselines``) around the inner optimizer,
  on the kernels (``experiments.models.kernel_mask``): with ``--init sparse``
  its zeros are the mask.

  >>> import jax.numpy as jnp
  >>> from experiments.config import RunConfig
  >>> build = sparse_training_builder('set')
  >>> built = build(OptimizerSetup(RunConfig(), 1e-3, 20, {}, {}, 10, 100))
  >>> int(built.transform.init({'w': jnp.eye(2)}).topology_updates)
  0
  """
  def build(setup: OptimizerSetup) -> BuiltOptimizer:
    inner = inner_optimizer(setup)
    return BuiltOptimizer(inner, sparse_baselines.from_name(
        name, inner, steps_per_epoch=setup.steps_per_epoch,
        total_steps=setup.total_steps, seed=setup.config.seed,
        selected=models_lib.kernel_mask))
  return build


OPTIMIZERS: dict[str, OptimizerEntry] = {
    'laperm': OptimizerEntry(build_laperm, reconnects=True),
    'adam': OptimizerEntry(build_baseline, reconnects=False),
    **{name: OptimizerEntry(sparse_training_builder(name), reconnects=False)
       for name in sparse_baselines.OPTIMIZERS},
}
