"""Bad input and edge cases: clear errors, or defined and documented behaviour.

Every error must name the argument or the leaf (its tree path) it is about.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import laperm_jax
from laperm_jax import laperm
from tests import reference

KERNEL = jnp.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5], [-2.0, 3.0, 0.0],
                    [0.75, -0.25, 1.0]])
PARAMS = {'dense': {'kernel': KERNEL, 'bias': jnp.zeros(3)}}


def grads_like(params, scale=1.0):
  return jax.tree.map(lambda p: scale * jnp.cos(3.0 * p + 1.0), params)


def steps(tx, params, num, grads_fn=grads_like, jit=True):
  """``num`` update steps; returns (params, state, list of params)."""
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  history = []
  for _ in range(num):
    updates, state = update(grads_fn(params), state, params)
    params = optax.apply_updates(params, updates)
    history.append(params)
  return params, state, history


def within_bound(w, q, p):
  """The documented apply_updates bound: |w - q| <= ulp(max(|p|, |q|))."""
  w, q, p = (np.asarray(x, np.float64) for x in (w, q, p))
  big = np.maximum(np.abs(p), np.abs(q))
  dtype = np.finfo(np.float32)
  ulp = np.where(big > 0, 2.0 ** (np.floor(np.log2(np.where(big > 0, big, 1)))
                                  - dtype.nmant), 0)
  return np.all(np.abs(w - q) <= ulp)


# ---------------------------------------------------------------- arguments


def test_params_missing_at_update():
  tx = laperm(optax.sgd(0.1), 2)
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match=r'needs the current params.*'
                                       r'tx.update\(grads, state, params\)'):
    tx.update(grads_like(PARAMS), state)


@pytest.mark.parametrize('bad, error, message', [
    (0, ValueError, 'sync_period must be positive, got 0'),
    (-3, ValueError, 'sync_period must be positive, got -3'),
    (2.0, TypeError, 'sync_period must be a positive int or a schedule'),
    (np.float32(2), TypeError, 'sync_period must be a positive int'),
    (True, TypeError, 'sync_period must be a positive int, got True'),
    (np.bool_(True), TypeError, 'sync_period must be a positive int'),
    (jnp.array(2.0), TypeError, 'integer scalar array'),
    (jnp.array([2, 3]), TypeError, 'integer scalar array'),
    (jnp.array(0), ValueError, 'must be positive'),
    ('10', TypeError, 'sync_period must be a positive int'),
])
def test_bad_sync_period(bad, error, message):
  with pytest.raises(error, match=message):
    laperm(optax.sgd(0.1), bad)


def test_integer_arrays_are_fine_sync_periods():
  for good in (np.int64(2), jnp.array(2, jnp.int32), 2):
    _, state, _ = steps(laperm(optax.sgd(0.1), good), PARAMS, 2, jit=False)
    assert int(state.steps_since_sync) == 0


@pytest.mark.parametrize('value', [0, -1, 1.5, True])
def test_schedule_with_a_bad_concrete_value_fails_at_init(value):
  tx = laperm(optax.sgd(0.1), lambda count: value)
  with pytest.raises((ValueError, TypeError),
                     match=r'schedule returned .* at count 0: sync_period'):
    tx.init(PARAMS)


def test_schedule_bad_later_fails_eagerly_and_means_k_1_under_jit():
  schedule = lambda count: jnp.where(count < 2, 3, 0)
  tx = laperm(optax.sgd(0.1), schedule)
  state = tx.init(PARAMS)  # k(0) = 3 is fine
  params = PARAMS
  for _ in range(2):
    updates, state = tx.update(grads_like(params), state, params)
    params = optax.apply_updates(params, updates)
  with pytest.raises(ValueError, match=r'returned .*0.* at count 2: '
                                       r'sync_period must be positive'):
    tx.update(grads_like(params), state, params)
  # Under jit the value is a tracer: a traced k < 1 behaves as k = 1.
  _, state, history = steps(tx, PARAMS, 5)
  for count in (2, 3, 4):
    q = laperm_jax.reconnect(history[count], state.pool)
    assert within_bound(history[count]['dense']['kernel'],
                        q['dense']['kernel'], history[count - 1]['dense'][
                            'kernel'])
  assert int(state.steps_since_sync) == 0
  k1 = steps(laperm(optax.sgd(0.1), lambda c: jnp.where(c < 2, 3, 1)),
             PARAMS, 5)[0]
  np.testing.assert_array_equal(history[-1]['dense']['kernel'],
                                k1['dense']['kernel'])


@pytest.mark.parametrize('axes, message', [
    (2, r"'dense/kernel': vector axis 2 is out of range for a leaf of rank 2"),
    (-3, r"'dense/kernel': vector axis -3 is out of range"),
    ((0, -2), r"'dense/kernel': vector_axes \(0, -2\) repeats an axis"),
    ((), r"'dense/kernel': vector_axes must name at least one axis"),
    (1.0, r"'dense/kernel': vector_axes must be None, an int or a tuple"),
    ({'dense': {'kernel': 'rows', 'bias': None}},
     r"'dense/kernel': vector_axes must be None, an int or a tuple"),
])
def test_bad_vector_axes_name_the_leaf(axes, message):
  with pytest.raises((ValueError, TypeError), match=message):
    laperm(optax.sgd(0.1), 2, vector_axes=axes).init(PARAMS)


@pytest.mark.parametrize('mask, error, message', [
    ({'kernel': True}, ValueError, r'mask must be a pytree prefix of params'),
    ({'dense': [True, False]}, ValueError, 'mask must be a pytree prefix'),
    ({'dense': {'kernel': 1, 'bias': False}}, TypeError,
     r"mask entry for 'dense/kernel' must be a Python bool"),
    (lambda p: {'x': True}, ValueError, 'mask must be a pytree prefix'),
])
def test_mask_of_the_wrong_structure(mask, error, message):
  with pytest.raises(error, match=message):
    laperm(optax.sgd(0.1), 2, mask=mask).init(PARAMS)


@pytest.mark.parametrize('leaf, error, message', [
    (jnp.ones((3, 2), jnp.int32), TypeError,
     (r"'odd': only floating-point leaves can be reconnected, this one is "
      r'int32; exclude it with `mask`')),
    (jnp.ones((3, 2), bool), TypeError, r"'odd': .* this one is bool"),
    (jnp.ones((3, 2), jnp.complex64), TypeError,
     r"'odd': .* this one is complex64"),
    (jnp.float32(1.0), ValueError,
     r"'odd': a scalar leaf has no weight vector to reconnect; exclude it"),
])
def test_unreconnectable_leaves_selected_by_mask(leaf, error, message):
  params = {'odd': leaf, 'w': KERNEL}
  tx = laperm(optax.sgd(0.1), 2, mask={'odd': True, 'w': True})
  with pytest.raises(error, match=message):
    tx.init(params)
  with pytest.raises(error, match=message):
    laperm_jax.sorted_pool(params, mask=True)


def test_default_mask_skips_what_cannot_be_reconnected():
  params = {'i': jnp.ones((3, 2), jnp.int32), 'c': jnp.ones((3, 2),
                                                            jnp.complex64),
            's': jnp.float32(2.0), 'b': jnp.ones(2), 'w': KERNEL}
  tx = laperm(optax.identity(), 1)
  state = tx.init(params)
  assert [k for k, v in state.pool.items()
          if not isinstance(v, optax.MaskedNode)] == ['w']
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, state, params)
  assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(
      lambda p: p.dtype, params)


# ------------------------------------------------------- params at update


def test_params_of_another_structure_at_update():
  tx = laperm(optax.sgd(0.1), 2)
  state = tx.init(PARAMS)
  other = {'dense': {'kernel': KERNEL}}
  with pytest.raises(ValueError, match=r"leaves missing from params: "
                                       r"\[\"'dense/bias'\"\]"):
    tx.update(other, state, other)
  renamed = {'dense': {'kernel': KERNEL, 'bias': jnp.zeros(3)},
             'head': {'kernel': KERNEL}}
  with pytest.raises(ValueError, match=r"not in the pool: \[\"'head/kernel'"):
    tx.update(renamed, state, renamed)


def test_params_of_another_shape_or_dtype_at_update():
  tx = laperm(optax.sgd(0.1), 2)
  state = tx.init(PARAMS)
  wide = {'dense': {'kernel': jnp.ones((4, 5)), 'bias': jnp.zeros(3)}}
  with pytest.raises(ValueError, match=r"'dense/kernel': shape \(4, 5\) does "
                                       r'not match its pool \(4, 3\)'):
    tx.update(wide, state, wide)
  half = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
  with pytest.raises(TypeError, match=r"'dense/kernel': dtype bfloat16 does "
                                      r'not match its pool \(float32\)'):
    tx.update(half, state, half)
  with pytest.raises(ValueError, match='shape'):
    jax.jit(tx.update)(wide, state, wide)


# ------------------------------------------------------------ edge cases


def test_empty_trees():
  # (``params=None`` is how a missing ``params`` argument looks: an error.)
  for empty in ({}, [], ()):
    tx = laperm(optax.adam(0.1), 1)
    state = tx.init(empty)
    updates, state = jax.jit(tx.update)(empty, state, empty)
    assert jax.tree.leaves(updates) == []
    assert int(state.count) == 1 and int(state.steps_since_sync) == 0
    assert laperm_jax.reconnect(empty, state.pool) == empty


@pytest.mark.parametrize('shape', [(0, 3), (4, 0), (0,), (2, 0, 3)])
def test_zero_size_leaves(shape):
  params = {'empty': jnp.zeros(shape), 'w': KERNEL}
  tx = laperm(optax.adam(0.1), 2, mask=True)
  out, state, _ = steps(tx, params, 4)
  assert out['empty'].shape == shape and state.pool['empty'].values.shape == shape
  np.testing.assert_array_equal(
      laperm_jax.reconnect(out, state.pool)['w'],
      reference.reconnect(np.asarray(out['w']),
                          np.asarray(state.pool['w'].values)))


def test_none_leaves_pass_through():
  params = {'w': KERNEL, 'nothing': None, 'layers': [None, {'k': KERNEL}]}
  tx = laperm(optax.adam(0.1), 2)
  out, state, _ = steps(tx, params, 4)
  assert out['nothing'] is None and out['layers'][0] is None
  assert state.pool['nothing'] is None
  assert all(jax.tree.leaves(laperm_jax.is_permutation_of_pool(
      laperm_jax.reconnect(out, state.pool), state.pool)))


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_half_precision_params(dtype):
  params = jax.tree.map(lambda p: p.astype(dtype), PARAMS)
  tx = laperm(optax.adam(0.1), 2)
  out, state, _ = steps(tx, params, 4)
  assert jax.tree.map(lambda p: p.dtype, out) == jax.tree.map(
      lambda p: p.dtype, params)
  assert state.pool['dense']['kernel'].values.dtype == dtype
  pool = np.asarray(state.pool['dense']['kernel'].values, np.float32)
  np.testing.assert_array_equal(
      pool, reference.pool_of(np.asarray(KERNEL.astype(dtype), np.float32)))
  exact = laperm_jax.reconnect(out, state.pool)['dense']['kernel']
  assert exact.dtype == dtype
  np.testing.assert_array_equal(np.sort(np.asarray(exact, np.float32), 0),
                                pool)
  # Through apply_updates, within a couple of half-precision ulps.
  np.testing.assert_allclose(np.asarray(out['dense']['kernel'], np.float32),
                             np.asarray(exact, np.float32), rtol=2 ** -6,
                             atol=0)


# ------------------------------------------------------- non-finite values


def test_non_finite_candidates_rank_in_a_defined_order():
  pool = laperm_jax.sorted_pool({'w': jnp.array([[1.], [2.], [3.], [4.],
                                                 [5.]])})
  current = {'w': jnp.array([[jnp.nan], [jnp.inf], [0.], [-jnp.inf],
                             [-jnp.nan]])}
  # -inf < 0 < +inf < NaN == NaN (ties by position).
  np.testing.assert_array_equal(
      laperm_jax.reconnect(current, pool)['w'][:, 0], [4., 3., 2., 1., 5.])


def nan_at_step(bad_step):
  """Gradients that are NaN on (1-based) call ``bad_step``."""
  calls = {'n': 0}
  def grads_fn(params):
    calls['n'] += 1
    scale = jnp.nan if calls['n'] == bad_step else 1.0
    return grads_like(params, scale)
  return grads_fn


def test_apply_if_finite_inside_stops_divergence_even_at_a_sync():
  inner = optax.apply_if_finite(optax.adam(0.1), max_consecutive_errors=3)
  tx = laperm(inner, 2)
  out, state, history = steps(tx, PARAMS, 4, grads_fn=nan_at_step(2),
                              jit=False)
  assert int(state.inner_state.total_notfinite) == 1
  assert all(bool(jnp.all(jnp.isfinite(x)))
             for x in jax.tree.leaves((out, state)))
  # The skipped sync step left the weights where they were.
  np.testing.assert_array_equal(history[1]['dense']['kernel'],
                                laperm_jax.reconnect(history[0],
                                                     state.pool)['dense'][
                                                         'kernel'])


def test_apply_if_finite_outside_skips_the_whole_laperm_step():
  # apply_if_finite checks the incoming gradients, so around LaPerm it skips
  # the step before LaPerm sees it: the counters do not advance and the due
  # sync moves to the next finite step.
  tx = optax.apply_if_finite(laperm(optax.adam(0.1), 2),
                             max_consecutive_errors=3)
  out, state, history = steps(tx, PARAMS, 3, grads_fn=nan_at_step(2),
                              jit=False)
  assert int(state.total_notfinite) == 1
  assert int(state.inner_state.count) == 2
  assert int(state.inner_state.steps_since_sync) == 0  # synced at call 3
  for a, b in zip(jax.tree.leaves(history[0]), jax.tree.leaves(history[1])):
    np.testing.assert_array_equal(a, b)
  assert all(bool(jnp.all(jnp.isfinite(x)))
             for x in jax.tree.leaves((out, state)))


def test_without_a_guard_a_sync_hides_a_nan_step():
  # Documented pitfall: the reconnected weights are finite pool values even
  # though the gradient was NaN; Adam's moments are NaN from then on.
  tx = laperm(optax.adam(0.1), 2)
  only_kernels = {'dense': {'kernel': KERNEL}}
  out, state, _ = steps(tx, only_kernels, 2, grads_fn=nan_at_step(2),
                        jit=False)
  assert bool(jnp.all(jnp.isfinite(out['dense']['kernel'])))
  assert bool(jnp.all(jnp.isnan(state.inner_state[0].mu['dense']['kernel'])))


# ------------------------------------------------------------ compositions


def test_vmap_over_an_ensemble_equals_member_runs_and_sorts_every_step():
  members = jnp.stack([KERNEL, -KERNEL, 2 * KERNEL])
  ensemble = {'dense': {'kernel': members, 'bias': jnp.zeros((3, 3))}}
  tx = laperm(optax.adam(0.1), 2)
  states = jax.vmap(tx.init)(ensemble)
  update = jax.jit(jax.vmap(tx.update))
  params = ensemble
  for _ in range(3):
    updates, states = update(jax.vmap(grads_like)(params), states, params)
    params = optax.apply_updates(params, updates)
  for i in range(3):
    def member_of(tree, i=i):
      return jax.tree.map(lambda x: x[i], tree)
    member = member_of(ensemble)
    expected, _, _ = steps(tx, member, 3)
    # Same ranks, hence the same pool values; Adam's arithmetic may round
    # differently when vectorised.
    np.testing.assert_allclose(params['dense']['kernel'][i],
                               expected['dense']['kernel'], rtol=1e-6,
                               atol=1e-6)
    pool = member_of(states.pool)
    np.testing.assert_array_equal(
        laperm_jax.reconnect(member_of(params),
                             pool)['dense']['kernel'],
        laperm_jax.reconnect(expected, pool)['dense']['kernel'])
  # The batched predicate turns the cond into a select: the sort is traced
  # into the unconditional path (it runs on every step).
  jaxpr = str(jax.make_jaxpr(jax.vmap(tx.update))(
      jax.vmap(grads_like)(ensemble), states, ensemble))
  # (The only conds left are the sort kernel's per-platform choices.)
  assert 'sort' in jaxpr
  assert jaxpr.count(' cond[') == jaxpr.count('branches_platforms')


def test_multisteps_counts_accumulated_steps():
  every = 2
  tx = optax.MultiSteps(laperm(optax.sgd(0.1), 2), every_k_schedule=every)
  state = tx.init(PARAMS)
  update = jax.jit(tx.update)  # one program for the eight micro-steps
  params = PARAMS
  for micro in range(1, 9):
    updates, state = update(grads_like(params), state, params)
    params = optax.apply_updates(params, updates)
    inner = state.inner_opt_state
    assert int(inner.count) == micro // every
    if micro % 4 == 0:  # k = 2 accumulated steps = 4 micro-steps
      assert int(inner.steps_since_sync) == 0
      exact = laperm_jax.reconnect(params, inner.pool)['dense']['kernel']
      np.testing.assert_allclose(params['dense']['kernel'], exact, atol=1e-6)


def test_inject_hyperparams_around_the_inner_optimizer():
  plain = laperm(optax.adam(0.1), 2)
  injected = laperm(optax.inject_hyperparams(optax.adam)(learning_rate=0.1),
                    2)
  a, _, _ = steps(plain, PARAMS, 5)
  b, state, _ = steps(injected, PARAMS, 5)
  # A traced learning rate compiles to slightly different arithmetic than a
  # constant one: equal up to rounding, with the same reconnections.
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
  assert float(state.inner_state.hyperparams['learning_rate']) == (
      pytest.approx(0.1))


def test_inject_hyperparams_around_laperm_makes_k_a_tracer():
  make = optax.inject_hyperparams(laperm, static_args=('inner',))
  injected = make(optax.adam(0.1), sync_period=3)
  plain = laperm(optax.adam(0.1), 3)
  a, _, _ = steps(plain, PARAMS, 7)
  b, state, _ = steps(injected, PARAMS, 7)  # jitted: sync_period is traced
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  # k can be changed in the state, as with any injected hyperparameter.
  state.hyperparams['sync_period'] = jnp.asarray(1, jnp.int32)
  _, state = jax.jit(injected.update)(grads_like(b), state, b)
  assert int(state.inner_state.steps_since_sync) == 0
  with pytest.raises(ValueError, match='sync_period must be positive'):
    make(optax.adam(0.1), sync_period=0).init(PARAMS)
