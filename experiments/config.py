"""The configuration of one training run: ``RunConfig`` and what it implies.

Every field is one CLI flag of ``python -m experiments.train``
(``experiments.cli`` derives the parser from this class), so the defaults
here are the default run's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import optax

from experiments import augment as augment_lib
from experiments import data as data_lib
from experiments import models as models_lib
from experiments import optimizers
from experiments import vit

PREPROCESSING = ('scale', 'raw', 'mean')
INITS = ('default', 'sparse', 'shared')
DECAY_SCOPES = ('kernels', 'conv', 'hidden')
INNERS = tuple(optimizers.INNER_OPTIMIZERS)


def _flag(default: Any, help_text: str, **argparse_kwargs: Any) -> Any:
  """A RunConfig field and its CLI flag (``experiments.cli`` derives them)."""
  return dataclasses.field(default=default,
                           metadata=dict(help=help_text, **argparse_kwargs))


@dataclasses.dataclass
class RunConfig:
  """Everything that defines a run; recorded in results.json.

  The defaults are the default run (``python -m experiments.train``) and the
  CLI's defaults: each field is one flag (``--batch-size`` for
  ``batch_size``), derived from this class by ``experiments.cli``.
  """
  model: str = _flag('lenet300', ', '.join(models_lib.MODELS))
  dataset: str = _flag('mnist5k', ', '.join(data_lib.DATASETS))
  optimizer: str = _flag('laperm', ' | '.join(optimizers.OPTIMIZERS),
                         cli=False)
  k: str | int | None = _flag(
      '20', 'steps between syncs: an int, or "Nep" for N epochs')
  epochs: float = _flag(20.0, 'training epochs', type=float)
  batch_size: int = _flag(50, 'batch size', type=int)
  lr: float = _flag(1e-3, 'Adam learning rate', type=float)
  lr_schedule: str = _flag(
      'constant', 'constant | exp:R (lr*R^epoch) | step:R:E '
      '(lr*R^(epoch//E)) | resnet (the Keras CIFAR ResNet steps)')
  init: str = _flag('default', 'default | sparse (Bernoulli keep mask) | '
                    'shared ({0, w})', choices=INITS)
  density: Any = _flag(  # noqa: RUF009 (a dataclasses.field)
      None, 'fraction of kernel weights kept non-zero; one value or one per '
      'layer, comma-separated (default 1, or 0.5 with --init sparse/shared)',
      type=str)
  first_layer_min_density: float = _flag(
      0.8, 'sparse init: the first layer keeps at least this fraction (the '
      "paper's 0.8; 0 prunes it like the others)", type=float)
  shared_value: float = _flag(0.08, 'w for --init shared', type=float)
  seed: int = _flag(0, 'seed of theta_0, data order and dropout', type=int)
  augment: str = _flag('none', 'augmentation',
                       choices=tuple(augment_lib.AUGMENTATIONS))
  preprocess: str = _flag(
      'scale', "scale: x/255 | raw: 0-255 (the paper's CIFAR bug) | mean: "
      'x/255 minus the per-pixel train mean', choices=PREPROCESSING)
  weight_decay: float = _flag(
      0.0, 'Keras-style L2 coefficient (loss += wd * sum w^2)', type=float)
  weight_decay_scope: str = _flag('kernels', 'which kernels L2 applies to',
                                  choices=DECAY_SCOPES)
  permute_biases: bool | None = _flag(
      None, 'also reconnect conv/dense biases (default: as in the paper)',
      action='optional_bool')
  eval_every: int | None = _flag(
      None, 'steps between evaluations, rounded to a multiple of k '
      '(default: one epoch)', type=int)
  max_steps: int | None = _flag(None, 'cap on training steps', type=int)
  train_subset: int | None = _flag(
      None, 'use a stratified random subset of this many training images',
      type=int)
  test_subset: int | None = _flag(None, 'the same for the test set', type=int)
  data_source: str = _flag(
      'auto', 'auto/local: local files only; tfds: tensorflow_datasets (may '
      'download)', choices=data_lib.SOURCES)
  data_dir: str | None = _flag(None, 'directory holding the dataset files',
                               type=str)
  track_syncs: bool = _flag(
      False, 'evaluate just before and after every sync and count moves')
  eval_batch_size: int = _flag(1000, 'test images per evaluation batch',
                               type=int)
  time_limit_s: float | None = _flag(
      None, 'stop at the first evaluation point after this much training '
      'time (results.json records where: stopped_early)', type=float,
      flag='--time-limit', metavar='SECONDS')
  val_split: float = _flag(
      0.0, 'carve a stratified validation set of this fraction from the '
      'training set (fixed seed) and evaluate on it instead of the test set: '
      'for tuning; the test set is not touched', type=float,
      metavar='FRACTION')
  carry_residual: float = _flag(
      0.0, 'laperm(carry_residual=BETA): rank candidate + residual at a sync '
      'and keep BETA * (ranked - reconnected); 0 = the paper', type=float,
      metavar='BETA')
  reset_inner_state: bool = _flag(
      False, 'laperm(reset_inner_state=True): re-initialise the inner '
      'optimizer at each sync')
  logit_scale: float = _flag(
      1.0, 'train on the cross-entropy of S * logits (a loss temperature: the '
      'network and its accuracy are unchanged; the recorded train loss is the '
      'scaled one)', type=float, metavar='S')
  inner: str = _flag(
      'adam', "inner optimizer: adam (paper) | sgd | momentum (SGD, 0.9) | "
      "lars (momentum 0.9, each leaf's step scaled to lr*|params|/|grads|); "
      '--lr is its learning rate', choices=INNERS)
  layout: str = _flag(
      'default', 'weight-vector layout passed as vector_axes (experiments.vit.'
      'LAYOUTS; default: the library\'s)', choices=tuple(vit.LAYOUTS))
  scan: str = _flag(
      'auto', 'lax.scan over the steps between evaluations (auto: not for '
      'conv models on CPU, where XLA runs convs ~20x slower inside a loop; '
      'those use one jitted step per call)', choices=('auto', 'on', 'off'))

  def __post_init__(self) -> None:
    if self.density is None:
      self.density = 0.5 if self.init in ('sparse', 'shared') else 1.0


def parse_k(k: str | int | None, steps_per_epoch: int) -> int:
  """The sync period in steps: '250' -> 250, '2ep' -> 2 epochs, None -> 1 epoch.

  >>> parse_k('2ep', steps_per_epoch=80), parse_k('20', 80), parse_k(None, 80)
  (160, 20, 80)
  """
  if k is None:
    return steps_per_epoch
  if isinstance(k, str) and k.endswith('ep'):
    return max(1, round(float(k[:-2]) * steps_per_epoch))
  value = int(k)
  if value < 1:
    raise ValueError(f'k must be >= 1, got {k}')
  return value


def make_schedule(cfg: RunConfig, steps_per_epoch: int) -> optax.Schedule:
  """The per-epoch Keras learning-rate schedules, as optax step schedules.

  >>> schedule = make_schedule(RunConfig(lr=1.0, lr_schedule='exp:0.5'), 10)
  >>> float(schedule(25))
  0.25
  """
  base, spec = cfg.lr, cfg.lr_schedule
  epoch_of = lambda count: count // steps_per_epoch
  if spec == 'constant':
    return optax.constant_schedule(base)
  if spec.startswith('exp:'):
    rate = float(spec.split(':')[1])
    return lambda count: base * rate ** epoch_of(count)
  if spec.startswith('step:'):
    _, rate, every = spec.split(':')
    return lambda count: base * float(rate) ** (epoch_of(count) // int(every))
  if spec == 'resnet':
    def resnet(count):
      e = epoch_of(count)
      factor = jnp.where(e > 180, 5e-4, jnp.where(e > 160, 1e-3, jnp.where(
          e > 120, 1e-2, jnp.where(e > 80, 1e-1, 1.0))))
      return base * factor
    return resnet
  raise ValueError(f'unknown --lr-schedule {spec!r}: use constant, exp:R, '
                   'step:R:E or resnet')
