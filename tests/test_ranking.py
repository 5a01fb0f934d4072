"""Every reconnect variant equals the NumPy reference, bit for bit.

Correctness only (speed lives in ``benchmarks/``). The values mix random
normals with the cases that break naive sorts: ties (zeros of both signs,
repeated values), subnormals, infinities and NaNs of both signs. A few fixed
shapes (including empty and length-1 rows) keep the number of compiles low.
"""

import functools

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from laperm_jax import _ranking as ranking
from laperm_jax import _sort_keys as sort_keys
from tests import reference

VARIANTS = ranking.VARIANTS + ('auto',)
SHAPES = ((0, 4), (3, 0), (1, 1), (3, 17), (2, 130))
DTYPES = (np.float32, ml_dtypes.bfloat16, np.float16)
SPECIALS = (0.0, -0.0, 1.0, -1.0, 1e-40, -1e-40, 1e-45, -3e-39, 6e-8,
            -6e-8, np.inf, -np.inf, np.nan, -np.nan, 65504.0, 3.0e38)

# The number of examples comes from the hypothesis profile (conftest.py).
SETTINGS = hypothesis.settings(
    deadline=None, derandomize=True, database=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow])


def uint_view(x) -> np.ndarray:
  x = np.asarray(x)
  return x.view({1: np.uint8, 2: np.uint16, 4: np.uint32,
                 8: np.uint64}[x.dtype.itemsize])


