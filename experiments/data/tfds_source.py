"""Datasets through tensorflow_datasets, only on request (``source='tfds'``)."""

from __future__ import annotations

import numpy as np

from experiments.data import formats
from experiments.data.dataset import DataError
from experiments.data.dataset import Dataset

TFDS_NAMES = {'fashion_mnist': 'fashion_mnist', 'mnist': 'mnist',
              'cifar10': 'cifar10'}


def load_tfds(name: str, data_dir: str | None = None) -> Dataset:
  """Dataset ``name`` through tensorflow_datasets (which may download).

  Every failure, a missing package or an unreachable network included, is a
  one-line :class:`DataError`.
  """
  tfds_name = TFDS_NAMES.get(name)
  if tfds_name is None:
    raise DataError(f'{name} is not loaded from tfds; use --data-source local')
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError(
        f'--data-source tfds needs tensorflow-datasets: pip install '
        f'tensorflow-datasets tensorflow-cpu (or use local files for {name})'
    ) from e
  try:
    train, test = tfds.as_numpy(tfds.load(
        tfds_name, split=['train', 'test'], batch_size=-1, as_supervised=True,
        data_dir=data_dir))
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f'tfds could not load {tfds_name}: {type(e).__name__}: '
                    f'{formats.one_line(e)}') from e
  return Dataset(name, np.asarray(train[0], np.uint8),
                 np.asarray(train[1], np.int32), np.asarray(test[0], np.uint8),
                 np.asarray(test[1], np.int32), 10, 255.0, 'tfds')
