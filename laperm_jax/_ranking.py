"""Array-level reconnection of rows: the one place where LaPerm sorts.

Everything here works on 2-D arrays ``(num_vectors, vector_length)``, one
weight vector per row, with the ordering of the README (ascending, ``-0.0 ==
+0.0``, NaNs last, ties by position).

Variants. A reconnect is an exact stable argsort of each row (the *order*)
followed by placing the sorted pool in that order. Every variant returns the
same bits; they differ in how XLA is asked to do it:

* ``'packed'``: one single-operand sort of ``key << p | position`` packed in a
  uint32 (16-bit floats, rows up to 65536) or a uint64 (traced under
  ``jax.enable_x64(True)``; nothing 64-bit leaves the function), then a
  scatter ``new[i, order[i]] = pool[i]``. See :mod:`laperm_jax._sort_keys`.
* ``'packed_cosort'``: the same order, then a second packed single-operand
  sort of ``order << w | pool_bits`` instead of the scatter (sorting by the
  order puts each pool value where it belongs).
* ``'keyed'``: the portable path: a two-operand stable sort ``(key,
  position)`` (what ``jnp.argsort(key, stable=True)`` does) with operands as
  wide as the float (no 64-bit integers for 32-bit floats), then the
  scatter.
* ``'keyed_cosort'``: ``'keyed'`` with a two-operand co-sort ``(order,
  pool)`` instead of the scatter: no scatter or gather.

Why integer keys even on the portable path: ``jnp.argsort`` of floats is
not exact on XLA:CPU, which treats subnormals as zero in float compares
(denormals-are-zero), so ``jnp.argsort(jnp.array([1e-40, 0., -1e-41]))`` ties
all three. The integer key never compares floats.

Choosing one. By default the variant is chosen at lowering time for the
platform the computation is compiled for (``jax.lax.platform_dependent``),
from :data:`VARIANT_BY_PLATFORM`, by measurement where we could measure
(BENCHMARKS.md; ``benchmarks/reconnect.py``, ``benchmarks/gpu.py``):
``'packed'`` on CPU (large leaves run in row blocks, see
``CPU_BLOCK_ELEMENTS``) and ``'keyed_cosort'`` on CUDA, where ``'packed'``'s
64-bit keys cost more. ROCm follows CUDA and TPU gets ``'keyed_cosort'`` too
(no 64-bit integer emulation, no scatter or gather), both reasoned, not
measured; ``'keyed'`` elsewhere. To force one, pass ``variant=`` to the
functions here (publicly: ``laperm(..., reconnect_variant=...)`` and
``reconnect(..., variant=...)``), or set the environment variable
``LAPERM_JAX_RECONNECT_VARIANT`` (``'auto'`` or unset means the default). An
explicit argument wins over the variable. The variable is read when a
function is traced and ``jit`` caches traces: set it before the first call
of a jitted function.
"""

from collections.abc import Callable
import contextlib
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from laperm_jax import _sort_keys as sort_keys

ENV_VARIABLE = 'LAPERM_JAX_RECONNECT_VARIANT'

VARIANTS = ('packed', 'packed_cosort', 'keyed', 'keyed_cosort')

VARIANT_BY_PLATFORM = {
    'cpu': 'packed',
    'cuda': 'keyed_cosort',
    'rocm': 'keyed_cosort',
    'tpu': 'keyed_cosort',
}
"""The automatic choice per lowering platform; others get ``'keyed'``."""


def _x64_if(needed: bool):
  # Only ever switch 64-bit types on: a user running with x64 must keep it.
  return jax.enable_x64(True) if needed else contextlib.nullcontext()


def _positions(shape: tuple[int, ...]) -> jax.Array:
  return jax.lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1)


# ---------------------------------------------------------------- orders --
def _order_packed(rows: jax.Array) -> jax.Array:
  width = sort_keys.packed_width(rows.dtype, rows.shape[-1])
  if width is None:  # float64: the key alone fills 64 bits.
    return _order_keyed(rows)
  with _x64_if(width == 64):
    packed = sort_keys.pack_with_positions(sort_keys.total_order_key(rows),
                                           width)
    # Packed values are distinct, so stability is moot; XLA:CPU's stable
    # sort (a merge sort) is the faster of the two there.
    return sort_keys.low_positions(jax.lax.sort(packed, dimension=1))


