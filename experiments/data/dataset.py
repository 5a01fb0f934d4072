"""The in-memory dataset, its splits, and the one error every loader raises."""

from __future__ import annotations

import dataclasses

import numpy as np


class DataError(RuntimeError):
  """A dataset is missing or unreadable.

  The message is one line that names the file or the places searched, what is
  wrong, and what to do; the CLI prints it and exits with code 2.

  >>> str(DataError('mnist not found: pass --data-dir DIR'))
  'mnist not found: pass --data-dir DIR'
  """


@dataclasses.dataclass
class Dataset:
  """Train and test images (N, H, W, C) in their raw range, integer labels.

  Attributes:
    name: the dataset's name (``NAME-val`` after :func:`validation_split`).
    x_train: training images, uint8, (N, H, W, C).
    y_train: training labels, int32, (N,).
    x_test: test images, like ``x_train``.
    y_test: test labels, like ``y_train``.
    num_classes: number of classes; labels lie in ``[0, num_classes)``.
    max_value: the largest pixel value: 255 for 8-bit images, 16 for
      scikit-learn's digits.
    source: where the arrays were read from (a path, ``'tfds'``, a package).

  >>> ds = Dataset('toy', np.zeros((4, 2, 2, 1), np.uint8), np.arange(4) % 2,
  ...              np.zeros((2, 2, 2, 1), np.uint8), np.arange(2), 2, 255.0,
  ...              'memory')
  >>> ds.image_shape
  (2, 2, 1)
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  max_value: float
  source: str

  @property
  def image_shape(self) -> tuple[int, ...]:
    """The shape of one image, (H, W, C)."""
    return tuple(self.x_train.shape[1:])

  def subset(self, n_train: int | None, n_test: int | None,
             seed: int = 0) -> Dataset:
    """A stratified random subset (for CPU-sized runs); None keeps all.

    >>> ds = Dataset('toy', np.arange(8).reshape(8, 1, 1, 1), np.arange(8) % 2,
    ...              np.zeros((2, 1, 1, 1)), np.arange(2), 2, 255.0, 'memory')
    >>> ds.subset(4, None).y_train.tolist()
    [0, 0, 1, 1]
    """
    x_train, y_train = stratified_prefix(self.x_train, self.y_train, n_train,
                                         seed)
    x_test, y_test = stratified_prefix(self.x_test, self.y_test, n_test, seed)
    return dataclasses.replace(self, x_train=x_train, y_train=y_train,
                               x_test=x_test, y_test=y_test)


def stratified_prefix(x: np.ndarray, y: np.ndarray, n: int | None,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
  """``n`` rows drawn per class in turn, kept in their original order."""
  if n is None or n >= len(y):
    return x, y
  rng = np.random.default_rng(seed)
  # Shuffle within each class, then interleave the classes by rank, so that
  # any prefix is stratified.
  rank = np.empty(len(y), np.int64)
  for c in np.unique(y):
    members = np.flatnonzero(y == c)
    rank[rng.permutation(members)] = np.arange(len(members))
  order = np.lexsort((y, rank))
  chosen = np.sort(order[:n])
  return x[chosen], y[chosen]


def validation_split(ds: Dataset, fraction: float, seed: int = 12345
                     ) -> Dataset:
  """Train minus a stratified validation set, which replaces the test set.

  For tuning without touching the test set: ``fraction`` of every class of
  the training set (a fixed seed, so every configuration and run seed sees
  the same split) becomes the "test" set of the returned Dataset, named
  ``NAME-val``; the rest is the training set.

  >>> ds = Dataset('toy', np.zeros((10, 1, 1, 1)), np.arange(10) % 2,
  ...              np.zeros((2, 1, 1, 1)), np.arange(2), 2, 255.0, 'memory')
  >>> val = validation_split(ds, 0.2)
  >>> val.name, len(val.y_train), len(val.y_test)
  ('toy-val', 8, 2)
  """
  if not 0.0 < fraction < 1.0:
    raise ValueError(f'--val-split must be in (0, 1), got {fraction}')
  rng = np.random.default_rng(seed)
  is_val = np.zeros(len(ds.y_train), bool)
  for c in np.unique(ds.y_train):
    members = rng.permutation(np.flatnonzero(ds.y_train == c))
    is_val[members[:round(fraction * len(members))]] = True
  return dataclasses.replace(
      ds, name=f'{ds.name}-val', x_train=ds.x_train[~is_val],
      y_train=ds.y_train[~is_val], x_test=ds.x_train[is_val],
      y_test=ds.y_train[is_val])


def fifth_row_split(x: np.ndarray, y: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """mnist5k's and digits' split: every 5th row of the label order is test.

  Returns ``(x_train, y_train, x_test, y_test)``.

  >>> _, _, x_test, _ = fifth_row_split(np.arange(10), np.zeros(10, int))
  >>> x_test.tolist()
  [4, 9]
  """
  order = np.argsort(y, kind='stable')
  is_test = np.zeros(len(y), bool)
  is_test[order[4::5]] = True
  return x[~is_test], y[~is_test], x[is_test], y[is_test]
