"""Every variant through the public tree-level calls, against the reference.

``test_ranking.py`` checks the array level; this checks the plumbing around
it for each forced variant (environment variable, per-platform dispatch,
row blocks of large leaves, transposes of Dense and Conv kernels): the pool
and the sync equal the NumPy reference bit for bit.
"""

import jax
import numpy as np
import pytest

import laperm_jax
from laperm_jax import _ranking as ranking
from tests import reference

# (600, 500) has 300,000 entries: above ranking.CPU_BLOCK_ELEMENTS, so on CPU
# it is reconnected in row blocks (of 250 vectors).
SHAPES = {'dense': (20, 7), 'conv': (3, 3, 2, 5), 'big': (600, 500)}


def make_params(seed: int):
  rng = np.random.default_rng(seed)
  params = {}
  for name, shape in SHAPES.items():
    values = np.round(rng.standard_normal(shape) * 3).astype(np.float32)
    values[rng.random(shape) < 0.2] = -0.0
    values[rng.random(shape) < 0.01] = 1e-40
    params[name] = values
  params['bias'] = rng.standard_normal(5).astype(np.float32)
  return params


@pytest.mark.parametrize('variant', ranking.VARIANTS + ('auto',))
def test_pool_and_reconnect_match_reference(variant, monkeypatch):
  monkeypatch.setenv(ranking.ENV_VARIABLE, variant)
  initial, current = make_params(0), make_params(1)
  # Fresh functions: jit caches traces, and the variable is read at trace.
  pool = jax.jit(lambda p: laperm_jax.sorted_pool(p))(initial)
  synced = jax.jit(lambda c, p: laperm_jax.reconnect(c, p))(current, pool)
  for name in SHAPES:
    expected_pool = reference.pool_of(initial[name])
    np.testing.assert_array_equal(np.asarray(pool[name].values).view(np.uint32),
                                  expected_pool.view(np.uint32))
    expected = reference.reconnect(current[name], expected_pool)
    np.testing.assert_array_equal(np.asarray(synced[name]).view(np.uint32),
                                  expected.view(np.uint32))
  np.testing.assert_array_equal(synced['bias'], current['bias'])