def _order_keyed(rows: jax.Array) -> jax.Array:
  with _x64_if(rows.dtype.itemsize == 8):
    key = sort_keys.total_order_key(rows)
    _, order = jax.lax.sort((key, _positions(rows.shape)), dimension=1,
                            is_stable=True, num_keys=1)
  return order


def _order_float_compare(rows: jax.Array) -> jax.Array:
  return jnp.argsort(rows, axis=-1, stable=True).astype(jnp.int32)


# ------------------------------------------------------------ placements --
# The row of every scattered value is a batching dimension of the scatter,
# not an index: no row-index array is built, and a partitioner sees that
# rows are independent (a kernel sharded by rows scatters locally).
_SCATTER_ROWS = jax.lax.ScatterDimensionNumbers(
    update_window_dims=(), inserted_window_dims=(1,),
    scatter_dims_to_operand_dims=(1,), operand_batching_dims=(0,),
    scatter_indices_batching_dims=(0,))


def _place_scatter(order: jax.Array, sorted_pool: jax.Array) -> jax.Array:
  return jax.lax.scatter(
      jnp.zeros_like(sorted_pool), order[..., None], sorted_pool,
      _SCATTER_ROWS, indices_are_sorted=False, unique_indices=True,
      mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _place_cosort_packed(order: jax.Array, sorted_pool: jax.Array
                         ) -> jax.Array:
  # Sorting the pairs (order[r], pool[r]) by order puts pool[r] at position
  # order[r]. The order is a permutation, so packing it above the pool's bits
  # gives distinct integers whose single-operand sort is that pair sort.
  value_bits = sorted_pool.dtype.itemsize * 8
  width = sort_keys.packed_width(sorted_pool.dtype, order.shape[-1])
  if width is None:
    return _place_cosort_keyed(order, sorted_pool)
  with _x64_if(width == 64):
    uint = jnp.uint32 if width == 32 else jnp.uint64
    value_uint = {16: jnp.uint16, 32: jnp.uint32}[value_bits]
    bits = jax.lax.bitcast_convert_type(sorted_pool, value_uint).astype(uint)
    packed = (order.astype(uint) << np.array(value_bits, uint)) | bits
    placed = jax.lax.sort(packed, dimension=1).astype(value_uint)
    return jax.lax.bitcast_convert_type(placed, sorted_pool.dtype)


def _place_cosort_keyed(order: jax.Array, sorted_pool: jax.Array
                        ) -> jax.Array:
  _, placed = jax.lax.sort((order, sorted_pool), dimension=1, num_keys=1)
  return placed


_ORDER: dict[str, Callable[[jax.Array], jax.Array]] = {
    'packed': _order_packed,
    'packed_cosort': _order_packed,
    'keyed': _order_keyed,
    'keyed_cosort': _order_keyed,
    'float_compare': _order_float_compare,
}
_PLACE: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    'packed': _place_scatter,
    'packed_cosort': _place_cosort_packed,
    'keyed': _place_scatter,
    'keyed_cosort': _place_cosort_keyed,
    'float_compare': _place_scatter,
}


# ------------------------------------------------------------- selection --
def forced_variant(variant: str | None = None) -> str | None:
  """The variant forced by ``variant`` or the environment, else None (auto).

  Example:
    >>> from laperm_jax._ranking import forced_variant
    >>> forced_variant('keyed')
    'keyed'
  """
  if variant is None:
    variant = os.environ.get(ENV_VARIABLE, 'auto') or 'auto'
  if variant == 'auto':
    return None
  if variant not in VARIANTS:
    raise ValueError(
        f'unknown reconnect variant {variant!r} (from the argument or '
        f'{ENV_VARIABLE}); choose one of {VARIANTS} or "auto".')
  return variant


