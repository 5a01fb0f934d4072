"""Shared command-line plumbing: run flags, presets, clean error exits."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

from experiments import augment as augment_lib
from experiments import data as data_lib
from experiments import models as models_lib
from experiments import presets as presets_lib
from experiments import training


def add_run_args(parser: argparse.ArgumentParser) -> None:
  """The flags that define one training configuration."""
  add = parser.add_argument
  add('--preset', default=None,
      help='named configuration (sets defaults; other flags override): ' +
      ', '.join(presets_lib.PRESETS))
  add('--model', default='lenet300', help=', '.join(models_lib.MODELS))
  add('--dataset', default='mnist5k', help=', '.join(data_lib.DATASETS))
  add('--k', default='20',
      help='steps between syncs: an int, or "Nep" for N epochs')
  add('--epochs', type=float, default=20.0)
  add('--batch-size', type=int, default=50)
  add('--lr', type=float, default=1e-3, help='Adam learning rate')
  add('--lr-schedule', default='constant',
      help='constant | exp:R (lr*R^epoch) | step:R:E (lr*R^(epoch//E)) | '
      'resnet (the Keras CIFAR ResNet steps)')
  add('--init', default='default', choices=training.INITS,
      help='default | sparse (Bernoulli keep mask) | shared ({0, w})')
  add('--density', default=None,
      help='fraction of kernel weights kept non-zero; one value or one per '
      'layer, comma-separated (sparse init keeps >= 0.8 in the first layer)')
  add('--first-layer-min-density', type=float, default=0.8,
      help='sparse init: the first layer keeps at least this fraction (the '
      'paper\'s 0.8; 0 prunes it like the others)')
  add('--shared-value', type=float, default=0.08, help='w for --init shared')
  add('--seed', type=int, default=0)
  add('--augment', default='none', choices=tuple(augment_lib.AUGMENTATIONS))
  add('--preprocess', default='scale', choices=training.PREPROCESSING,
      help='scale: x/255 | raw: 0-255 (the paper\'s CIFAR bug) | mean: x/255 '
      'minus the per-pixel train mean')
  add('--weight-decay', type=float, default=0.0,
      help='Keras-style L2 coefficient (loss += wd * sum w^2)')
  add('--weight-decay-scope', default='kernels', choices=training.DECAY_SCOPES)
  add('--permute-biases', default=None, action=argparse.BooleanOptionalAction,
      help='also reconnect conv/dense biases (default: as in the paper)')
  add('--eval-every', type=int, default=None,
      help='steps between evaluations, rounded to a multiple of k '
      '(default: one epoch)')
  add('--max-steps', type=int, default=None, help='cap on training steps')
  add('--train-subset', type=int, default=None,
      help='use a stratified random subset of this many training images')
  add('--test-subset', type=int, default=None)
  add('--data-source', default='auto', choices=data_lib.SOURCES,
      help='auto/local: local files only; tfds: tensorflow_datasets '
      '(may download)')
  add('--data-dir', default=None, help='directory holding the dataset files')
  add('--track-syncs', action='store_true',
      help='evaluate just before and after every sync and count moves')
  add('--scan', default='auto', choices=('auto', 'on', 'off'),
      help='lax.scan over the steps between evaluations (auto: not for conv '
      'models on CPU, where XLA runs convs much slower inside a loop)')
  add('--time-limit', type=float, default=None, metavar='SECONDS',
      help='stop at the first evaluation point after this much training '
      'time (results.json records where: stopped_early)')
  add('--no-progress', action='store_true', help='no progress bar')
  # Issue 12: escaping the fixed point of shared-value {0, w} networks.
  add('--val-split', type=float, default=0.0, metavar='FRACTION',
      help='carve a stratified validation set of this fraction from the '
      'training set (fixed seed) and evaluate on it instead of the test set: '
      'for tuning; the test set is not touched')
  add('--carry-residual', type=float, default=0.0, metavar='BETA',
      help='laperm(carry_residual=BETA): rank candidate + residual at a '
      'sync and keep BETA * (ranked - reconnected); 0 = the paper')
  add('--reset-inner-state', action='store_true',
      help='laperm(reset_inner_state=True): re-initialise Adam at each sync')
  add('--logit-scale', type=float, default=1.0, metavar='S',
      help='train on the cross-entropy of S * logits (a loss temperature: '
      'the network and its accuracy are unchanged; the recorded train loss '
      'is the scaled one)')
  add('--inner', default='adam', choices=training.INNERS,
      help='inner optimizer: adam (paper) | sgd | momentum (SGD, 0.9) | '
      'lars (momentum 0.9, each leaf\'s step scaled to lr*|params|/|grads|); '
      '--lr is its learning rate')


def fail(message: str, code: int = 2) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def parse(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
  """Parses twice: the preset's values become defaults, flags override."""
  args, _ = parser.parse_known_args(argv)
  if args.preset is not None:
    if args.preset not in presets_lib.PRESETS:
      fail(f'unknown preset {args.preset!r}; choose from '
           f'{", ".join(presets_lib.PRESETS)}')
    preset = dict(presets_lib.PRESETS[args.preset])
    if 'density' in preset:
      preset['density'] = ','.join(str(d) for d in preset['density'])
    parser.set_defaults(**preset)
  args = parser.parse_args(argv)
  if args.model not in models_lib.MODELS:
    fail(f'unknown model {args.model!r}; choose from '
         f'{", ".join(models_lib.MODELS)}')
  if args.dataset not in data_lib.DATASETS:
    fail(f'unknown dataset {args.dataset!r}; choose from '
         f'{", ".join(data_lib.DATASETS)}')
  return args


