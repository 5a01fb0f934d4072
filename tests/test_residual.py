"""laperm(..., carry_residual=beta): error feedback at syncs, against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import laperm_jax
from tests import reference
from tests.test_transform import KERNELS
from tests.test_transform import make_grads
from tests.test_transform import make_params
from tests.test_transform import run_laperm


def assert_exact_permutation_of(got: np.ndarray, initial: np.ndarray):
  """Independent NumPy check: every weight vector sorts to its initial one."""
  got_rows = reference.vector_rows(got, reference.default_axes(got.ndim))
  init_rows = reference.vector_rows(initial,
                                    reference.default_axes(initial.ndim))
  np.testing.assert_array_equal(np.sort(got_rows, axis=1),
                                np.sort(init_rows, axis=1))


@pytest.mark.parametrize('beta', [0.5, 1.0])
@pytest.mark.parametrize('k', [1, 3])
@pytest.mark.parametrize('inner_name', ['sgd', 'adam'])
def test_trajectory_matches_numpy_reference(beta, k, inner_name):
  params, grads_seq = make_params(), make_grads(9)
  if inner_name == 'sgd':
    tx_inner, ref_inner = optax.sgd(0.3), reference.SGD(0.3)
  else:
    tx_inner, ref_inner = optax.adam(0.05), reference.Adam(0.05)
  tx = laperm_jax.laperm(tx_inner, k, carry_residual=beta)
  got = run_laperm(tx, params, grads_seq)
  want = reference.trajectory(params, grads_seq, ref_inner, k, KERNELS,
                              carry_residual=beta)
  plain = reference.trajectory(params, grads_seq, ref_inner, k, KERNELS)
  differs_from_paper = False
  for step, ((got_params, state), (want_params, synced)) in enumerate(
      zip(got, want), start=1):
    for key in params:
      np.testing.assert_allclose(got_params[key], want_params[key],
                                 rtol=1e-5, atol=1e-6,
                                 err_msg=f'step {step}, {key}')
    if synced:
      exact = laperm_jax.exact_params(state, {k_: jnp.asarray(v) for k_, v
                                              in got_params.items()})
      for key in KERNELS:
        np.testing.assert_array_equal(
            np.asarray(exact[key]),
            reference.reconnect(want_params[key],
                                reference.pool_of(params[key])))
        assert_exact_permutation_of(np.asarray(exact[key]), params[key])
        differs_from_paper |= not np.array_equal(
            reference.reconnect(want_params[key],
                                reference.pool_of(params[key])),
            reference.reconnect(plain[step - 1][0][key],
                                reference.pool_of(params[key])))
  # The residual changes which arrangement is reached (else the test above
  # would not see a missing residual).
  assert differs_from_paper


def test_shared_value_vector_escapes_where_the_paper_sync_is_stuck():
  # One {0, 1} vector; SGD pushes entry 0 up by 0.6 per period of k = 2:
  # less than the gap w = 1, so the paper's sync never moves it. With the
  # residual the pushes add up and entry 0 overtakes entry 1 at sync 2.
  params = {'w': jnp.array([[0.], [1.], [0.]])}
  grads = {'w': jnp.array([[-1.], [0.], [0.]])}

  def run(beta):
    tx = laperm_jax.laperm(optax.sgd(0.3), 2, carry_residual=beta)
    state, p, synced = tx.init(params), params, []
    update = jax.jit(tx.update)  # one program for the six steps
    for step in range(1, 7):
      updates, state = update(grads, state, p)
      p = optax.apply_updates(p, updates)
      if step % 2 == 0:
        synced.append(np.asarray(laperm_jax.exact_params(state, p)['w'][:, 0]))
    return synced, state

  paper, _ = run(0.0)
  assert all(np.array_equal(s, [0., 1., 0.]) for s in paper)
  carried, state = run(1.0)
  np.testing.assert_array_equal(carried[0], [0., 1., 0.])
  np.testing.assert_array_equal(carried[1], [1., 0., 0.])
  np.testing.assert_array_equal(carried[2], [1., 0., 0.])
  # Entry 1 lost its w but keeps its latent 1.0; entry 0 keeps 1.8 - 1.
  np.testing.assert_allclose(np.asarray(state.residual['w'][:, 0]),
                             [0.8, 1.0, 0.0], atol=1e-6)


def test_zero_is_the_paper_and_keeps_no_state():
  params, grads_seq = make_params(), make_grads(6)
  default = run_laperm(laperm_jax.laperm(optax.adam(0.05), 2), params,
                       grads_seq)
  zero = run_laperm(laperm_jax.laperm(optax.adam(0.05), 2, carry_residual=0),
                    params, grads_seq)
  for (a, sa), (b, sb) in zip(default, zero):
    for key in params:
      np.testing.assert_array_equal(a[key], b[key])
    assert isinstance(sb.residual, optax.EmptyState)


def test_residual_state_layout_and_non_sync_steps():
  params, grads_seq = make_params(), make_grads(5)
  tx = laperm_jax.laperm(optax.adam(0.05), 3, carry_residual=0.9)
  history = run_laperm(tx, params, grads_seq)
  state0 = tx.init({k: jnp.asarray(v) for k, v in params.items()})
  for key in KERNELS:
    np.testing.assert_array_equal(state0.residual[key], 0.0)
  for key in ('bias', 'norm_scale'):  # not reconnected: no residual
    assert isinstance(state0.residual[key], optax.MaskedNode)
  # Steps 1, 2: no sync, residual stays zero; step 3 syncs; 4, 5 keep it.
  for step in (1, 2):
    np.testing.assert_array_equal(history[step - 1][1].residual['dense'], 0.)
  after_sync = np.asarray(history[2][1].residual['dense'])
  assert np.any(after_sync != 0)
  for step in (4, 5):
    np.testing.assert_array_equal(history[step - 1][1].residual['dense'],
                                  after_sync)


def test_jit_eval_shape_and_check_state():
  params = {k: jnp.asarray(v) for k, v in make_params().items()}
  tx = laperm_jax.laperm(optax.adam(0.05), 2, carry_residual=1.0)
  shapes = jax.eval_shape(tx.init, params)
  assert shapes.residual['dense'].shape == (5, 4)
  state = tx.init(params)
  for grads in make_grads(4):
    updates, state = jax.jit(tx.update)(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert laperm_jax.check_state(tx, state, params) is state
  # A residual of another dtype does not fit this transformation.
  narrowed = state._replace(residual=jax.tree.map(
      lambda r: r.astype(jnp.bfloat16), state.residual))
  with pytest.raises(ValueError, match=r'state\.residual/conv: .* bfloat16'):
    laperm_jax.check_state(tx, narrowed, params)


def test_inject_hyperparams_makes_the_carry_a_state_value():
  params, grads_seq = make_params(), make_grads(6)
  make = optax.inject_hyperparams(laperm_jax.laperm, static_args=('inner',))
  injected = make(optax.adam(0.05), sync_period=2, carry_residual=0.5)
  got = run_laperm(injected, params, grads_seq)
  want = run_laperm(laperm_jax.laperm(optax.adam(0.05), 2,
                                      carry_residual=0.5), params, grads_seq)
  for (a, _), (b, _) in zip(got, want):
    for key in params:
      np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7)
  # Without the argument nothing is injected and no residual is kept.
  plain = make(optax.adam(0.05), sync_period=2).init(
      {k: jnp.asarray(v) for k, v in params.items()})
  assert 'carry_residual' not in plain.hyperparams
  assert isinstance(plain.inner_state.residual, optax.EmptyState)


@pytest.mark.parametrize('bad, error', [
    (-0.1, ValueError), (1.5, ValueError), (True, TypeError),
    ('0.5', TypeError), (jnp.ones(2), TypeError),
    (jnp.asarray(2.0), ValueError)])
def test_invalid_carry_residual(bad, error):
  with pytest.raises(error, match='carry_residual'):
    laperm_jax.laperm(optax.adam(1e-3), 2, carry_residual=bad)
