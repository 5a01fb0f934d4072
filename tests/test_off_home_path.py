"""No silent wrong results off the home path.

Axes travel with the pool; framework layouts by default; mixed dtypes keep
the documented bound; states found in any composition; exports into Flax and
Equinox models; MultiSteps and reset_inner_state; sync diagnostics.
"""

import equinox as eqx
from flax import linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import laperm_jax
from tests import reference

KEY = jax.random.key(0)


def sgd_steps(tx, params, num, grads_fn=None):
  state = tx.init(params)
  for step in range(num):
    grads = (grads_fn or (lambda p, s: jax.tree.map(
        lambda x: jnp.cos(3.0 * x + s), p)))(params, step)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


# ------------------------------------------------------ 1. axes in the pool


def test_reconnect_uses_the_pools_axes_and_rejects_others():
  params = {'w': jnp.array([[3., 0.], [1., 2.]])}
  pool = laperm_jax.sorted_pool(params, vector_axes=-1)
  current = {'w': jnp.array([[3., 0.], [1., 2.]])}
  # Without axes, reconnect uses the pool's (rows): the columns' would mix them.
  np.testing.assert_array_equal(laperm_jax.reconnect(current, pool)['w'],
                                [[3., 0.], [1., 2.]])
  assert bool(laperm_jax.is_permutation_of_pool(current, pool)['w'])
  with pytest.raises(ValueError, match=r"'w': vector_axes \(0,\) differ from "
                                       r'the axes the pool was built with'):
    laperm_jax.reconnect(current, pool, vector_axes=0)
  with pytest.raises(ValueError, match=r"'w': vector_axes"):
    laperm_jax.is_permutation_of_pool(current, pool, vector_axes=0)
  with pytest.raises(TypeError, match=r"'w': the pool holds a .*Array.* not "
                                      r'a laperm_jax.PoolLeaf'):
    laperm_jax.reconnect(current, {'w': pool['w'].values})


COMPOSITIONS = {
    'plain': lambda tx: tx,
    'chain': lambda tx: optax.chain(optax.clip_by_global_norm(1.0), tx),
    'apply_if_finite': lambda tx: optax.apply_if_finite(tx, 3),
    'multisteps': lambda tx: optax.MultiSteps(tx, every_k_schedule=1),
    'inject': lambda tx: optax.inject_hyperparams(
        laperm_jax.laperm, static_args=('inner', 'vector_axes'))(
            optax.sgd(0.5), sync_period=2, vector_axes=-1),
}


@pytest.mark.parametrize('name', sorted(COMPOSITIONS))
def test_exact_params_finds_the_state_in_any_composition(name):
  params = {'w': jax.random.normal(KEY, (3, 5))}
  tx = COMPOSITIONS[name](laperm_jax.laperm(optax.sgd(0.5), 2,
                                            vector_axes=-1))
  out, state = sgd_steps(tx, params, 3)
  exact = jax.jit(laperm_jax.exact_params)(state, out)
  pool = reference.pool_of(np.asarray(params['w']), axes=(1,))
  np.testing.assert_array_equal(
      exact['w'], reference.reconnect(np.asarray(out['w']), pool, axes=(1,)))


def test_exact_params_and_has_synced_want_exactly_one_laperm_state():
  params = {'w': jax.random.normal(KEY, (3, 5))}
  tx = optax.chain(laperm_jax.laperm(optax.sgd(0.5), 2),
                   laperm_jax.laperm(optax.sgd(0.5), 3))
  state = tx.init(params)
  for query in (lambda s: laperm_jax.exact_params(s, params),
                laperm_jax.has_synced):
    with pytest.raises(ValueError, match='expects one LaPermState in '
                                         'opt_state, found 2'):
      query(state)
    with pytest.raises(ValueError, match='found no LaPermState'):
      query(optax.adam(0.1).init(params))


