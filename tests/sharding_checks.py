"""Multi-device checks, run in a subprocess by ``test_sharding.py``.

Needs 8 devices, e.g. ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
set before JAX starts, which is why it is a separate process. Prints one JSON
object: check name -> details; ``test_sharding.py`` asserts on each.
``--checks a,b`` runs only the named checks.
"""

import argparse
import functools
import importlib.util
import json
import os
import pathlib
import re
import sys
import tempfile

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

import laperm_jax
from laperm_jax import _ranking as ranking

COLLECTIVES = re.compile(
    r'\b(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter|'
    r'collective-broadcast|ragged-all-to-all)(-start)?\b')
STEPS = 4  # with k = 2: two syncs


def make_params():
  key_dense, key_conv = jax.random.split(jax.random.key(0))
  return {
      'dense': jax.random.normal(key_dense, (16, 8)),
      'conv': jax.random.normal(key_conv, (3, 3, 4, 8)),
      'bias': jnp.zeros(8),
  }


def grads_at(params, step):
  return jax.tree.map(lambda p: jnp.cos(3.0 * p + step), params)


def run(params, tx):
  """STEPS jitted updates; returns (params, state, compiled update text).

  The first update runs the program whose text is returned: jit reuses the
  executable that ``lower(...).compile()`` built. Under an Auto mesh the
  compiler may choose output shardings other than the inputs', and jit
  compiles for those on the next step; a bare ``Compiled`` would refuse them.
  """
  state = jax.jit(tx.init)(params)
  update = jax.jit(tx.update)
  hlo = update.lower(grads_at(params, 0), state, params).compile().as_text()
  for step in range(STEPS):
    updates, state = update(grads_at(params, step), state, params)
    params = optax.apply_updates(params, updates)
  return params, state, hlo


def spec_of(x):
  return (None if isinstance(x, optax.MaskedNode) else
          str(x.values.sharding.spec))


def mesh_check(axis_type, specs, reference):
  """Runs on a 4 x 2 mesh; ``reference`` is the single-device
  (params, state, eager reconnect)."""
  mesh = jax.make_mesh((4, 2), ('x', 'y'), axis_types=(axis_type,) * 2)
  shardings = {k: NamedSharding(mesh, spec) for k, spec in specs.items()}
  params = jax.device_put(make_params(), shardings)
  tx = laperm_jax.laperm(optax.adam(0.1), sync_period=2)
  out, state, hlo = run(params, tx)
  eager_pool = laperm_jax.sorted_pool(params)
  eager = laperm_jax.reconnect(out, eager_pool)
  return {
      'equal': all(np.array_equal(out[k], reference[0][k]) for k in out),
      'pool_equal': all(np.array_equal(state.pool[k].values,
                                    reference[1].pool[k].values)
                        for k in ('dense', 'conv')),
      'param_specs': {k: str(v.sharding.spec) for k, v in out.items()},
      'pool_specs': {k: spec_of(v) for k, v in state.pool.items()
                     if not isinstance(v, optax.MaskedNode)},
      'moment_specs': {k: str(v.sharding.spec)
                       for k, v in state.inner_state[0].mu.items()},
      'wanted_specs': {k: str(v) for k, v in specs.items()},
      'eager_specs': {k: spec_of(v) for k, v in eager_pool.items()
                      if not isinstance(v, optax.MaskedNode)},
      'eager_reconnect_specs': {k: str(v.sharding.spec)
                                for k, v in eager.items()},
      'eager_equal': all(np.array_equal(eager[k], reference[2][k])
                         for k in eager),
      'collectives': sorted({m.group(1) for m in COLLECTIVES.finditer(hlo)}),
  }


def checkpoint_check(directory):
  """Orbax save and restore of a sharded state, against sharded targets."""
  import orbax.checkpoint as ocp
  mesh = jax.make_mesh((4, 2), ('x', 'y'), axis_types=(AxisType.Explicit,) * 2)
  specs = {'dense': P('x', 'y'), 'conv': P(None, None, None, 'x'),
           'bias': P('y')}
  shardings = {k: NamedSharding(mesh, v) for k, v in specs.items()}
  params = jax.device_put(make_params(), shardings)
  tx = laperm_jax.laperm(optax.adam(0.1), sync_period=2)
  state = jax.jit(tx.init)(params)
  updates, state = jax.jit(tx.update)(grads_at(params, 0), state, params)
  params = optax.apply_updates(params, updates)  # mid-period
  path = pathlib.Path(directory).absolute() / 'state'
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, state)
    checkpointer.wait_until_finished()
    # Under an Explicit mesh, eval_shape gives shardings on the abstract
    # mesh; Orbax needs devices: put them back on the concrete mesh.
    target = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(
            s.shape, s.dtype, sharding=NamedSharding(
                mesh, s.sharding.spec if s.sharding is not None else P())),
        jax.eval_shape(tx.init, params))
    restored = checkpointer.restore(path, target)
  laperm_jax.check_state(tx, restored, params)
  return {
      'is_state': isinstance(restored, laperm_jax.LaPermState),
      'equal': all(np.array_equal(a, b) for a, b in zip(
          jax.tree.leaves(restored), jax.tree.leaves(state))),
      'pool_specs': {k: spec_of(v) for k, v in restored.pool.items()
                     if not isinstance(v, optax.MaskedNode)},
      'moment_specs': {k: str(v.sharding.spec)
                       for k, v in restored.inner_state[0].mu.items()},
  }


def nnx_sharding(variable):
  """A Variable's sharding annotation (older Flax, e.g. 0.12.1, names it sharding_names)."""
  metadata = variable.get_metadata()
  return metadata.get('out_sharding', metadata.get('sharding_names'))


