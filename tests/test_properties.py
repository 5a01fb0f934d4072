"""Properties of the sync over random trees, against the NumPy reference.

Random nested trees (plus a leaf that is not reconnected) of leaves with
random shapes (from a small set, to keep the number of compilations down),
dtypes, vector axes, sparsity and tie patterns (few distinct values, signed
zeros, infinities and NaNs in the candidate). Checked: ``reconnect`` equals
the reference bit for bit and keeps every vector's multiset exactly; the
rank order of the result is the candidate's; through ``tx.update`` and
``optax.apply_updates`` the weights are within the documented bound of the
reference; everything is deterministic, within a process and across
processes.
"""

import os
import pathlib
import subprocess
import sys

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import laperm_jax
from tests import determinism_checks
from tests import reference

# The number of examples comes from the hypothesis profile (conftest.py).
SETTINGS = hypothesis.settings(
    deadline=None, derandomize=True, database=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow])

SHAPES = ((7,), (4, 3), (2, 3, 4), (3, 1, 2, 2))
DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
PATTERNS = ('normal', 'ties', 'sparse', 'signed_zeros', 'nonfinite')


@st.composite
def leaves(draw):
  """(shape, dtype, axes spec, pattern, seed) for one reconnected leaf."""
  shape = draw(st.sampled_from(SHAPES))
  ndim = len(shape)
  axes = draw(st.one_of(
      st.none(),
      st.integers(-ndim, ndim - 1),
      st.permutations(range(ndim)).flatmap(
          lambda order: st.integers(1, ndim).map(
              lambda n: tuple(order[:n])))))
  return (shape, draw(st.sampled_from(DTYPES)), axes,
          draw(st.sampled_from(PATTERNS)), draw(st.integers(0, 2**31 - 1)))


trees = st.lists(leaves(), min_size=1, max_size=3)


def values(rng, shape, pattern, candidate=False):
  if pattern == 'normal':
    x = rng.standard_normal(shape)
  elif pattern == 'ties':
    x = rng.integers(-2, 3, shape) * 0.75
  elif pattern == 'sparse':
    x = np.where(rng.random(shape) < rng.choice([0.1, 0.5, 0.9]),
                 rng.standard_normal(shape), 0.0)
  elif pattern == 'signed_zeros':
    x = np.where(rng.random(shape) < 0.5, 0.0, rng.integers(-1, 2, shape))
    x = np.where(rng.random(shape) < 0.5, -x, x)  # -0.0 and +0.0
  else:
    x = rng.standard_normal(shape)
    if candidate:
      special = rng.choice([np.nan, np.inf, -np.inf, -np.nan], shape)
      x = np.where(rng.random(shape) < 0.3, special, x)
  return x


def build(tree_spec, candidate=False):
  params, axes = {}, {}
  for index, (shape, dtype, spec, pattern, seed) in enumerate(tree_spec):
    rng = np.random.default_rng(seed + (7 if candidate else 0))
    name = f'leaf{index}'
    params[name] = jnp.asarray(values(rng, shape, pattern, candidate), dtype)
    axes[name] = spec
  return params, axes


MASK = {'bias': False, 'head': True, 'layers': True}
BIAS = jnp.array([0.5, -1.0, 0.0])


def nest(flat, bias=BIAS):
  """Flat ``leafN`` entries as a nested tree, plus a leaf not reconnected."""
  names = sorted(flat, key=lambda n: int(n[4:]))
  return {'head': flat[names[-1]],
          'layers': [{'w': flat[n]} for n in names[:-1]],
          'bias': bias}


def unnest(tree):
  """The reconnected leaves of a :func:`nest` tree, flat again."""
  leaves = [layer['w'] for layer in tree['layers']] + [tree['head']]
  return {f'leaf{i}': leaf for i, leaf in enumerate(leaves)}


def ref_axes(spec, ndim):
  if spec is None:
    return reference.default_axes(ndim)
  return (spec,) if isinstance(spec, int) else spec


def bits(x):
  x = np.asarray(x)
  return x.view(np.dtype(f'u{x.dtype.itemsize}'))


def ulp(x, dtype):
  """Spacing of ``dtype`` at |x| (0 at 0): the documented bound's unit."""
  info = jnp.finfo(dtype)
  x = np.abs(np.asarray(x, np.float64))
  exponent = np.floor(np.log2(np.where(x > 0, x, 1.0)))
  exponent = np.maximum(exponent, info.minexp)
  return np.where(x > 0, 2.0 ** (exponent - info.nmant), 0.0)


def total_sort(rows):
  """Each row's bit patterns in a total order (-0.0 before +0.0)."""
  keys = np.asarray(rows, np.float64)
  order = np.lexsort((~np.signbit(keys), keys), axis=-1)
  return bits(np.take_along_axis(rows, order, -1))