def trace_key(variant: str | None = None) -> tuple[str | None, int]:
  """What a trace of the row kernels reads besides its arguments: the
  forced variant (``variant`` or the environment) and the CPU block size.

  Example:
    >>> from laperm_jax._ranking import trace_key
    >>> trace_key('keyed')[0]
    'keyed'
  """
  return forced_variant(variant), CPU_BLOCK_ELEMENTS


def _by_platform(fn: Callable[[str], Callable[..., jax.Array]],
                 variant: str | None, *args: jax.Array) -> jax.Array:
  """Runs ``fn(name)(*args)`` for the forced or per-platform variant."""
  forced = forced_variant(variant)
  if not all(_has_key(a.dtype) for a in args):
    # float8 and other exotic floats have no integer key here; they keep
    # jnp.argsort's float compares (and its subnormal caveat above).
    return fn('float_compare')(*args)
  by_platform = dict(VARIANT_BY_PLATFORM)
  if forced is not None:
    by_platform = {platform: forced for platform in by_platform}
  # One callable per distinct choice: platform_dependent traces each
  # distinct branch once and shares it between platforms.
  # Sorted: the same trace order in every process (stable cache keys).
  choices = {name: fn(name) for name in sorted({*by_platform.values(),
                                                forced or 'keyed'})}
  branches = {platform: choices[name] for platform, name in by_platform.items()}
  branches['cpu'] = _in_row_blocks(branches['cpu'], CPU_BLOCK_ELEMENTS)
  return jax.lax.platform_dependent(*args, default=choices[forced or 'keyed'],
                                    **branches)


# ---------------------------------------------------------------- blocks --
# On XLA:CPU the elementwise passes around the sort (key, pack, unpack,
# scatter) stream whole arrays through memory, and a 64-bit packed array is
# twice the size of the int32 floor's. For large leaves, running the whole
# reconnect block by block of rows keeps each block's temporaries in cache
# (BENCHMARKS.md has the measurement); below one block nothing changes.
CPU_BLOCK_ELEMENTS = 2**18
"""On CPU, leaves larger than this many entries are processed in row blocks
of about this size (a divisor of the number of rows)."""


