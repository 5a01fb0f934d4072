"""LaPerm inside Flax training: Linen TrainState and NNX Optimizer."""

from flax import linen as nn
from flax import nnx
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

import laperm_jax

X = jax.random.normal(jax.random.key(1), (16, 8))
Y = jnp.arange(16) % 3


class LinenMLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(6)(x))
    return nn.Dense(3)(x)


class NnxMLP(nnx.Module):

  def __init__(self, rngs):
    self.hidden = nnx.Linear(8, 6, rngs=rngs)
    self.out = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def cross_entropy(logits):
  return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()


def test_linen_train_state():
  model = LinenMLP()
  params = model.init(jax.random.key(0), X)['params']
  tx = laperm_jax.laperm(optax.adam(0.05), sync_period=3)
  state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                        tx=tx)

  @jax.jit
  def train_step(state):
    grads = jax.grad(lambda p: cross_entropy(state.apply_fn({'params': p}, X))
                     )(state.params)
    return state.apply_gradients(grads=grads)

  losses = []
  for _ in range(6):
    state = train_step(state)
    losses.append(float(cross_entropy(state.apply_fn({'params': state.params},
                                                     X))))
  pool = state.opt_state.pool
  exact = laperm_jax.reconnect(state.params, pool)
  assert all(jax.tree.leaves(laperm_jax.is_permutation_of_pool(exact, pool)))
  for layer in ('Dense_0', 'Dense_1'):
    np.testing.assert_allclose(exact[layer]['kernel'],
                               state.params[layer]['kernel'], rtol=0,
                               atol=1e-6)
    assert isinstance(pool[layer]['bias'], optax.MaskedNode)
  assert losses[-1] < losses[0]


def test_nnx_optimizer():
  model = NnxMLP(nnx.Rngs(0))
  initial_kernel = np.asarray(model.hidden.kernel[...])
  optimizer = nnx.Optimizer(
      model, laperm_jax.laperm(optax.adam(0.05), sync_period=2), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    grads = nnx.grad(lambda m: cross_entropy(m(X)))(model)
    optimizer.update(model, grads)

  for _ in range(4):
    train_step(model, optimizer)
  state = optimizer.opt_state
  assert int(state.steps_since_sync[...]) == 0
  assert int(state.count[...]) == 4
  kernel = np.asarray(model.hidden.kernel[...])
  assert not np.array_equal(kernel, initial_kernel)
  np.testing.assert_allclose(np.sort(kernel, axis=0),
                             np.sort(initial_kernel, axis=0), rtol=0,
                             atol=1e-6)
  np.testing.assert_array_equal(state.pool['hidden']['kernel'].values[...],
                                np.sort(initial_kernel, axis=0))
