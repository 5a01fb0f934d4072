"""LaPerm on a (data x model) device mesh, checked against one device.

A small MLP is trained with ``laperm(adam)`` twice: once on a single device,
once on a 2-D mesh where the batch is split over ``data`` and every param is
stored split over its output axis on ``model`` (each weight vector on one
device, so the sync sorts locally) and gathered for the forward pass. Both
runs must give the same weights. The same script runs unchanged on a TPU
slice or on fake CPU devices::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
      python examples/sharded_training.py --model 2 --steps 40

The mesh is ``AxisType.Explicit`` (the default of ``jax.make_mesh`` from JAX
0.9; passed explicitly so that older JAX builds the same mesh): the
shardings are part of the array types, ``jit`` keeps params, the pool and the
Adam moments on their param's sharding, and sharding errors show at trace
time. The gradient all-reduce over ``data`` sums in a different order than a
single device does, so the runs agree to float rounding between syncs; a
sync puts both on the same exact pool values as long as the ranks agree.
"""

import argparse
import itertools
import sys

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

import laperm_jax


def init_params(key, sizes):
  """Dense layers ``(in, out)`` with LeCun-normal kernels and zero biases."""
  params = {}
  for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
    key, sub = jax.random.split(key)
    params[f'dense_{index}'] = {
        'kernel': jax.random.normal(sub, (fan_in, fan_out)) / np.sqrt(fan_in),
        'bias': jnp.zeros(fan_out),
    }
  return params


def gathered(w):
  """``w`` replicated for compute (ZeRO-3 style) when a mesh is in use."""
  if jax.sharding.get_abstract_mesh().empty:
    return w
  return jax.sharding.reshard(w, P())


def forward(params, x):
  layers = sorted(params)
  for name in layers:
    x = x @ gathered(params[name]['kernel']) + gathered(params[name]['bias'])
    if name != layers[-1]:
      x = jax.nn.relu(x)
  return x


def loss_fn(params, x, y):
  logits = forward(params, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train(params, tx, batches):
  """Runs the jitted training loop; returns final params, state, losses."""
  @jax.jit
  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  state = jax.jit(tx.init)(params)
  losses = []
  for x, y in batches:
    params, state, loss = step(params, state, x, y)
    losses.append(float(loss))
  return params, state, losses


def model_parallel_specs(params, model_axis):
  """Kernels and biases split over their output axis; None if it won't fit."""
  return jax.tree.map(lambda p: P(*([None] * (p.ndim - 1)), model_axis),
                      params)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', type=int, default=2,
                      help='devices on the model axis (the rest do data)')
  parser.add_argument('--steps', type=int, default=40)
  parser.add_argument('--sync-period', type=int, default=10)
  parser.add_argument('--batch', type=int, default=64)
  args = parser.parse_args(argv)

  num_devices = jax.device_count()
  if num_devices % args.model:
    parser.error(f'--model {args.model} must divide {num_devices} devices')
  mesh = jax.make_mesh((num_devices // args.model, args.model),
                       ('data', 'model'), axis_types=(AxisType.Explicit,) * 2)
  sizes = (32, 64, 64, 8 * args.model)

  key_params, key_data = jax.random.split(jax.random.key(0))
  params = init_params(key_params, sizes)
  features = jax.random.normal(key_data, (args.steps, args.batch, sizes[0]))
  teacher = jax.random.normal(jax.random.key(1), (sizes[0], sizes[-1]))
  labels = jnp.argmax(features @ teacher, axis=-1)  # a learnable task
  tx = laperm_jax.laperm(optax.adam(1e-2), sync_period=args.sync_period)

  single = jax.devices()[0]
  single_params, _, single_losses = train(
      jax.device_put(params, single), tx,
      [(jax.device_put(x, single), jax.device_put(y, single))
       for x, y in zip(features, labels)])

  param_shardings = jax.tree.map(
      lambda spec: NamedSharding(mesh, spec),
      model_parallel_specs(params, 'model'))
  batch_sharding = NamedSharding(mesh, P('data'))
  with jax.set_mesh(mesh):
    mesh_params, mesh_state, mesh_losses = train(
        jax.device_put(params, param_shardings), tx,
        [(jax.device_put(x, batch_sharding), jax.device_put(y, batch_sharding))
         for x, y in zip(features, labels)])

  max_diff = max(float(jnp.max(jnp.abs(np.asarray(a) - np.asarray(b))))
                 for a, b in zip(jax.tree.leaves(single_params),
                                 jax.tree.leaves(mesh_params)))
  on_pool = all(bool(x) for x in jax.tree.leaves(
      laperm_jax.is_permutation_of_pool(
          laperm_jax.reconnect(mesh_params, mesh_state.pool), mesh_state.pool)))
  kept_sharding = all(
      p.sharding.spec == s.spec and q.sharding.spec == s.spec
      for p, q, s in zip(
          jax.tree.leaves(mesh_params),
          jax.tree.leaves(jax.tree.map(
              lambda pool, p: (p if isinstance(pool, optax.MaskedNode) else
                               pool.values),
              mesh_state.pool, mesh_params,
              is_leaf=lambda x: isinstance(x, (optax.MaskedNode,
                                               laperm_jax.PoolLeaf)))),
          jax.tree.leaves(param_shardings)))
  report = {
      'devices': num_devices,
      'mesh': dict(mesh.shape),
      'steps': args.steps,
      'loss_first': single_losses[0],
      'loss_last_single': single_losses[-1],
      'loss_last_mesh': mesh_losses[-1],
      'max_abs_param_diff': max_diff,
      'pool_and_params_keep_sharding': kept_sharding,
      'exact_permutations': on_pool,
      'match': max_diff <= 1e-5 and kept_sharding and on_pool,
  }
  for name, value in report.items():
    print(f'{name}: {value}')
  print('results match the single-device run' if report['match'] else
        'MISMATCH with the single-device run')
  return report


if __name__ == '__main__':
  sys.exit(0 if main()['match'] else 1)