def config_from_args(args, **overrides) -> training.RunConfig:
  density = 1.0
  if args.density is not None:
    density = [float(d) for d in str(args.density).split(',')]
    density = density[0] if len(density) == 1 else density
  elif args.init in ('sparse', 'shared'):
    density = 0.5
  cfg = training.RunConfig(
      model=args.model, dataset=args.dataset,
      optimizer=getattr(args, 'optimizer', 'laperm'),
      k=args.k, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
      lr_schedule=args.lr_schedule, init=args.init, density=density,
      first_layer_min_density=args.first_layer_min_density,
      shared_value=args.shared_value, seed=args.seed, augment=args.augment,
      preprocess=args.preprocess, weight_decay=args.weight_decay,
      weight_decay_scope=args.weight_decay_scope,
      permute_biases=args.permute_biases, eval_every=args.eval_every,
      max_steps=args.max_steps, train_subset=args.train_subset,
      test_subset=args.test_subset, data_source=args.data_source,
      data_dir=args.data_dir, track_syncs=args.track_syncs,
      scan=args.scan, time_limit_s=args.time_limit,
      val_split=getattr(args, 'val_split', 0.0),
      carry_residual=getattr(args, 'carry_residual', 0.0),
      reset_inner_state=getattr(args, 'reset_inner_state', False),
      inner=getattr(args, 'inner', 'adam'),
      logit_scale=getattr(args, 'logit_scale', 1.0))
  return dataclasses.replace(cfg, **overrides)


def load_dataset(cfg: training.RunConfig) -> data_lib.Dataset:
  """Loads the data or exits with the one-line how-to-get-it message."""
  try:
    return data_lib.load(cfg.dataset, cfg.data_source, cfg.data_dir)
  except data_lib.DataError as e:
    fail(str(e))


def make_pipeline(cfg, dataset):
  try:
    return training.Pipeline(cfg, dataset)
  except ValueError as e:
    fail(str(e))


def to_jsonable(obj):
  if isinstance(obj, dict):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, (np.bool_,)):
    return bool(obj)
  if isinstance(obj, np.integer):
    return int(obj)
  if isinstance(obj, np.floating):
    return float(obj)
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  return obj


def write_json(path, obj) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(to_jsonable(obj), f, indent=1)
    f.write('\n')


def pct(x) -> str:
  return 'n/a' if x is None else f'{100 * x:.2f}'