def test_exact_params_without_a_laperm_state():
  with pytest.raises(ValueError, match='no LaPermState'):
    laperm_jax.exact_params(optax.adam(0.1).init({'w': jnp.ones(2)}),
                            {'w': jnp.ones(2)})


# --------------------------------------------------------- 2. layouts


def eqx_model():
  keys = jax.random.split(KEY, 6)
  return [eqx.nn.Linear(4, 3, key=keys[0]),
          eqx.nn.Conv2d(2, 5, 3, key=keys[1]),
          eqx.nn.ConvTranspose1d(2, 3, 2, key=keys[2]),
          eqx.nn.Conv3d(1, 2, 2, key=keys[3]),
          eqx.nn.Embedding(6, 4, key=keys[4]),
          eqx.nn.LayerNorm((2, 3)),
          eqx.nn.GroupNorm(1, 3)]


def test_equinox_defaults_give_paper_semantics():
  params = eqx.filter(eqx_model(), eqx.is_inexact_array)
  pool = laperm_jax.sorted_pool(params)
  expected = {  # layer -> weight's vector axes; biases and norms: no pool
      0: (1,), 1: (1, 2, 3), 2: (1, 2), 3: (1, 2, 3, 4), 4: (1,)}
  for index, layer in enumerate(pool):
    for field in ('weight', 'bias'):
      entry = getattr(layer, field, None)
      if entry is None:
        continue
      if field == 'weight' and index in expected:
        assert entry.vector_axes == expected[index], index
        weight = np.asarray(getattr(params[index], field))
        np.testing.assert_array_equal(
            entry.values, reference.pool_of(weight, expected[index]))
      else:
        assert isinstance(entry, optax.MaskedNode), (index, field)
  # A Conv bias (out, 1, 1) is trained by the inner optimizer alone.
  out, state = sgd_steps(laperm_jax.laperm(optax.sgd(0.5), 1), params, 2)
  plain, _ = sgd_steps(optax.sgd(0.5), params, 2)
  np.testing.assert_allclose(out[1].bias, plain[1].bias, rtol=1e-6)
  exact = laperm_jax.exact_params(state, out)
  model = eqx.combine(exact, eqx_model())
  assert bool(laperm_jax.is_permutation_of_pool(
      eqx.filter(model, eqx.is_inexact_array), pool)[1].weight)


class LinenNet(nn.Module):

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(7, 8)(tokens)
    x = nn.LayerNorm()(x)
    x = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)(x)
    x = nn.BatchNorm(use_running_average=True)(x)
    x = nn.Conv(4, (3,))(x)
    return nn.Dense(3)(x)


def test_flax_linen_layout_table():
  tokens = jnp.zeros((1, 5), jnp.int32)
  params = LinenNet().init(KEY, tokens)['params']
  axes = laperm_jax.default_vector_axes(params)
  flags = laperm_jax.default_mask(params)
  attention = 'MultiHeadDotProductAttention_0'
  assert axes['Embed_0']['embedding'] == (1,) and flags['Embed_0']['embedding']
  for name in ('query', 'key', 'value'):  # (in, heads, head_dim): per head
    assert axes[attention][name]['kernel'] == (0, 2)
    assert not flags[attention][name]['bias']
  assert axes[attention]['out']['kernel'] == (0, 1)  # (heads, hd, out)
  assert axes['Conv_0']['kernel'] == (0, 1)
  assert axes['Dense_0']['kernel'] == (0,)
  for norm in ('LayerNorm_0', 'BatchNorm_0'):
    assert not any(jax.tree.leaves(flags[norm]))
  pool = laperm_jax.sorted_pool(params)
  query = np.asarray(params[attention]['query']['kernel'])
  np.testing.assert_array_equal(pool[attention]['query']['kernel'].values,
                                reference.pool_of(query, (0, 2)))