def block_rows(num_vectors: int, vector_length: int,
               block_elements: int) -> int:
  """Rows per block: the largest divisor of ``num_vectors`` near the target.

  Returns ``num_vectors`` (one block) when the leaf fits in one block or no
  divisor lies within a factor of 4 below ``block_elements // length``.

  Example:
    >>> from laperm_jax._ranking import block_rows
    >>> block_rows(4096, 4096, 2**18), block_rows(300, 784, 2**18)
    (64, 300)
  """
  target = max(1, block_elements // max(vector_length, 1))
  if num_vectors <= target:
    return num_vectors
  divisors: set[int] = set()
  for d in range(1, math.isqrt(num_vectors) + 1):
    if num_vectors % d == 0:
      divisors.update((d, num_vectors // d))
  best = max(d for d in divisors if d <= target)
  return best if 4 * best >= target else num_vectors


def _in_row_blocks(fn: Callable[..., jax.Array], block_elements: int
                   ) -> Callable[..., jax.Array]:
  """``fn`` on rows, applied block by block of rows when the rows are big.

  Block ``b`` holds the rows ``b, b + num_blocks, b + 2 * num_blocks, ...``:
  strided, so that the loop runs along a minor factor of the rows axis and a
  partitioner that splits the rows (a kernel sharded over its output axis on
  an Auto mesh) finds every block's rows on their own devices. The result is
  written in place, block by block, over the last argument of the output's
  dtype (the pool rows, a temporary of the transposes to rows): no
  zero-filled output and no stacking copy.
  """
  def blocked(*args: jax.Array) -> jax.Array:
    num_vectors, length = args[0].shape
    rows = block_rows(num_vectors, length, block_elements)
    if rows == num_vectors:
      return fn(*args)
    num_blocks = num_vectors // rows
    grouped = [a.reshape(rows, num_blocks, length) for a in args]
    out_dtype = jax.eval_shape(
        fn, *(jax.ShapeDtypeStruct((rows, length), a.dtype)
              for a in args)).dtype
    carried = max((i for i, a in enumerate(args) if a.dtype == out_dtype),
                  default=None)
    init = (grouped[carried] if carried is not None else
            jnp.zeros((rows, num_blocks, length), out_dtype))

    def body(block, out):
      inputs = [jax.lax.dynamic_index_in_dim(
          out if i == carried else g, block, axis=1, keepdims=False)
                for i, g in enumerate(grouped)]
      return jax.lax.dynamic_update_index_in_dim(out, fn(*inputs), block,
                                                 axis=1)

    out = jax.lax.fori_loop(0, num_blocks, body, init)
    return out.reshape(num_vectors, length)
  return blocked


def _has_key(dtype) -> bool:
  try:
    sort_keys.key_bits(dtype)
  except TypeError:
    return False
  return True


def _check_rows(rows: jax.Array) -> None:
  if rows.ndim != 2:
    raise ValueError(f'expected 2-D rows, got shape {rows.shape}.')


# ---------------------------------------------------------------- public --
def stable_argsort_rows(rows: jax.Array, *, variant: str | None = None
                        ) -> jax.Array:
  """Stable int32 argsort of each row (ties by position, NaNs last).

  Args:
    rows: float array of shape ``(num_vectors, vector_length)``.
    variant: force one of :data:`VARIANTS`; None chooses per platform.

  Returns:
    int32 array of ``rows``'s shape: row ``i`` lists the positions of
    ``rows[i]`` from smallest to largest value.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax._ranking import stable_argsort_rows
    >>> stable_argsort_rows(jnp.array([[0., jnp.nan, -1., -0.]]))
    Array([[2, 0, 3, 1]], dtype=int32)
  """
  _check_rows(rows)
  return _by_platform(lambda name: _ORDER[name], variant, rows)


def sort_rows(rows: jax.Array, *, variant: str | None = None) -> jax.Array:
  """Sorts each row ascending: how the pool of initial values is stored.

  Stable, so ``-0.0`` and ``+0.0`` (and NaNs) keep their relative order; the
  values themselves, bit for bit, are only moved.

  Args:
    rows: float array of shape ``(num_vectors, vector_length)``.
    variant: force one of :data:`VARIANTS`; None chooses per platform.

  Returns:
    The rows sorted ascending along the last axis.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax._ranking import sort_rows
    >>> sort_rows(jnp.array([[3., 1., 2.]]))
    Array([[1., 2., 3.]], dtype=float32)
  """
  order = stable_argsort_rows(rows, variant=variant)
  return jnp.take_along_axis(rows, order, axis=-1)


def reconnect_rows(current: jax.Array, sorted_pool: jax.Array, *,
                   variant: str | None = None) -> jax.Array:
  """Gives each row its pool values in the rank order of its current values.

  The entry of rank ``r`` in ``current[i]`` (0 = smallest, ties broken by
  position) receives ``sorted_pool[i, r]``: ``new[i, order[i]] =
  sorted_pool[i]`` with ``order`` the stable argsort of ``current``. One
  sort per row for the order, no argsort of the argsort. Every variant gives
  the same bits.

  Args:
    current: float array of shape ``(num_vectors, vector_length)``: the
      weights whose ranks decide the arrangement.
    sorted_pool: float array of the same shape, each row sorted ascending.
    variant: force one of :data:`VARIANTS`; None chooses per platform.

  Returns:
    An array of ``sorted_pool``'s dtype and ``current``'s shape whose rows are
    permutations of the pool rows, in the rank order of ``current``.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax._ranking import reconnect_rows
    >>> reconnect_rows(jnp.array([[0.3, -2.0, 0.1]]),
    ...                jnp.array([[10., 20., 30.]]))
    Array([[30., 10., 20.]], dtype=float32)
  """
  if current.shape != sorted_pool.shape:
    raise ValueError(
        f'current {current.shape} and sorted_pool {sorted_pool.shape} must '
        'have the same shape.')
  _check_rows(current)
  _check_rows(sorted_pool)

  def variant_fn(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    return lambda c, p: _PLACE[name](_ORDER[name](c), p)

  return _by_platform(variant_fn, variant, current, sorted_pool)
