"""Orbax checkpoint and resume: bit-identical continuation, clear mismatches."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import laperm_jax
from tests import checkpoint_checks as run

ROOT = pathlib.Path(__file__).parents[1]


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """The uninterrupted run, and a checkpoint written mid-period."""
  directory = tmp_path_factory.mktemp('ckpt')
  tx = run.make_tx()
  params = run.make_params()
  state = tx.init(params)
  step = run.make_step(tx)  # one compiled step for the whole run
  mid_params, mid_state = run.train(step, params, state, 0, run.SAVE_AFTER)
  assert 0 < int(mid_state.steps_since_sync) < run.SYNC_PERIOD - 1 + 1
  run.save(directory, mid_params, mid_state)
  final = run.train(step, mid_params, mid_state, run.SAVE_AFTER,
                    run.TOTAL_STEPS)
  return directory, run.flat(*final), (mid_params, mid_state)


def test_resume_in_a_fresh_process_is_bit_identical(saved, tmp_path):
  directory, expected, _ = saved
  out = tmp_path / 'resumed.npz'
  # A fresh process that compiles every program itself.
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             JAX_ENABLE_COMPILATION_CACHE='false')
  proc = subprocess.run(
      [sys.executable, '-W', 'error',
       str(ROOT / 'tests' / 'checkpoint_checks.py'), 'resume', str(directory),
       str(out)],
      env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
      check=False)
  assert proc.returncode == 0, proc.stderr[-5000:]
  resumed = dict(np.load(out))
  assert sorted(resumed) == sorted(expected)
  assert any(k.startswith('state/pool') for k in expected)
  assert any('mu' in k for k in expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(resumed[key], value, err_msg=key)
    assert resumed[key].dtype == value.dtype, key


def test_restore_in_process_gives_a_laperm_state(saved):
  directory, _, (mid_params, mid_state) = saved
  params, state = run.restore(directory, run.make_tx(), run.make_params())
  assert isinstance(state, laperm_jax.LaPermState)
  assert jax.tree.structure(state) == jax.tree.structure(mid_state)
  for a, b in zip(jax.tree.leaves((params, state)),
                  jax.tree.leaves((mid_params, mid_state))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('overrides, message', [
    # Orbax itself refuses a target of another structure, naming the path.
    ({'mask': lambda p: jax.tree.map(lambda x: x.ndim >= 1, p)},
     r"pool'?, '?dense'?, '?bias"),
    ({'inner': optax.sgd(0.1)}, r'inner_state'),
    # Same structure, shapes and dtypes: check_state catches it.
    ({'vector_axes': -1},
     r'state.pool/(conv|dense)/kernel: the pool is not sorted along'),
])
def test_restoring_into_other_settings_fails_clearly(saved, overrides,
                                                     message):
  directory, _, _ = saved
  with pytest.raises(ValueError, match=message):
    run.restore(directory, run.make_tx(**overrides), run.make_params())


def test_restoring_for_another_tree_fails_clearly(saved):
  _, _, (mid_params, mid_state) = saved
  tx = run.make_tx()
  other = dict(mid_params, extra={'kernel': jnp.ones((2, 2))})
  with pytest.raises(ValueError, match=r'pool/extra/kernel'):
    laperm_jax.check_state(tx, mid_state, other)
  wider = jax.tree.map(lambda x: x, mid_params)
  wider['dense']['kernel'] = jnp.ones((6, 5))
  with pytest.raises(ValueError, match=r'state.*dense/kernel: shape \(6, 4\)'):
    laperm_jax.check_state(tx, mid_state, wider)


def test_check_state_rejects_dicts_and_bad_counters(saved):
  _, _, (mid_params, mid_state) = saved
  tx = run.make_tx()
  with pytest.raises(TypeError, match='eval_shape'):
    laperm_jax.check_state(tx, mid_state._asdict(), mid_params)
  bad = mid_state._replace(steps_since_sync=jnp.int32(99))
  with pytest.raises(ValueError, match='steps_since_sync'):
    laperm_jax.check_state(tx, bad, mid_params)
  with pytest.raises(ValueError, match='holds no LaPermState'):
    laperm_jax.check_state(optax.adam(1e-3), mid_state, mid_params)


def test_check_state_names_pool_leaves_of_another_mask(saved):
  _, _, (mid_params, mid_state) = saved
  tx = run.make_tx(mask=lambda p: jax.tree.map(lambda x: x.ndim >= 1, p))
  with pytest.raises(ValueError, match=r'state lacks: .*pool/dense/bias'):
    laperm_jax.check_state(tx, mid_state, mid_params)
