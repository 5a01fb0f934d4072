"""The LaPerm transformation against the NumPy reference, step by step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import laperm_jax
from tests import reference

KERNELS = ('dense', 'conv')


def make_params(seed=0):
  rng = np.random.default_rng(seed)
  return {
      'dense': rng.uniform(-1, 1, (5, 4)).astype(np.float32),
      'conv': rng.uniform(-1, 1, (2, 2, 3, 4)).astype(np.float32),
      'bias': rng.uniform(-1, 1, (4,)).astype(np.float32),
      'norm_scale': np.ones((4,), np.float32),
  }


def make_grads(num_steps, seed=1):
  rng = np.random.default_rng(seed)
  template = make_params()
  return [{k: rng.normal(size=v.shape).astype(np.float32)
           for k, v in template.items()} for _ in range(num_steps)]


def run_laperm(tx, params, grads_seq):
  params = {k: jnp.asarray(v) for k, v in params.items()}
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  history = []
  for grads in grads_seq:
    params, state = step(params, state, grads)
    history.append((jax.device_get(params), state))
  return history


@pytest.mark.parametrize('k', [1, 2, 3])
@pytest.mark.parametrize('inner_name', ['sgd', 'adam'])
def test_trajectory_matches_numpy_reference(k, inner_name):
  params, grads_seq = make_params(), make_grads(7)
  if inner_name == 'sgd':
    tx_inner, ref_inner = optax.sgd(0.05), reference.SGD(0.05)
  else:
    tx_inner, ref_inner = optax.adam(0.05), reference.Adam(0.05)
  got = run_laperm(laperm_jax.laperm(tx_inner, k), params, grads_seq)
  want = reference.trajectory(params, grads_seq, ref_inner, k, KERNELS)
  for step, ((got_params, state), (want_params, synced)) in enumerate(
      zip(got, want), start=1):
    assert bool(laperm_jax.has_synced(state)) == synced
    assert int(state.count) == step
    assert int(state.steps_since_sync) == step % k
    for key in params:  # XLA may fuse arithmetic (FMA): ulps apart
      np.testing.assert_allclose(got_params[key], want_params[key],
                                 rtol=1e-5, atol=1e-6,
                                 err_msg=f'step {step}, {key}')
    if synced:  # the same arrangement of exactly the initial values
      for key in KERNELS:
        pool = reference.pool_of(params[key])
        np.testing.assert_array_equal(
            reference.reconnect(got_params[key], pool),
            reference.reconnect(want_params[key], pool),
            err_msg=f'step {step}, {key}')
        np.testing.assert_array_equal(
            laperm_jax.reconnect({key: got_params[key]},
                                 {key: state.pool[key]})[key],
            reference.reconnect(want_params[key], pool))


def test_has_synced_is_false_at_init_and_after_non_sync_steps():
  params = {k: jnp.asarray(v) for k, v in make_params().items()}
  tx = laperm_jax.laperm(optax.sgd(0.1), 3)
  state = tx.init(params)
  assert not bool(laperm_jax.has_synced(state))
  synced = []
  for grads in make_grads(4):
    _, state = tx.update(grads, state, params)
    synced.append(bool(laperm_jax.has_synced(state)))
  assert synced == [False, False, True, False]


def test_sync_changes_over_several_syncs_match_the_reference():
  # Every sync moves weights, so `previous` must advance from sync to sync
  # for the fractions to agree after the first one.
  params, grads_seq, k = make_params(), make_grads(8), 2
  got = run_laperm(laperm_jax.laperm(optax.adam(0.05), k, track_changes=True),
                   params, grads_seq)
  want = reference.trajectory(params, grads_seq, reference.Adam(0.05), k,
                              KERNELS)
  pools = {key: reference.pool_of(params[key]) for key in KERNELS}
  previous = {key: params[key] for key in KERNELS}
  total = sum(params[key].size for key in KERNELS)
  fractions = []
  for (_, state), (want_params, synced) in zip(got, want):
    if not synced:
      continue
    exact = {key: reference.reconnect(want_params[key], pools[key])
             for key in KERNELS}
    changed = sum(np.sum(previous[key] != exact[key]) for key in KERNELS)
    created = sum(np.sum((previous[key] == 0) & (exact[key] != 0))
                  for key in KERNELS)
    removed = sum(np.sum((previous[key] != 0) & (exact[key] == 0))
                  for key in KERNELS)
    changes = state.changes
    assert changed > 0
    fractions.append(float(changes.changed_fraction))
    np.testing.assert_allclose(fractions[-1], changed / total, rtol=1e-6)
    assert (int(changes.created), int(changes.removed)) == (created, removed)
    for key in KERNELS:
      np.testing.assert_array_equal(changes.previous[key], exact[key])
    assert isinstance(changes.previous['bias'], optax.MaskedNode)
    previous = exact
  assert len(fractions) >= 3


def test_syncs_land_on_multiples_of_k_and_pool_never_changes():
  params, grads_seq = make_params(), make_grads(9)
  history = run_laperm(laperm_jax.laperm(optax.adam(0.1), 4), params,
                       grads_seq)
  pool0 = history[0][1].pool
  previous = params
  for step, (p, state) in enumerate(history, start=1):
    synced = step % 4 == 0
    assert bool(laperm_jax.has_synced(state)) == synced, step
    assert int(state.steps_since_sync) == step % 4
    exact = laperm_jax.exact_params(state, p)
    assert all(jax.tree.leaves(
        laperm_jax.is_permutation_of_pool(exact, state.pool)))
    for key in KERNELS:
      # On a sync step every kernel weight is its pool value up to the
      # rounding of p + (q - p) (one ulp of max(|p|, |q|)); between syncs
      # Adam moves the weights off the pool values.
      gap = np.abs(p[key] - exact[key])
      bound = np.spacing(np.maximum(np.abs(previous[key]),
                                    np.abs(exact[key])))
      if synced:
        assert np.all(gap <= bound), f'step {step}, {key}'
      else:
        assert np.mean(gap > bound) > 0.5, f'step {step}, {key}'
      np.testing.assert_array_equal(state.pool[key].values,
                                    pool0[key].values)
    assert isinstance(state.pool['bias'], optax.MaskedNode)
    previous = p


def test_non_kernels_follow_the_inner_optimizer_alone():
  params, grads_seq = make_params(), make_grads(4)
  got = run_laperm(laperm_jax.laperm(optax.sgd(0.1), 2), params, grads_seq)
  plain = dict(params)
  for grads in grads_seq:
    plain = {k: (plain[k] - np.float32(0.1) * grads[k]).astype(np.float32)
             for k in plain}
  for key in ('bias', 'norm_scale'):  # ulps apart where XLA fuses an FMA
    np.testing.assert_allclose(got[-1][0][key], plain[key], rtol=1e-6,
                               atol=1e-7)


def test_apply_updates_error_bound_and_exact_cases():
  # Values spread over many binades so that p + (q - p) rounds.
  rng = np.random.default_rng(3)
  kernel = (rng.standard_cauchy((64, 8)) * 10.0 ** rng.integers(
      -6, 6, (64, 8))).astype(np.float32)
  kernel[::5] = 0.0
  params = {'w': jnp.asarray(kernel)}
  tx = laperm_jax.laperm(optax.sgd(1.0), 1)
  state = tx.init(params)
  grads = {'w': jnp.asarray(rng.normal(size=kernel.shape).astype(np.float32)
                            * np.abs(kernel))}
  updates, state = tx.update(grads, state, params)
  applied = np.asarray(optax.apply_updates(params, updates)['w'])
  candidate = kernel - np.asarray(grads['w'])
  exact = reference.reconnect(candidate, reference.pool_of(kernel))
  np.testing.assert_array_equal(
      np.asarray(laperm_jax.reconnect({'w': jnp.asarray(candidate)},
                                      state.pool)['w']), exact)
  bound = np.spacing(np.maximum(np.abs(kernel), np.abs(exact)))
  assert np.all(np.abs(applied - exact) <= bound)
  exact_cases = (exact == 0) | (exact == kernel)
  assert exact_cases.any()
  np.testing.assert_array_equal(applied[exact_cases], exact[exact_cases])
  # An exact export: reconnecting the applied weights gives pool values.
  exported = laperm_jax.reconnect({'w': jnp.asarray(applied)}, state.pool)
  assert bool(laperm_jax.is_permutation_of_pool(exported, state.pool)['w'])


def test_schedule_counts_from_last_sync():
  def schedule(count):
    return jnp.where(count < 4, 2, 3)
  params = {'w': jnp.asarray(make_params()['dense'])}
  tx = laperm_jax.laperm(optax.sgd(0.1), schedule)
  state = tx.init(params)
  update = jax.jit(tx.update)  # one program for the ten steps
  synced_steps = []
  for step in range(1, 11):
    grads = {'w': jnp.ones_like(params['w']) * step}
    _, state = update(grads, state, params)
    if int(state.steps_since_sync) == 0:
      synced_steps.append(step)
  # k = 2 while count < 4 (calls 1..4), then k = 3 counted from the last sync.
  assert synced_steps == [2, 4, 7, 10]


def test_reset_inner_state_only_at_syncs():
  params = {'w': jnp.asarray(make_params()['dense'])}
  grads = {'w': jnp.ones_like(params['w'])}
  for reset in (False, True):
    tx = laperm_jax.laperm(optax.adam(0.1), 2, reset_inner_state=reset)
    state = tx.init(params)
    _, state = tx.update(grads, state, params)
    assert int(state.inner_state[0].count) == 1
    _, state = tx.update(grads, state, params)
    assert int(state.inner_state[0].count) == (0 if reset else 2)


def test_chain_with_clipping_inside_and_outside():
  params, grads_seq = make_params(), make_grads(4)
  outside = optax.chain(optax.clip_by_global_norm(1.0),
                        laperm_jax.laperm(optax.adam(0.05), 2))
  inside = laperm_jax.laperm(
      optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.05)), 2)
  got_outside = run_laperm(outside, params, grads_seq)[-1][0]
  got_inside = run_laperm(inside, params, grads_seq)[-1][0]
  for key in params:
    np.testing.assert_allclose(got_outside[key], got_inside[key], rtol=1e-6)
  pool = laperm_jax.sorted_pool({k: jnp.asarray(v) for k, v in params.items()})
  assert all(jax.tree.leaves(laperm_jax.is_permutation_of_pool(
      laperm_jax.reconnect(got_inside, pool), pool)))


def test_jit_does_not_retrace():
  params = {k: jnp.asarray(v) for k, v in make_params().items()}
  tx = laperm_jax.laperm(optax.adam(1e-2), 2)
  traces = []

  @jax.jit
  def step(params, state, grads):
    traces.append(None)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for grads in make_grads(5):
    params, state = step(params, state, grads)
  assert len(traces) == 1


def test_eval_shape_and_map_params():
  params = {k: jnp.asarray(v) for k, v in make_params().items()}
  tx = laperm_jax.laperm(optax.adam(1e-2), 2)
  shapes = jax.eval_shape(tx.init, params)
  assert isinstance(shapes, laperm_jax.LaPermState)
  assert shapes.pool['conv'].values.shape == (2, 2, 3, 4)
  state = tx.init(params)
  doubled = optax.tree.map_params(tx.init, lambda p: p * 2, state)
  np.testing.assert_array_equal(doubled.pool['dense'].values,
                                2 * np.asarray(state.pool['dense'].values))


def sorts_per_path(module) -> tuple[int, int]:
  """(fewest, most) sorts a run of a lowered StableHLO module can execute.

  A ``stablehlo.case`` / ``stablehlo.if`` runs one of its regions: the fewest
  sorts take its cheapest branch, the most its dearest. Calls are followed
  into the callee. A sort placed outside every branching op (sorting on every
  step and choosing with ``jnp.where``) counts in both numbers.
  """
  functions = {str(op.attributes['sym_name']).strip('"'): op
               for op in module.body.operations}

  def in_block(block):
    fewest = most = 0
    for op in block.operations:
      low, high = in_op(op.operation)
      fewest, most = fewest + low, most + high
    return fewest, most

  def in_region(region):
    fewest = most = 0
    for block in region.blocks:
      low, high = in_block(block)
      fewest, most = fewest + low, most + high
    return fewest, most

  def in_op(op):
    name = op.name
    if name == 'func.call':
      callee = str(op.attributes['callee']).lstrip('@')
      return in_region(functions[callee].regions[0])
    branches = [in_region(region) for region in op.regions]
    own = int(name == 'stablehlo.sort')
    if name in ('stablehlo.case', 'stablehlo.if'):
      return (own + min(b[0] for b in branches),
              own + max(b[1] for b in branches))
    # Any other op with regions (a sort's comparator, a while loop) runs them.
    return (own + sum(b[0] for b in branches),
            own + sum(b[1] for b in branches))

  return in_region(functions['main'].regions[0])


@pytest.mark.parametrize('track_changes', [False, True])
def test_non_sync_steps_do_not_sort(track_changes):
  params = {k: jnp.asarray(v) for k, v in make_params().items()}
  tx = laperm_jax.laperm(optax.adam(1e-2), 3, track_changes=track_changes)
  state = tx.init(params)
  module = jax.jit(tx.update).lower(params, state, params).compiler_ir(
      'stablehlo')
  fewest, most = sorts_per_path(module)
  assert fewest == 0  # a non-sync step runs no sort at all
  assert most >= len(KERNELS)  # a sync sorts every reconnected leaf


def test_sort_counter_sees_a_sort_outside_the_cond():
  # The counter itself: a sort chosen by jnp.where runs on every path.
  def where_sort(x, flag):
    return jnp.where(flag, jnp.sort(x), x)

  def cond_sort(x, flag):
    return jax.lax.cond(flag, jnp.sort, lambda v: v, x)

  x, flag = jnp.zeros(5), jnp.bool_(True)
  for fn, want in ((where_sort, (1, 1)), (cond_sort, (0, 1))):
    module = jax.jit(fn).lower(x, flag).compiler_ir('stablehlo')
    assert sorts_per_path(module) == want, fn.__name__


def test_vector_axes_for_out_in_layout():
  rng = np.random.default_rng(5)
  w = rng.normal(size=(3, 6)).astype(np.float32)  # Equinox Linear: (out, in)
  params = {'w': jnp.asarray(w)}
  pool = laperm_jax.sorted_pool(params, vector_axes=-1)
  np.testing.assert_array_equal(pool['w'].values, np.sort(w, axis=1))
  current = rng.normal(size=w.shape).astype(np.float32)
  got = laperm_jax.reconnect({'w': jnp.asarray(current)}, pool,
                             vector_axes=-1)
  np.testing.assert_array_equal(
      got['w'], reference.reconnect(current, np.sort(w, axis=1), axes=(1,)))


def test_sparse_and_shared_value_init():
  params = {'w': jnp.ones((200, 50)), 'b': jnp.ones(50)}
  key = jax.random.key(0)
  sparse = laperm_jax.sparse_init(key, params, {'w': 0.3, 'b': 1.0})
  assert 0.27 < float(jnp.mean(sparse['w'] != 0)) < 0.33
  np.testing.assert_array_equal(sparse['b'], params['b'])
  agnostic = laperm_jax.shared_value_init(key, params, 0.03, 0.25)
  values = np.unique(np.asarray(agnostic['w']))
  np.testing.assert_array_equal(values, np.array([0, 0.03], np.float32))
  # Zeros are part of the pool: a sync keeps each column's zero count.
  tx = laperm_jax.laperm(optax.adam(0.1), 1)
  state = tx.init(agnostic)
  grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape), agnostic)
  updates, _ = tx.update(grads, state, agnostic)
  synced = optax.apply_updates(agnostic, updates)
  np.testing.assert_array_equal(jnp.sum(synced['w'] == 0, axis=0),
                                jnp.sum(agnostic['w'] == 0, axis=0))
  assert not np.array_equal(synced['w'], agnostic['w'])


def test_permutation_check_is_exact_for_subnormals_and_nan():
  w = jnp.array([[1e-40], [0.0], [-1e-41], [jnp.nan]])
  pool = laperm_jax.sorted_pool({'w': w})
  np.testing.assert_array_equal(
      pool['w'].values.ravel(), np.array([-1e-41, 0.0, 1e-40, np.nan], np.float32))
  assert bool(laperm_jax.is_permutation_of_pool({'w': w[::-1]}, pool)['w'])
  flushed = jnp.array([[0.0], [0.0], [-1e-41], [jnp.nan]])
  assert not bool(laperm_jax.is_permutation_of_pool({'w': flushed}, pool)['w'])
