"""Every platform's branch lowers, on a machine that has none of them.

``jax.export`` lowers a jitted function for platforms this machine lacks, so
an op that a backend cannot lower fails here, in CI on CPU. Exporting for
one platform alone keeps only that platform's branch of
``lax.platform_dependent``: the program then shows which reconnect variant
that platform really runs.
"""

import re

import jax
from jax import export
import jax.numpy as jnp
import optax
import pytest

import laperm_jax
from laperm_jax import _ranking as ranking

PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def make_params(dtype):
  # A Conv and a Dense kernel, a bias, and a vector longer than 2**16 (16-bit
  # floats then need the 64-bit packed key on CPU).
  return {'conv': jnp.zeros((3, 3, 2, 4), dtype),
          'dense': jnp.zeros((6, 5), dtype),
          'long': jnp.zeros((2**16 + 8, 2), dtype),
          'bias': jnp.zeros(5, dtype)}


def signature(text: str) -> dict:
  """What a lowered program does, as counts that tell the variants apart."""
  return {'sorts': text.count('stablehlo.sort'),
          'scatters': text.count('stablehlo.scatter'),
          'int64': bool(re.search(r'x(u)?i64>|tensor<(u)?i64>', text))}


@pytest.mark.parametrize('dtype', DTYPES, ids=lambda d: d.__name__)
def test_update_reconnect_and_pool_lower_for_every_platform(dtype):
  params = make_params(dtype)
  tx = laperm_jax.laperm(optax.adam(1e-3), 2)
  state = jax.eval_shape(tx.init, params)  # lowered only: shapes suffice
  functions = {
      'update': (lambda g, s, p: tx.update(g, s, p), (params, state, params)),
      'reconnect': (laperm_jax.reconnect, (params, state.pool)),
      'sorted_pool': (laperm_jax.sorted_pool, (params,)),
  }
  for name, (fn, args) in functions.items():
    exported = export.export(jax.jit(fn), platforms=PLATFORMS)(*args)
    assert exported.platforms == PLATFORMS, name
    assert 'stablehlo.sort' in exported.mlir_module(), name


@pytest.mark.parametrize('dtype', DTYPES, ids=lambda d: d.__name__)
def test_tpu_branch_uses_no_64_bit_integers(dtype):
  # TPUs emulate 64-bit integers; the TPU variant must not need them, for
  # any float width and vector length.
  params = make_params(dtype)
  tx = laperm_jax.laperm(optax.adam(1e-3), 2)
  state = jax.eval_shape(tx.init, params)
  exported = export.export(jax.jit(tx.update), platforms=('tpu',))(
      params, state, params)
  assert not signature(exported.mlir_module())['int64']


@pytest.mark.parametrize('platform', PLATFORMS)
def test_a_forced_variant_is_the_one_each_platform_runs(platform,
                                                         monkeypatch):
  rows = jnp.zeros((4, 300), jnp.float32)

  def lowered(variant):
    # A fresh function per call: the variable is read when jit traces.
    fn = jax.jit(lambda c, p: ranking.reconnect_rows(c, p, variant=variant))
    return signature(export.export(fn, platforms=(platform,))(
        rows, rows).mlir_module())

  def direct(variant):  # the variant's own code, not through the dispatch
    fn = jax.jit(lambda c, p: ranking._PLACE[variant](  # pylint: disable=protected-access
        ranking._ORDER[variant](c), p))  # pylint: disable=protected-access
    return signature(export.export(fn, platforms=(platform,))(
        rows, rows).mlir_module())

  by_variant = {variant: direct(variant) for variant in ranking.VARIANTS}
  assert len({tuple(s.values()) for s in by_variant.values()}) == len(
      ranking.VARIANTS)
  for forced in ranking.VARIANTS:
    monkeypatch.setenv(ranking.ENV_VARIABLE, forced)
    assert lowered(None) == by_variant[forced], (platform, forced)


# The documented choice per platform (README, `laperm_jax._ranking`), written
# out here rather than read from the library, so that a change of the table
# fails this test.
DOCUMENTED_VARIANT = {
    'cpu': 'packed',
    'cuda': 'keyed_cosort',
    'rocm': 'keyed_cosort',
    'tpu': 'keyed_cosort',
}


def lowered_reconnect_rows(platform, variant):
  rows = jnp.zeros((4, 300), jnp.float32)
  fn = jax.jit(lambda c, p: ranking.reconnect_rows(c, p, variant=variant))
  return signature(export.export(fn, platforms=(platform,))(
      rows, rows).mlir_module())


@pytest.mark.parametrize('platform', PLATFORMS)
def test_the_automatic_variant_is_the_documented_one(platform):
  by_variant = {variant: lowered_reconnect_rows(platform, variant)
                for variant in ranking.VARIANTS}
  assert len({tuple(s.values()) for s in by_variant.values()}) == len(
      ranking.VARIANTS)
  # The library's table is the documented one, and it is what runs.
  assert ranking.VARIANT_BY_PLATFORM[platform] == DOCUMENTED_VARIANT[platform]
  assert lowered_reconnect_rows(platform, None) == by_variant[
      DOCUMENTED_VARIANT[platform]]


def test_reconnect_variant_argument_chooses_the_sort(monkeypatch):
  # One reconnected leaf: the update's sorts and scatters are its sync's.
  params = {'w': jnp.zeros((300, 4), jnp.float32)}
  monkeypatch.setenv(ranking.ENV_VARIABLE, 'packed')  # the argument wins

  def lowered(fn, *args):
    return signature(export.export(jax.jit(fn), platforms=('cpu',))(
        *args).mlir_module())

  for variant in ranking.VARIANTS:
    want = lowered_reconnect_rows('cpu', variant)
    tx = laperm_jax.laperm(optax.adam(1e-3), 2, reconnect_variant=variant)
    state = jax.eval_shape(tx.init, params)
    assert lowered(tx.update, params, state, params) == want, variant
    assert lowered(lambda p, s, v=variant: laperm_jax.reconnect(
        p, s, variant=v), params, state.pool) == want, variant
  with pytest.raises(ValueError, match='unknown reconnect variant'):
    laperm_jax.laperm(optax.adam(1e-3), 2, reconnect_variant='bitonic')
