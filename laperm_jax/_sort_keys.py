"""Order-preserving integer keys for floats, and packing them with positions.

XLA sorts one unsigned-integer operand much faster than float keys or several
operands (BENCHMARKS.md), so the fast reconnect paths never sort floats.
They sort integers built here.

The key. A float's bit pattern, read as an unsigned integer, already orders
the non-negative floats correctly (a larger magnitude has a larger exponent
field, or the same exponent and a larger mantissa) and orders the negative
ones backwards, all of them above the positives because the sign bit is the
top bit. So:

* a non-negative float gets its sign bit set: it lands in the upper half,
  in its natural order;
* a negative float has all its bits flipped: it lands in the lower half, and
  the flip reverses the order of magnitudes, so more negative means smaller.

Before that, the two values that need care are canonicalised, in the integer
domain (a float compare could treat subnormals as zero on a machine that
flushes denormals): ``-0.0`` becomes ``+0.0``, so both zeros get the same key
and tie; every NaN, of either sign and any payload, gets the all-ones key,
above ``+inf`` (whose key is ``0b1_11..1_00..0``). The result is the ordering
of :mod:`laperm_jax._ranking`: ascending, ``-0.0 == +0.0``, NaNs last and
equal. Subnormals need nothing: they are ordinary small mantissas.

Packing. A stable argsort of one row is the sort of the pairs
``(key, position)``, compared key first. When the key has ``b`` bits and the
positions need ``p`` bits, ``key << p | position`` is one unsigned integer
whose order is exactly that pair order, and every packed value of a row is
distinct, so any (even unstable) single-operand sort gives the stable
argsort; the position is read back from the low ``p`` bits.
"""

import jax
import jax.numpy as jnp
import numpy as np

_UINT_OF_WIDTH = {16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}


def key_bits(dtype) -> int:
  """Width in bits of the key of a float dtype (its own width).

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax._sort_keys import key_bits
    >>> key_bits(jnp.bfloat16), key_bits(jnp.float32)
    (16, 32)
  """
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating) or dtype.itemsize * 8 not in (
      16, 32, 64):
    raise TypeError(f'no sort key for dtype {dtype}: expected a 16-, 32- or '
                    '64-bit float.')
  return dtype.itemsize * 8


def position_bits(length: int) -> int:
  """Bits needed to hold every position ``0 .. length - 1`` (at least 1).

  Example:
    >>> from laperm_jax._sort_keys import position_bits
    >>> position_bits(784), position_bits(1024), position_bits(1025)
    (10, 10, 11)
  """
  return max(1, (int(length) - 1).bit_length())


def total_order_key(x: jax.Array) -> jax.Array:
  """Maps floats to unsigned integers of the same width, preserving order.

  ``key(a) < key(b)`` exactly when ``a`` ranks before ``b`` in the ordering
  of :mod:`laperm_jax._ranking`, and ``key(a) == key(b)`` exactly when they
  tie (``-0.0`` and ``+0.0``; any two NaNs).

  Args:
    x: a float16, bfloat16, float32 or float64 array.

  Returns:
    An unsigned integer array of ``x``'s shape and bit width.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax._sort_keys import total_order_key
    >>> k = total_order_key(jnp.array([-1., -0., 0., 1., jnp.inf, -jnp.nan]))
    >>> [hex(int(v)) for v in k]
    ['0x407fffff', '0x80000000', '0x80000000', '0xbf800000', '0xff800000', '0xffffffff']
  """
  width = key_bits(x.dtype)
  uint = _UINT_OF_WIDTH[width]
  bits = jax.lax.bitcast_convert_type(x, uint)
  sign = np.array(1 << (width - 1), dtype=uint)
  exponent_all_ones = np.array(
      (1 << (width - 1)) - (1 << jnp.finfo(x.dtype).nmant), dtype=uint)
  magnitude = bits & ~sign
  is_nan = magnitude > exponent_all_ones
  is_zero = magnitude == 0
  is_negative = (bits & sign) != 0
  key = jnp.where(is_negative, ~bits, bits | sign)
  key = jnp.where(is_zero, sign, key)
  return jnp.where(is_nan, np.array(np.iinfo(uint).max, dtype=uint), key)


def packed_width(dtype, length: int) -> int | None:
  """Width of the packed ``key << p | position`` integer: 32, 64 or None.

  None means the key and the positions do not fit in 64 bits together (a
  float64 key): the caller sorts two operands instead.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax._sort_keys import packed_width
    >>> packed_width(jnp.bfloat16, 784), packed_width(jnp.float32, 784)
    (32, 64)
  """
  total = key_bits(dtype) + position_bits(length)
  if total <= 32:
    return 32
  if total <= 64:
    return 64
  return None


def pack_with_positions(high: jax.Array, width: int) -> jax.Array:
  """``high << p | position`` along the last axis, as a ``width``-bit uint.

  ``high`` is any unsigned array (a key, or the bits of a value to carry)
  whose width plus the position bits of the last axis fit in ``width``. The
  caller must have entered ``jax.enable_x64(True)`` when ``width`` is 64.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax._sort_keys import pack_with_positions
    >>> pack_with_positions(jnp.array([[3, 1]], jnp.uint16), 32)
    Array([[6, 3]], dtype=uint32)
  """
  uint = _UINT_OF_WIDTH[width]
  shift = position_bits(high.shape[-1])
  positions = jax.lax.broadcasted_iota(uint, high.shape, high.ndim - 1)
  return (high.astype(uint) << np.array(shift, uint)) | positions


def low_positions(packed: jax.Array) -> jax.Array:
  """The positions packed by :func:`pack_with_positions`, as int32.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax._sort_keys import low_positions
    >>> low_positions(jnp.array([[3, 6]], jnp.uint32))
    Array([[1, 0]], dtype=int32)
  """
  uint = packed.dtype.type
  mask = np.array((1 << position_bits(packed.shape[-1])) - 1, dtype=uint)
  return (packed & mask).astype(jnp.uint32).astype(jnp.int32)
