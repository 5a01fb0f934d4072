"""The data side of a run: the dataset on the device, batches, step counts."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import augment as augment_lib
from experiments import config as config_lib
from experiments import data as data_lib
from experiments import initialisation
from experiments import models as models_lib
from experiments import optimizers
from experiments.config import RunConfig


def check_choices(cfg: RunConfig) -> None:
  """Raises ``ValueError`` naming the first config field with an unknown value.

  >>> check_choices(RunConfig(optimizer='rmsprop'))
  Traceback (most recent call last):
  ...
  ValueError: unknown optimizer 'rmsprop'; choose from ('laperm', 'adam', ...)
  """
  if cfg.model not in models_lib.MODELS:
    raise ValueError(f'unknown model {cfg.model!r}')
  for value, allowed, what in (
      (cfg.optimizer, tuple(optimizers.OPTIMIZERS), 'optimizer'),
      (cfg.init, config_lib.INITS, 'init'),
      (cfg.inner, config_lib.INNERS, 'inner'),
      (cfg.preprocess, config_lib.PREPROCESSING, 'preprocess'),
      (cfg.weight_decay_scope, config_lib.DECAY_SCOPES, 'weight_decay_scope'),
      (cfg.augment, tuple(augment_lib.AUGMENTATIONS), 'augment')):
    if value not in allowed:
      raise ValueError(f'unknown {what} {value!r}; choose from {allowed}')


class Pipeline:
  """The data, model and step counts of one configuration.

  The training images stay compact (uint8) on the device; ``preprocess``
  scales them inside the jitted steps. The test set is padded to whole
  evaluation batches, with ``valid`` marking the real images.
  """

  def __init__(self, cfg: RunConfig, dataset: data_lib.Dataset | None = None):
    check_choices(cfg)
    self.cfg = cfg
    if dataset is None:
      dataset = data_lib.load(cfg.dataset, cfg.data_source, cfg.data_dir)
    self.dataset = dataset.subset(cfg.train_subset, cfg.test_subset, cfg.seed)
    if cfg.val_split:
      self.dataset = data_lib.validation_split(self.dataset, cfg.val_split)
    ds = self.dataset
    self.spec = models_lib.MODELS[cfg.model]
    if min(ds.image_shape[:2]) < self.spec.min_hw:
      raise ValueError(f'{cfg.model} needs images of at least '
                       f'{self.spec.min_hw}x{self.spec.min_hw}; {ds.name} is '
                       f'{ds.image_shape[0]}x{ds.image_shape[1]}')
    self.model = self.spec.build(ds.num_classes)
    self.optimizer = optimizers.OPTIMIZERS[cfg.optimizer]
    self._count_steps(cfg, len(ds.y_train))
    self.augmentation = augment_lib.AUGMENTATIONS[cfg.augment]
    self.x_train = jnp.asarray(ds.x_train)
    self.y_train = jnp.asarray(ds.y_train)
    self.pixel_mean = jnp.asarray(
        ds.x_train.astype(np.float32).mean(axis=0) / ds.max_value)
    self._place_test_set(ds, cfg.eval_batch_size)
    self._epoch_orders: dict[int, np.ndarray] = {}

  def _count_steps(self, cfg: RunConfig, n_train: int) -> None:
    self.steps_per_epoch = n_train // cfg.batch_size
    if self.steps_per_epoch < 1:
      raise ValueError('batch size larger than the training set')
    self.total_steps = max(1, round(cfg.epochs * self.steps_per_epoch))
    if cfg.max_steps is not None:
      self.total_steps = min(self.total_steps, cfg.max_steps)
    self.k = config_lib.parse_k(cfg.k, self.steps_per_epoch)
    eval_every = cfg.eval_every or self.steps_per_epoch
    self.eval_interval = self.k * max(1, round(eval_every / self.k))

  def _place_test_set(self, ds: data_lib.Dataset, batch: int) -> None:
    n_test = len(ds.y_test)
    n_batches = math.ceil(n_test / batch)
    pad = n_batches * batch - n_test
    x_test = np.concatenate([ds.x_test, np.zeros((pad,) + ds.image_shape,
                                                 ds.x_test.dtype)])
    y_test = np.concatenate([ds.y_test, np.zeros(pad, np.int32)])
    valid = np.arange(n_batches * batch) < n_test
    self.x_test = jnp.asarray(x_test.reshape((n_batches, batch) +
                                             ds.image_shape))
    self.y_test = jnp.asarray(y_test.reshape(n_batches, batch))
    self.valid = jnp.asarray(valid.reshape(n_batches, batch))
    self.n_test = n_test

  @property
  def reconnects(self) -> bool:
    """Whether the run's optimizer syncs (its state holds a LaPermState)."""
    return self.optimizer.reconnects

  def preprocess(self, x: jax.Array) -> jax.Array:
    """Images as the model sees them (``--preprocess``), float32."""
    x = x.astype(jnp.float32)
    if self.cfg.preprocess == 'raw':
      return x
    x = x / self.dataset.max_value
    if self.cfg.preprocess == 'mean':
      x = x - self.pixel_mean
    return x

  def init_variables(self) -> initialisation.InitialVariables:
    """theta_0, batch statistics and the reconnection mask."""
    return initialisation.initial_variables(self.cfg, self.spec, self.model,
                                            self.dataset.image_shape)

  def decay_mask(self, params: Any) -> Any:
    return initialisation.decay_mask(params, self.cfg.weight_decay_scope)

  def make_optimizer(self, params: Any,
                     mask: Any) -> optimizers.BuiltOptimizer:
    """The run's optimizer, from the registry (``--optimizer``)."""
    setup = optimizers.OptimizerSetup(
        self.cfg, config_lib.make_schedule(self.cfg, self.steps_per_epoch),
        self.k, params, mask, self.steps_per_epoch, self.total_steps)
    return self.optimizer.build(setup)

  def batch_indices(self, start: int, stop: int) -> np.ndarray:
    """Row indices of steps start+1 .. stop (0-based step start).

    The order of epoch e is a permutation seeded with (seed, e).
    """
    spe, bs = self.steps_per_epoch, self.cfg.batch_size
    out = []
    for step in range(start, stop):
      epoch, pos = divmod(step, spe)
      if epoch not in self._epoch_orders:
        self._epoch_orders = {epoch: np.random.default_rng(
            [self.cfg.seed, epoch]).permutation(len(self.dataset.y_train))}
      out.append(self._epoch_orders[epoch][pos * bs:(pos + 1) * bs])
    return np.stack(out).astype(np.int32)
