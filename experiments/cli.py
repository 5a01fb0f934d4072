"""Shared command-line plumbing: run flags, presets, clean error exits."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

from experiments import data as data_lib
from experiments import models as models_lib
from experiments import presets as presets_lib
from experiments import training


def flag_of(field: dataclasses.Field) -> str:
  return field.metadata.get('flag', '--' + field.name.replace('_', '-'))


def add_run_args(parser: argparse.ArgumentParser) -> None:
  """The flags that define one training configuration.

  One flag per ``training.RunConfig`` field, with the field's default, help
  and choices (``experiments.training``): the config is the one source.
  """
  parser.add_argument(
      '--preset', default=None,
      help='named configuration (sets defaults; other flags override): ' +
      ', '.join(presets_lib.PRESETS))
  for field in dataclasses.fields(training.RunConfig):
    meta = dict(field.metadata)
    if not meta.pop('cli', True):
      continue
    meta.pop('flag', None)
    kwargs = dict(dest=field.name, default=field.default,
                  help=meta.pop('help'))
    action = meta.pop('action', None)
    if action == 'optional_bool':
      kwargs['action'] = argparse.BooleanOptionalAction
    elif isinstance(field.default, bool):
      kwargs['action'] = 'store_true'
    kwargs.update(meta)
    parser.add_argument(flag_of(field), **kwargs)
  parser.add_argument('--no-progress', action='store_true',
                      help='no progress bar')


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
  """The RunConfig of parsed flags (``overrides`` win)."""
  values = {f.name: getattr(args, f.name)
            for f in dataclasses.fields(training.RunConfig)
            if f.metadata.get('cli', True)}
  if values['density'] is not None:
    density = [float(d) for d in str(values['density']).split(',')]
    values['density'] = density[0] if len(density) == 1 else density
  values['optimizer'] = getattr(args, 'optimizer', 'laperm')
  if values['optimizer'] not in training.OPTIMIZERS:
    values['optimizer'] = 'laperm'  # 'both': the caller overrides it
  values.update(overrides)
  return training.RunConfig(**values)


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