def nnx_check():
  from flax import nnx
  mesh = jax.make_mesh((4, 2), ('x', 'y'), axis_types=(AxisType.Explicit,) * 2)
  init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, 'x'))

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.dense = nnx.Linear(16, 8, kernel_init=init, rngs=rngs)

    def __call__(self, x):
      return self.dense(x)

  with jax.set_mesh(mesh):
    model = Model(nnx.Rngs(0))
    optimizer = nnx.Optimizer(
        model, laperm_jax.laperm(optax.adam(0.1), sync_period=2),
        wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x):
      grads = nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(model)
      optimizer.update(model, grads)

    x = jnp.ones((4, 16))
    for _ in range(STEPS):
      step(model, optimizer, x)
    state = optimizer.opt_state
    pool_leaf = state.pool['dense']['kernel']  # a PoolLeaf
    pool = pool_leaf.values  # the OptVariable
    mu = state.inner_state[0].mu['dense']['kernel']
    kernel = model.dense.kernel
    return {
        'pool_metadata': str(nnx_sharding(pool)),
        'mu_metadata': str(nnx_sharding(mu)),
        'kernel_metadata': str(nnx_sharding(kernel)),
        'pool_spec': str(jax.typeof(pool[...]).sharding.spec),
        'kernel_spec': str(jax.typeof(kernel[...]).sharding.spec),
        'partition_spec': str(nnx.get_partition_spec(nnx.state(
            optimizer)).opt_state.pool['dense']['kernel']['values'].get_value()),
        'synced': int(state.steps_since_sync[...]) == 0,
        'gap_to_pool': float(jnp.max(jnp.abs(laperm_jax.reconnect(
            {'k': kernel[...]}, {'k': laperm_jax.PoolLeaf(
                pool[...], pool_leaf.vector_axes)})['k'] - kernel[...]))),
    }


def example_check(model):
  path = pathlib.Path(__file__).parents[1] / 'examples' / 'sharded_training.py'
  spec = importlib.util.spec_from_file_location('sharded_training', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.main(['--model', str(model), '--steps', '12',
                      '--sync-period', '4', '--batch', '32'])


LAYOUTS = {
    'out_axis': {'dense': P(None, 'x'), 'conv': P(None, None, None, 'x'),
                 'bias': P('x')},
    'fan_in': {'dense': P('x', None), 'conv': P(None, None, 'x', None),
               'bias': P()},
    '2d': {'dense': P('x', 'y'), 'conv': P(None, None, 'x', 'y'),
           'bias': P('y')},
}


def variant_check(variant, reference):
  """An Auto-mesh output-axis check with the sort kernel forced to ``variant``.

  Under Auto the compiler partitions the sort kernel itself: every variant
  (scatter or co-sort) must stay local for output-axis-sharded kernels.
  """
  os.environ['LAPERM_JAX_RECONNECT_VARIANT'] = variant
  try:
    return mesh_check(AxisType.Auto, LAYOUTS['out_axis'], reference)
  finally:
    del os.environ['LAPERM_JAX_RECONNECT_VARIANT']


def blocked_check(axis_type, reference):
  """An output-axis check with the kernels synced in row blocks.

  Large leaves run in row blocks on CPU (a loop): a smaller block size makes
  these small kernels take that path.
  """
  block_elements = ranking.CPU_BLOCK_ELEMENTS
  ranking.CPU_BLOCK_ELEMENTS = 144
  try:
    # The conv kernel's 8 vectors of 36: 2 blocks of 4 rows (a multiple of
    # the 4 devices its output axis is split over).
    assert ranking.block_rows(8, 36, ranking.CPU_BLOCK_ELEMENTS) == 4
    return mesh_check(axis_type, LAYOUTS['out_axis'], reference)
  finally:
    ranking.CPU_BLOCK_ELEMENTS = block_elements


def checkpoint_in_a_temporary_directory():
  with tempfile.TemporaryDirectory() as directory:
    return checkpoint_check(directory)


def checks():
  """Check name -> function of the single-device reference run."""
  named = {}
  for axis_type in (AxisType.Explicit, AxisType.Auto):
    for layout, specs in LAYOUTS.items():
      if not (axis_type == AxisType.Auto and layout == '2d'):
        named[f'{axis_type.name.lower()}_{layout}'] = functools.partial(
            mesh_check, axis_type, specs)
    named[f'{axis_type.name.lower()}_out_axis_blocked'] = functools.partial(
        blocked_check, axis_type)
  for variant in ('packed_cosort', 'keyed', 'keyed_cosort'):
    named[f'auto_out_axis_{variant}'] = functools.partial(variant_check,
                                                          variant)
  named['nnx'] = lambda reference: nnx_check()
  named['checkpoint'] = lambda reference: checkpoint_in_a_temporary_directory()
  # data x model parallel, and data parallel with params replicated
  named['example'] = lambda reference: example_check(model=2)
  named['data_parallel'] = lambda reference: example_check(model=1)
  return named


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--checks', default=','.join(checks()),
                      help='comma-separated check names (default: all)')
  names = parser.parse_args(argv).checks.split(',')
  assert jax.device_count() == 8, jax.devices()
  tx = laperm_jax.laperm(optax.adam(0.1), sync_period=2)
  out, state, _ = run(jax.device_put(make_params(), jax.devices()[0]), tx)
  reference = (out, state, laperm_jax.reconnect(out, state.pool))
  named = checks()
  results = {name: named[name](reference) for name in names}
  print('RESULTS ' + json.dumps(results, default=str))


if __name__ == '__main__':
  sys.exit(main())
