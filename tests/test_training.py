"""A short real-data run: LaPerm learns sklearn's 8x8 digits by reconnecting."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import laperm_jax


def he_uniform(key, fan_in, fan_out):
  limit = np.sqrt(6.0 / fan_in)
  return jax.random.uniform(key, (fan_in, fan_out), minval=-limit,
                            maxval=limit)


def init_mlp(key, sizes):
  keys = jax.random.split(key, len(sizes) - 1)
  return [{'kernel': he_uniform(k, m, n), 'bias': jnp.zeros(n)}
          for k, m, n in zip(keys, sizes[:-1], sizes[1:])]


def mlp(params, x):
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer['kernel'] + layer['bias'])
  return x @ params[-1]['kernel'] + params[-1]['bias']


def accuracy(params, x, y):
  return float(jnp.mean(jnp.argmax(mlp(params, x), -1) == y))


def test_laperm_learns_real_digits():
  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(y))
  train, test = order[:1400], order[1400:]
  batch_size, k, epochs = 50, 28, 12  # k = one epoch of 28 batches

  params0 = init_mlp(jax.random.key(0), [64, 128, 10])
  tx = laperm_jax.laperm(optax.adam(1e-3, eps=1e-7), sync_period=k)
  state = tx.init(params0)

  def loss_fn(params, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(
        mlp(params, xb), yb).mean()

  @jax.jit
  def epoch(params, state, xs, ys):
    def step(carry, batch):
      params, state = carry
      grads = jax.grad(loss_fn)(params, *batch)
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None
    (params, state), _ = jax.lax.scan(step, (params, state), (xs, ys))
    return params, state

  params = params0
  rng = np.random.default_rng(1)
  for _ in range(epochs):
    idx = rng.permutation(train)[:k * batch_size].reshape(k, batch_size)
    params, state = epoch(params, state, x[idx], y[idx])
    assert int(state.steps_since_sync) == 0

  test_accuracy = accuracy(params, x[test], y[test])
  print('LaPerm test accuracy on sklearn digits:', test_accuracy)
  assert test_accuracy > 0.85, test_accuracy  # chance is 0.10

  exact = laperm_jax.reconnect(params, state.pool)
  assert all(jax.tree.leaves(laperm_jax.is_permutation_of_pool(exact,
                                                               state.pool)))
  for layer, exact_layer, layer0 in zip(params, exact, params0):
    np.testing.assert_array_equal(np.sort(exact_layer['kernel'], axis=0),
                                  np.sort(layer0['kernel'], axis=0))
    # Within an ulp of the vector's scale (the documented bound, with the
    # pre-sync weights no larger than twice the vector's largest value).
    scale = np.max(np.abs(layer0['kernel']), axis=0, keepdims=True)
    error = np.abs(layer['kernel'] - exact_layer['kernel'])
    print('max error / ulp(scale):', np.max(error / np.spacing(scale)))
    assert np.all(error <= np.spacing(2 * scale))
  assert accuracy(exact, x[test], y[test]) == pytest.approx(test_accuracy,
                                                           abs=0.002)