def test_nnx_layout_table():
  class Model(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(7, 8, rngs=rngs)
      self.attention = nnx.MultiHeadAttention(2, 8, decode=False, rngs=rngs)
      self.norm = nnx.LayerNorm(8, rngs=rngs)
      self.conv = nnx.Conv(8, 4, (3, 3), rngs=rngs)
  params = nnx.state(Model(nnx.Rngs(0)), nnx.Param)
  axes = nnx.to_pure_dict(nnx.State(laperm_jax.default_vector_axes(params)))
  flags = laperm_jax.default_mask(params)
  assert jax.tree.leaves(flags['norm']) == [False, False]
  assert axes['embed']['embedding'] == (1,)
  for name in ('query', 'key', 'value'):  # (in, heads, head_dim): per head
    assert axes['attention'][name]['kernel'] == (0, 2)
  assert axes['attention']['out']['kernel'] == (0, 1)
  assert axes['conv']['kernel'] == (0, 1, 2)
  pool = laperm_jax.sorted_pool(params)
  key = np.asarray(params['attention']['key']['kernel'][...])
  np.testing.assert_array_equal(pool['attention']['key']['kernel'].values,
                                reference.pool_of(key, (0, 2)))


def test_ambiguous_kernels_and_int_lists_raise_with_the_argument():
  params = {'proj': {'kernel': jnp.ones((4, 2, 3))}}  # DenseGeneral or Conv?
  with pytest.raises(ValueError, match=r"'proj/kernel': a rank-3 'kernel'.*"
                                       r'Pass `vector_axes`'):
    laperm_jax.laperm(optax.sgd(0.1), 2).init(params)
  tx = laperm_jax.laperm(optax.sgd(0.1), 2, vector_axes=lambda p: {
      'proj': {'kernel': (0,)}})
  assert tx.init(params).pool['proj']['kernel'].vector_axes == (0,)
  with pytest.raises(TypeError, match=r'list of ints, \[0, 1\]: give one '
                                      r"leaf's axes as a tuple, \(0, 1\)"):
    laperm_jax.sorted_pool({'w': jnp.ones((2, 3, 4))}, vector_axes=[0, 1])
  two = [jnp.ones((2, 3)), jnp.ones((3, 2))]
  pool = laperm_jax.sorted_pool(two, vector_axes=[(0,), (1,)])
  assert [e.vector_axes for e in pool] == [(0,), (1,)]


# ------------------------------------------------------- 3. mixed dtypes

DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64)


def ulp(x, dtype):
  info = jnp.finfo(dtype)
  x = np.abs(np.asarray(x, np.float64))
  exponent = np.maximum(np.floor(np.log2(np.where(x > 0, x, 1.0))),
                        info.minexp)
  return np.where(x > 0, 2.0 ** (exponent - int(info.nmant)), 0.0)


@pytest.mark.parametrize('param_dtype', DTYPES)
def test_mixed_dtype_syncs_stay_within_an_ulp(param_dtype):
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    p = jnp.asarray(rng.standard_normal((40, 6)) * 3, param_dtype)
    target = rng.standard_normal((40, 6)) * 3
    for update_dtype in DTYPES:
      inner = optax.stateless(lambda g, params: g)  # updates = grads
      tx = laperm_jax.laperm(inner, 1)
      state = tx.init({'w': p})
      grads = {'w': jnp.asarray(target - np.asarray(p, np.float64),
                                update_dtype)}
      updates, _ = tx.update(grads, state, {'w': p})
      w = np.asarray(optax.apply_updates({'w': p}, updates)['w'], np.float64)
      candidate = (p + grads['w']).astype(param_dtype)
      q = np.asarray(laperm_jax.reconnect({'w': candidate}, state.pool)['w'],
                     np.float64)
      bound = ulp(np.maximum(np.abs(np.asarray(p, np.float64)), np.abs(q)),
                  param_dtype)
      assert np.all(np.abs(w - q) <= bound), (param_dtype, update_dtype)


# ------------------------------------------------ 4. check_state anywhere


