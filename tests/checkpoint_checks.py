"""A small LaPerm run that can be checkpointed with Orbax and resumed.

``test_checkpoint.py`` runs it uninterrupted, saves it mid-period, and
resumes it in a fresh process (``python tests/checkpoint_checks.py resume
CKPT_DIR OUT.npz``): the resumed run must be bit-identical.
"""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import laperm_jax

SYNC_PERIOD = 3
TOTAL_STEPS = 8  # syncs after steps 3 and 6
SAVE_AFTER = 4  # mid-period: one step after a sync, two before the next


def make_params():
  key_a, key_b = jax.random.split(jax.random.key(42))
  return {'dense': {'kernel': jax.random.normal(key_a, (6, 4)),
                    'bias': jnp.zeros(4)},
          'conv': {'kernel': jax.random.normal(key_b, (3, 3, 2, 4))}}


def make_tx(**overrides):
  settings = {'inner': optax.adam(0.05), 'sync_period': SYNC_PERIOD}
  settings.update(overrides)
  return laperm_jax.laperm(**settings)


def grads_at(params, step):
  return jax.tree.map(lambda p: jnp.sin(5.0 * p + 0.7 * step), params)


def make_step(tx):
  @jax.jit
  def step(params, state, step_index):
    updates, state = tx.update(grads_at(params, step_index), state, params)
    return optax.apply_updates(params, updates), state
  return step


def train(step, params, state, first, last):
  """Steps ``first`` to ``last`` of ``step`` (a :func:`make_step`)."""
  for index in range(first, last):
    params, state = step(params, state, jnp.int32(index))
  return params, state


def save(directory, params, state):
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(pathlib.Path(directory).absolute() / 'params', params)
    checkpointer.save(pathlib.Path(directory).absolute() / 'state', state)
    checkpointer.wait_until_finished()


def restore(directory, tx, params_like):
  """Restores against abstract targets; returns (params, checked state)."""
  abstract_params = jax.eval_shape(lambda: params_like)
  abstract_state = jax.eval_shape(tx.init, abstract_params)
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(
        pathlib.Path(directory).absolute() / 'params', abstract_params)
    state = checkpointer.restore(
        pathlib.Path(directory).absolute() / 'state', abstract_state)
  return params, laperm_jax.check_state(tx, state, params)


def flat(params, state) -> dict[str, np.ndarray]:
  """Every leaf of params and state, by path, for bitwise comparison."""
  leaves = jax.tree_util.tree_flatten_with_path({'params': params,
                                                 'state': state})[0]
  return {jax.tree_util.keystr(p, simple=True, separator='/'): np.asarray(v)
          for p, v in leaves}


def resume(directory, out_path):
  tx = make_tx()
  params, state = restore(directory, tx, make_params())
  assert isinstance(state, laperm_jax.LaPermState), type(state)
  assert isinstance(state.inner_state[0], optax.ScaleByAdamState)
  assert isinstance(state.pool['dense']['bias'], optax.MaskedNode)
  assert int(state.count) == SAVE_AFTER
  params, state = train(make_step(tx), params, state, SAVE_AFTER,
                        TOTAL_STEPS)
  np.savez(out_path, **flat(params, state))


if __name__ == '__main__':
  assert sys.argv[1] == 'resume', sys.argv
  resume(sys.argv[2], sys.argv[3])