def assert_same_bits(actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.dtype == expected.dtype
  assert actual.shape == expected.shape
  np.testing.assert_array_equal(uint_view(actual), uint_view(expected))


@st.composite
def rows_of(draw, shape, dtype):
  """Rows with many ties and special values, as ``dtype``."""
  size = int(np.prod(shape))
  seed = draw(st.integers(0, 2**32 - 1))
  special_share = draw(st.sampled_from((0.0, 0.3, 0.9)))
  rng = np.random.default_rng(seed)
  values = rng.standard_normal(size) * 10.0 ** rng.integers(-3, 3)
  if draw(st.booleans()):  # few distinct values: many ties
    values = np.round(values)
  specials = rng.choice(np.array(SPECIALS), size)
  values = np.where(rng.random(size) < special_share, specials, values)
  with np.errstate(over='ignore'):
    return values.astype(dtype).reshape(shape)


@functools.cache
def jitted(name: str, variant: str):
  fn = getattr(ranking, name)
  return jax.jit(functools.partial(fn, variant=variant))


def reference_order(rows: np.ndarray) -> np.ndarray:
  return np.argsort(rows.astype(np.float64), axis=-1, kind='stable')


@pytest.mark.parametrize('dtype', DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize('shape', SHAPES, ids=str)
@pytest.mark.parametrize('variant', VARIANTS)
def test_reconnect_rows_matches_reference(variant, shape, dtype):

  @SETTINGS
  @hypothesis.given(rows_of(shape, dtype), rows_of(shape, dtype))
  def check(current, initial):
    if current.size == 0:  # the reference cannot reshape empty rows
      pool = expected = initial
    else:
      pool = reference.pool_of(initial, axes=(1,))
      expected = reference.reconnect(current, pool, axes=(1,))
    actual = jitted('reconnect_rows', variant)(current, pool)
    assert_same_bits(actual, expected)

  check()


@pytest.mark.parametrize('dtype', DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize('variant', VARIANTS)
def test_order_and_sort_match_numpy(variant, dtype):

  @SETTINGS
  @hypothesis.given(rows_of((3, 17), dtype))
  def check(rows):
    expected_order = reference_order(rows)
    order = jitted('stable_argsort_rows', variant)(rows)
    assert order.dtype == jnp.int32
    np.testing.assert_array_equal(order, expected_order)
    assert_same_bits(jitted('sort_rows', variant)(rows),
                     np.take_along_axis(rows, expected_order, axis=-1))

  check()


@pytest.mark.parametrize('variant', VARIANTS)
def test_float64_with_x64(variant):
  rng = np.random.default_rng(0)
  current = rng.choice(np.array(SPECIALS + (5e-324, -5e-324, 2.0)), (3, 40))
  initial = rng.standard_normal((3, 40))
  pool = reference.pool_of(initial, axes=(1,))
  with jax.enable_x64(True):
    actual = jax.jit(functools.partial(ranking.reconnect_rows,
                                       variant=variant))(current, pool)
    assert actual.dtype == np.float64
  assert_same_bits(actual, reference.reconnect(current, pool, axes=(1,)))


@pytest.mark.parametrize('variant', VARIANTS)
def test_long_rows_need_wide_packing(variant):
  # 2**16 + 1 positions: a bfloat16 key no longer fits with them in 32 bits.
  rng = np.random.default_rng(1)
  shape = (1, 2**16 + 1)
  current = np.round(rng.standard_normal(shape) * 4).astype(ml_dtypes.bfloat16)
  pool = np.sort(rng.standard_normal(shape).astype(ml_dtypes.bfloat16), -1)
  assert sort_keys.packed_width(current.dtype, shape[1]) == 64
  actual = jitted('reconnect_rows', variant)(current, pool)
  assert_same_bits(actual, reference.reconnect(current, pool, axes=(1,)))


def test_exotic_float_falls_back_to_float_compares():
  current = np.array([[0.5, -1.0, 2.0, 0.0]], ml_dtypes.float8_e4m3fn)
  pool = np.array([[1.0, 2.0, 3.0, 4.0]], ml_dtypes.float8_e4m3fn)
  actual = ranking.reconnect_rows(current, pool)
  assert_same_bits(actual, np.array([[3., 1., 4., 2.]], current.dtype))


@pytest.mark.parametrize('dtype', DTYPES + (np.float64,),
                         ids=lambda d: np.dtype(d).name)
def test_total_order_key_is_monotone_and_ties_exactly(dtype):
  with np.errstate(over='ignore'):
    values = np.array(SPECIALS + (-2.5, 2.5, 7.0, -7.0)).astype(dtype)
  with jax.enable_x64(True):
    keys = np.asarray(sort_keys.total_order_key(jnp.asarray(values)))
  wide = values.astype(np.float64)
  for a in range(len(values)):
    for b in range(len(values)):
      same = (wide[a] == wide[b]) or (np.isnan(wide[a]) and np.isnan(wide[b]))
      before = (wide[a] < wide[b]) or (np.isnan(wide[b]) and
                                       not np.isnan(wide[a]))
      assert (keys[a] == keys[b]) == same, (values[a], values[b])
      assert (keys[a] < keys[b]) == before, (values[a], values[b])


def _signature(fn, *args) -> tuple[int, bool]:
  """(number of sorts, whether 64-bit integers appear) in the lowered program.

  The lowered (StableHLO) program for this backend, not the compiled one:
  XLA:GPU rewrites sorts into library calls, so compiled text depends on the
  backend.
  """
  text = jax.jit(fn).lower(*args).as_text()
  return text.count('stablehlo.sort'), 'xui64>' in text


def test_auto_uses_the_platform_variant():
  rows = jnp.zeros((3, 300), jnp.float32)
  backend = jax.default_backend()
  variant = ranking.VARIANT_BY_PLATFORM['cuda' if backend == 'gpu'
                                        else backend]
  expected = {'packed': (1, True), 'keyed_cosort': (2, False)}[variant]
  assert _signature(ranking.reconnect_rows, rows, rows) == expected


def test_environment_variable_forces_a_variant(monkeypatch):
  rows = jnp.zeros((3, 300), jnp.float32)
  for forced, expected in (('keyed_cosort', (2, False)), ('packed', (1, True)),
                           ('keyed', (1, False))):
    monkeypatch.setenv(ranking.ENV_VARIABLE, forced)
    # A fresh function: jit caches traces; the variable is read at trace.
    fresh = lambda c, p: ranking.reconnect_rows(c, p)
    assert _signature(fresh, rows, rows) == expected, forced
  monkeypatch.setenv(ranking.ENV_VARIABLE, 'fastest')
  with pytest.raises(ValueError, match='unknown reconnect variant'):
    ranking.reconnect_rows(rows, rows)


def test_rejects_mismatched_or_non_2d_rows():
  with pytest.raises(ValueError, match='same shape'):
    ranking.reconnect_rows(jnp.zeros((2, 3)), jnp.zeros((3, 2)))
  with pytest.raises(ValueError, match='2-D'):
    ranking.reconnect_rows(jnp.zeros(3), jnp.zeros(3))


@pytest.mark.parametrize('variant', VARIANTS)
def test_large_leaves_run_in_row_blocks(variant):
  shape = (64, 4097)  # above ranking.CPU_BLOCK_ELEMENTS: blocks of 32 rows
  assert ranking.block_rows(*shape, ranking.CPU_BLOCK_ELEMENTS) == 32
  rng = np.random.default_rng(2)
  current = np.round(rng.standard_normal(shape) * 8).astype(np.float32)
  pool = np.sort(rng.standard_normal(shape).astype(np.float32), axis=-1)
  actual = jitted('reconnect_rows', variant)(current, pool)
  assert_same_bits(actual, reference.reconnect(current, pool, axes=(1,)))


def test_block_rows_falls_back_to_one_block():
  assert ranking.block_rows(4099, 4096, 2**18) == 4099  # a prime
  assert ranking.block_rows(10, 100, 2**18) == 10  # small: one block