@pytest.mark.parametrize('wrap', [
    lambda tx: optax.apply_if_finite(tx, 3),
    lambda tx: optax.chain(optax.clip(1.0), tx),
    lambda tx: optax.MultiSteps(tx, 2)])
def test_check_state_in_compositions(wrap):
  params = {'w': jax.random.normal(KEY, (4, 3))}
  tx = wrap(laperm_jax.laperm(optax.adam(0.1), 2))
  state = tx.init(params)
  assert laperm_jax.check_state(tx, state, params) is state
  other = wrap(laperm_jax.laperm(optax.adam(0.1), 2, vector_axes=-1))
  with pytest.raises(ValueError, match=r'pool/w: the pool was built with '
                                       r'vector axes \(0,\)'):
    laperm_jax.check_state(other, state, params)
  # A restored pool that is not sorted along the target's axes.
  is_pool_leaf = lambda x: isinstance(x, laperm_jax.PoolLeaf)
  unsorted = jax.tree.map(
      lambda x: laperm_jax.PoolLeaf(x.values[::-1], x.vector_axes)
      if is_pool_leaf(x) else x, state, is_leaf=is_pool_leaf)
  with pytest.raises(ValueError, match=r'pool/w: the pool is not sorted'):
    laperm_jax.check_state(tx, unsorted, params)


def test_check_state_allocates_no_inner_state(monkeypatch):
  params = {'w': jax.random.normal(KEY, (4, 3))}
  calls = []
  def init(p):
    calls.append(type(jax.tree.leaves(p)[0]).__name__)
    return optax.adam(0.1).init(p)
  tx = laperm_jax.laperm(optax.GradientTransformation(
      init, optax.adam(0.1).update), 2)
  state = tx.init(params)
  calls.clear()
  assert laperm_jax.check_state(tx, state, params) is state
  # check_state evaluated tx.init, abstractly: no inner state was allocated.
  assert calls
  assert all(c in ('ShapeDtypeStruct', 'DynamicJaxprTracer') or
             'Tracer' in c for c in calls), calls


# ------------------------------------------------------ 5. model exports


def test_nnx_export_and_structure_errors():
  model = nnx.Sequential(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), nnx.relu,
                         nnx.Linear(3, 2, rngs=nnx.Rngs(1)))
  initial = np.asarray(model.layers[0].kernel[...])
  optimizer = nnx.Optimizer(
      model, laperm_jax.laperm(optax.adam(0.1), 2), wrt=nnx.Param)
  x = jnp.ones((2, 4))
  for _ in range(2):
    grads = nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(model)
    optimizer.update(model, grads)
  params = nnx.state(model, nnx.Param)
  nnx.update(model, laperm_jax.exact_params(optimizer.opt_state, params))
  np.testing.assert_array_equal(
      np.sort(np.asarray(model.layers[0].kernel[...]), axis=0),
      np.sort(initial, axis=0))
  assert bool(laperm_jax.has_synced(optimizer.opt_state))
  with pytest.raises(ValueError, match=r"leaves missing from params: \[.*"
                                       r"'layers/2/kernel'\"\]; leaves not "
                                       r"in the pool: \[\"'bias'\", "
                                       r"\"'kernel'\"\]"):
    laperm_jax.exact_params(optimizer.opt_state,
                            nnx.state(model.layers[0], nnx.Param))


def test_linen_export():
  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(2)(nn.relu(nn.Dense(3)(x)))
  params = MLP().init(KEY, jnp.ones((1, 4)))['params']
  tx = laperm_jax.laperm(optax.adam(0.1), 2)
  out, state = sgd_steps(tx, params, 2)
  exact = laperm_jax.exact_params(state, out)
  assert all(jax.tree.leaves(laperm_jax.is_permutation_of_pool(
      exact, state.pool)))
  MLP().apply({'params': exact}, jnp.ones((1, 4)))


