"""What a non-sync step computes: the inner update, fused, and no copies.

A value that leaves a ``lax.cond`` is a materialised buffer and XLA does not
fuse across a conditional, so the inner update must not pass through the
cond that holds the sync (that would cost a write and a read of the
reconnected params per step), and the cond's reads of the inner state must
come before the state's in-place update (else XLA copies every moment).
"""

import re

import jax
from jax.extend import core as jex_core
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import laperm_jax

SHAPES = {'w1': (48, 32), 'w2': (32, 10)}


def make_params():
  rng = np.random.default_rng(0)
  params = {name: jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32)
            for name, shape in SHAPES.items()}
  params['bias'] = jnp.zeros(10, jnp.float32)
  return params


def cond_operands_computed_from(jaxpr, inputs) -> list[str]:
  """Operands of top-level conds that are computed (not passed) from inputs.

  Every equation's outputs are taken to depend on all of its inputs.
  """
  derived, found = set(), []
  for eqn in jaxpr.eqns:
    reads = [v for v in eqn.invars if not isinstance(v, jex_core.Literal)]
    if eqn.primitive.name == 'cond':
      found += [str(v) for v in reads if v in derived]
    if any(v in derived or v in inputs for v in reads):
      derived.update(eqn.outvars)
  return found


@pytest.mark.parametrize('options', [
    {}, {'track_changes': True}, {'carry_residual': 0.5},
    {'reset_inner_state': True}])
def test_the_cond_reads_no_value_computed_from_the_gradients(options):
  params = make_params()
  tx = laperm_jax.laperm(optax.adam(1e-3), 3, **options)
  state = jax.eval_shape(tx.init, params)  # traced only: nothing compiles
  closed = jax.make_jaxpr(tx.update)(params, state, params)
  grad_inputs = set(closed.jaxpr.invars[:len(jax.tree.leaves(params))])
  conds = [e for e in closed.jaxpr.eqns if e.primitive.name == 'cond']
  assert conds  # the sync is a cond at the top level of the update
  # The sync cond takes the gradients as they came in (the sync branch runs
  # the inner update itself), never the inner update's result. With
  # reset_inner_state a second cond, after the update, re-initialises the
  # inner state from the final updates: only that one may read them.
  assert not cond_operands_computed_from(
      closed.jaxpr.replace(eqns=closed.jaxpr.eqns[:closed.jaxpr.eqns.index(
          conds[0]) + 1]), grad_inputs)


def entry_copies(hlo: str, shapes) -> list[str]:
  entry = hlo[hlo.index('ENTRY'):]
  entry = entry[:entry.index('\n}')]
  wanted = {','.join(map(str, s)) for s in shapes}
  return [line.strip()[:100] for line in entry.splitlines()
          if (m := re.search(r'= \w+\[([\d,]*)\]\S* copy\(', line))
          and m.group(1) in wanted]


def test_a_donated_step_copies_nothing_param_sized():
  params = make_params()
  tx = laperm_jax.laperm(optax.adam(1e-3), 3)
  state = jax.eval_shape(tx.init, params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  hlo = jax.jit(step, donate_argnums=(0, 1)).lower(
      params, state, params).compile().as_text()
  assert not entry_copies(hlo, SHAPES.values())


def test_zero_gradient_signs_and_nans_pass_unchanged():
  # The ordering select must hand the inner optimizer its inputs bit for
  # bit: -0.0 stays -0.0 (sign-based optimizers see it) and NaN stays NaN.
  params = {'w': jnp.ones((2, 3))}
  grads = {'w': jnp.array([[-0.0, 0.0, jnp.nan], [1.0, -2.0, jnp.inf]])}
  tx = laperm_jax.laperm(optax.identity(), 5)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  np.testing.assert_array_equal(
      np.signbit(np.asarray(updates['w'])), np.signbit(np.asarray(grads['w'])))
  np.testing.assert_array_equal(np.asarray(updates['w']),
                                np.asarray(grads['w']))


@pytest.mark.parametrize('options', [
    {}, {'reset_inner_state': True, 'track_changes': True,
         'carry_residual': 0.5}])
def test_an_unjitted_update_compiles_only_in_its_first_period(options):
  """Un-jitted, each step runs op by op and the cond holding the sync is one
  compiled program: compiled at the first call, reused at every later one."""
  params = make_params()
  grads = jax.tree.map(jnp.ones_like, params)
  tx = laperm_jax.laperm(optax.adam(1e-3), 2, **options)
  state = tx.init(params)

  def steps(n):
    nonlocal params, state
    for _ in range(n):
      updates, state = tx.update(grads, state, params, value=jnp.float32(1))
      params = optax.apply_updates(params, updates)
    jax.block_until_ready(params)

  steps(2)  # a non-sync step and a sync
  compiles = []

  def count(event, duration, **kwargs):
    # Lowering to MLIR too: a persistent compilation cache would turn a
    # recompile into a cache hit, but never skips the lowering.
    del duration, kwargs
    if event in ('/jax/core/compile/jaxpr_to_mlir_module_duration',
                 '/jax/core/compile/backend_compile_duration'):
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    steps(4)
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  assert not compiles