@SETTINGS
@hypothesis.given(trees)
def test_reconnect_matches_reference_and_keeps_multisets(tree_spec):
  initial, axes = build(tree_spec)
  candidate, _ = build(tree_spec, candidate=True)
  nested_axes = nest(axes, bias=None)
  nested_pool = laperm_jax.sorted_pool(nest(initial), mask=MASK,
                                       vector_axes=nested_axes)
  nested_result = laperm_jax.reconnect(nest(candidate, bias=-BIAS),
                                       nested_pool, vector_axes=nested_axes)
  assert isinstance(nested_pool['bias'], optax.MaskedNode)
  np.testing.assert_array_equal(nested_result['bias'], -BIAS)
  pool, result = unnest(nested_pool), unnest(nested_result)
  for name, x0 in initial.items():
    ax = ref_axes(axes[name], x0.ndim)
    ref_pool = reference.pool_of(np.asarray(x0), ax)
    ref_result = reference.reconnect(np.asarray(candidate[name]), ref_pool, ax)
    assert result[name].dtype == x0.dtype
    np.testing.assert_array_equal(bits(pool[name].values), bits(ref_pool))
    np.testing.assert_array_equal(bits(result[name]), bits(ref_result))
    # Every vector keeps its multiset exactly (bitwise, signed zeros too).
    rows = reference.vector_rows(np.asarray(result[name]), ax)
    pool_rows = reference.vector_rows(np.asarray(pool[name].values), ax)
    keys = np.asarray(rows, np.float64)
    np.testing.assert_array_equal(total_sort(rows), total_sort(pool_rows))
    # Rank order: sorted by the candidate (stable), the result ascends.
    cand_rows = np.asarray(
        reference.vector_rows(np.asarray(candidate[name]), ax), np.float64)
    by_candidate = np.take_along_axis(
        keys, np.argsort(cand_rows, axis=-1, kind='stable'), -1)
    assert np.all(np.diff(by_candidate, axis=-1) >= 0)
  assert all(jax.tree.leaves(laperm_jax.is_permutation_of_pool(
      nested_result, nested_pool, vector_axes=nested_axes)))


@SETTINGS
@hypothesis.given(trees)
def test_sync_through_apply_updates_is_within_the_documented_bound(tree_spec):
  initial, axes = build(tree_spec)
  target, _ = build(tree_spec, candidate=True)
  # The inner optimizer proposes exactly `target - params` (in float32, then
  # the params' dtype), so the candidate is known; the sync comes right away.
  tx = laperm_jax.laperm(optax.identity(), 1, mask=MASK,
                         vector_axes=nest(axes, bias=None))
  state = tx.init(nest(initial))
  grads = jax.tree.map(
      lambda t, p: (t.astype(jnp.float32) - p.astype(jnp.float32)).astype(
          p.dtype), target, initial)
  updates, _ = tx.update(nest(grads, bias=BIAS), state, nest(initial))
  nested_synced = optax.apply_updates(nest(initial), updates)
  np.testing.assert_array_equal(nested_synced['bias'], 2 * BIAS)
  synced = unnest(nested_synced)
  for name, p in initial.items():
    ax = ref_axes(axes[name], p.ndim)
    candidate = np.asarray((p + grads[name]).astype(p.dtype))
    q = reference.reconnect(candidate,
                            reference.pool_of(np.asarray(p), ax), ax)
    w = np.asarray(synced[name])
    assert w.dtype == q.dtype
    w64, q64, p64 = (np.asarray(x, np.float64) for x in (w, q, p))
    bound = ulp(np.maximum(np.abs(p64), np.abs(q64)), p.dtype)
    assert np.all(np.abs(w64 - q64) <= bound), name
    exact = (q64 == 0) | (q64 == p64)
    np.testing.assert_array_equal(w64[exact], q64[exact])


# Heavy (two compiles per example); the fixed cases of
# test_deterministic_across_processes check determinism in the default suite.
@pytest.mark.slow
@hypothesis.settings(SETTINGS, max_examples=8)
@hypothesis.given(trees)
def test_deterministic_within_a_process(tree_spec):
  initial, axes = build(tree_spec)
  candidate, _ = build(tree_spec, candidate=True)
  tx = laperm_jax.laperm(optax.adam(0.1), 1, mask=MASK,
                         vector_axes=nest(axes, bias=None))
  outputs = []
  for _ in range(2):
    state = tx.init(nest(initial))
    updates, state = tx.update(nest(candidate), state, nest(initial))
    outputs.append(jax.tree.leaves((updates, state)))
  for a, b in zip(*outputs):
    np.testing.assert_array_equal(bits(a), bits(b))


def same_platform_env() -> dict:
  # The fresh process must run on this process's backend: bits are only
  # comparable on one platform (Adam's arithmetic differs between CPU and GPU).
  # It compiles every program itself: the session's compilation cache would
  # hand it this process's programs.
  env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE='false')
  if jax.default_backend() == 'cpu':
    env['JAX_PLATFORMS'] = 'cpu'
  return env


def test_deterministic_across_processes():
  here = determinism_checks.digest()
  root = pathlib.Path(__file__).parents[1]
  proc = subprocess.run(
      [sys.executable, '-W', 'error', str(root / 'tests' /
                                           'determinism_checks.py')],
      cwd=root, env=same_platform_env(),
      capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'DIGEST {here}' in proc.stdout