# ------------------------------------- 6. MultiSteps and reset_inner_state


def count_syncs(monkeypatch):
  """Counts executed sync branches (a host callback in the sort kernel)."""
  from laperm_jax import _ranking  # pylint: disable=import-outside-toplevel
  calls = []
  original = _ranking.reconnect_rows
  def counted(current, pool, **kwargs):
    jax.debug.callback(lambda: calls.append(None))
    return original(current, pool, **kwargs)
  monkeypatch.setattr(_ranking, 'reconnect_rows', counted)
  return calls


def test_multisteps_inside_laperm_sorts_once_per_sync(monkeypatch):
  params = {'w': jax.random.normal(KEY, (5, 3))}
  calls = count_syncs(monkeypatch)
  outside = optax.MultiSteps(laperm_jax.laperm(optax.adam(0.1), 2), 3)
  a, _ = sgd_steps(outside, params, 6)
  jax.effects_barrier()
  outside_sorts = len(calls)
  calls.clear()
  inside = laperm_jax.laperm(optax.MultiSteps(optax.adam(0.1), 3), 2 * 3)
  b, _ = sgd_steps(inside, params, 6)
  jax.effects_barrier()
  assert outside_sorts == 3 and len(calls) == 1  # one sync either way
  np.testing.assert_allclose(a['w'], b['w'], rtol=1e-6, atol=1e-6)


def test_reset_inner_state_keeps_schedule_counters():
  params = {'w': jax.random.normal(KEY, (4, 3))}
  schedule = optax.linear_schedule(0.1, 0.0, 100)
  for inner in (optax.adam(schedule),
                optax.inject_hyperparams(optax.adam)(learning_rate=schedule)):
    tx = laperm_jax.laperm(inner, 2, reset_inner_state=True)
    _, state = sgd_steps(tx, params, 4)
    counts = [int(v) for _, v in optax.tree.get_all_with_path(
        state.inner_state, 'count')]
    # Adam's bias-correction count restarts; the schedule's keeps counting.
    assert 4 in counts and 0 in counts, counts


# ----------------------------------------------------------- 7. diagnostics


def test_has_synced_and_changes_detect_a_k_that_is_too_small():
  params = {'w': jax.random.normal(KEY, (30, 4))}
  for lr, moved in ((1e-6, False), (0.5, True)):
    tx = laperm_jax.laperm(optax.sgd(lr), 3, track_changes=True)
    state = tx.init(params)
    p = params
    for step in range(1, 7):
      updates, state = jax.jit(tx.update)(
          jax.tree.map(lambda x, step=step: jnp.cos(7.0 * x + step), p),
          state, p)
      p = optax.apply_updates(p, updates)
      assert bool(laperm_jax.has_synced(state)) == (step % 3 == 0)
    assert (float(state.changes.changed_fraction) > 0) == moved
  sparse = laperm_jax.sparse_init(KEY, params, 0.5)
  tx = laperm_jax.laperm(optax.sgd(0.5), 1, track_changes=True)
  p, state = sgd_steps(tx, sparse, 1)
  before, after = np.asarray(sparse['w']), np.asarray(
      laperm_jax.exact_params(state, p)['w'])
  assert int(state.changes.created) == np.sum((before == 0) & (after != 0))
  assert int(state.changes.removed) == np.sum((before != 0) & (after == 0))
  assert int(state.changes.created) > 0
  np.testing.assert_allclose(float(state.changes.changed_fraction),
                             np.mean(before != after))


def test_changes_cost_nothing_on_non_sync_steps():
  params = {'w': jnp.ones((4, 3))}
  tx = laperm_jax.laperm(optax.sgd(0.1), 3, track_changes=True)
  state = tx.init(params)
  jaxpr = jax.make_jaxpr(tx.update)(params, state, params)
  top = [e.primitive.name for e in jaxpr.jaxpr.eqns]
  assert 'sort' not in top and 'reduce_sum' not in top
