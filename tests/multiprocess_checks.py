"""LaPerm on a 4-device mesh, run by ``test_multiprocess.py``.

Started through ``experiments/processes.py``: as 2 processes x 2 CPU devices
(the mesh spans both processes) or as 1 process x 4 devices (the reference).
For two layouts of the kernels (split over their output axis: every weight
vector on one device; over their input axis: vectors split across devices,
so across processes), it trains with ``jax.jit(tx.init)`` and a jitted step
(``track_changes=True``, a sync every ``SYNC_PERIOD`` steps), then applies
``exact_params``, ``reconnect``, ``is_permutation_of_pool``, ``check_state``
and ``has_synced`` to the global arrays. With ``--save`` it writes an Orbax
checkpoint of each layout mid-period; with ``--restore`` it restores them
(written by any number of processes) onto the layouts of ``RESUMES`` and
trains on to the end.

Each process writes ``process{i}.npz``, the shards of every array that it
holds (replica 0 only, so each element is written once in the whole job),
and ``process{i}.json``: where each shard lies in its global array, and the
facts the test asserts on.
"""

import argparse
import json
import os
import pathlib
import re
import time

import jax
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import orbax.checkpoint as ocp

from experiments import processes as local_processes
import laperm_jax
from tests import sharding_checks

SYNC_PERIOD = 2
TOTAL_STEPS = 6  # syncs after steps 2, 4 and 6
SAVE_AFTER = 3  # mid-period
LAYOUTS = {
    # Every weight vector (a column) on one device.
    'out_axis': {'dense': P(None, 'x'), 'conv': P(None, None, None, 'x'),
                 'bias': P('x')},
    # Every weight vector split over the 4 devices, so over both processes.
    'fan_in': {'dense': P('x', None), 'conv': P(None, None, 'x', None),
               'bias': P()},
}
# Restores: (layout the checkpoint was written from, layout restored onto).
RESUMES = (('out_axis', 'out_axis'), ('fan_in', 'fan_in'),
           ('out_axis', 'fan_in'))


def make_tx() -> optax.GradientTransformation:
  return laperm_jax.laperm(optax.adam(0.1), sync_period=SYNC_PERIOD,
                           track_changes=True)


def host_params() -> dict[str, np.ndarray]:
  """The initial params, the same in every process; ties among the zeros."""
  rng = np.random.default_rng(0)
  params = {'dense': rng.standard_normal((16, 8), np.float32),
            'conv': rng.standard_normal((3, 3, 4, 8), np.float32),
            'bias': np.zeros(8, np.float32)}
  params['dense'][rng.random((16, 8)) < 0.25] = 0.0
  return params


def on_mesh(host_tree, mesh, layout: str):
  """Global arrays laid out by ``LAYOUTS[layout]``, built from host copies."""
  return {name: jax.make_array_from_callback(
      value.shape, NamedSharding(mesh, LAYOUTS[layout][name]),
      lambda index, value=value: value[index])
          for name, value in host_tree.items()}


def make_step(tx: optax.GradientTransformation):
  @jax.jit
  def step(params, state, index):
    grads = sharding_checks.grads_at(params, index)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


def train(step, params, state, first: int, last: int, save_to=None):
  """Steps ``first`` to ``last``; returns params, state and per step facts."""
  history = []
  for index in range(first, last):
    params, state = step(params, state, np.int32(index))
    history.append({'has_synced': bool(laperm_jax.has_synced(state)),
                    'changed_fraction': float(state.changes.changed_fraction),
                    'created': int(state.changes.created),
                    'removed': int(state.changes.removed)})
    if save_to is not None and index + 1 == SAVE_AFTER:
      save(save_to, params, state)
  return params, state, history


def save(directory: pathlib.Path, params, state) -> None:
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory.absolute() / 'params', params)
    checkpointer.save(directory.absolute() / 'state', state)
    checkpointer.wait_until_finished()


def abstract_on(mesh, tree):
  """Restore targets: shapes, dtypes and shardings on the concrete mesh."""
  # Under an Explicit mesh, eval_shape gives shardings on the abstract mesh;
  # Orbax needs devices.
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(
          mesh, s.sharding.spec if s.sharding is not None else P())), tree)


def restore(directory: pathlib.Path, tx, mesh, params_like):
  """Restores params and state onto ``params_like``'s shardings."""
  abstract_params = abstract_on(mesh, jax.eval_shape(lambda: params_like))
  abstract_state = abstract_on(mesh, jax.eval_shape(tx.init, params_like))
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(directory.absolute() / 'params',
                                  abstract_params)
    state = checkpointer.restore(directory.absolute() / 'state',
                                 abstract_state)
  return params, laperm_jax.check_state(tx, state, params)


COLLECTIVE = re.compile(
    r'=\s*(?P<result>.*?)\s(?P<op>all-gather|all-reduce|all-to-all|'
    r'collective-permute|reduce-scatter|collective-broadcast|'
    r'ragged-all-to-all)(-start)?\(')


def collectives(compiled_text: str) -> dict[str, list[str]]:
  """The collectives of compiled HLO: all, and those that move arrays."""
  found = [(m.group('op'), m.group('result'))
           for m in COLLECTIVE.finditer(compiled_text)]
  return {'all': sorted({op for op, _ in found}),
          # A result type with a dimension (f32[4,2]), not only scalars.
          'of_arrays': sorted({op for op, result in found
                               if re.search(r'\[\d', result)})}


def plain_sync_collectives(params) -> dict[str, list[str]]:
  """Collectives of ``jit(tx.update)`` without ``track_changes``."""
  tx = laperm_jax.laperm(optax.adam(0.1), sync_period=SYNC_PERIOD)
  compiled = jax.jit(tx.update).lower(
      params, jax.eval_shape(tx.init, params), params).compile()
  return collectives(compiled.as_text())


@jax.jit
def queries(params, pool):
  """``reconnect`` and ``is_permutation_of_pool`` under ``jit``."""
  reconnected = laperm_jax.reconnect(params, pool)
  return reconnected, laperm_jax.is_permutation_of_pool(reconnected, pool)


def named(prefix: str, tree) -> dict[str, jax.Array]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {f'{prefix}/' + jax.tree_util.keystr(path, simple=True,
                                              separator='/'): leaf
          for path, leaf in leaves}


def all_true(tree) -> bool:
  return all(bool(x) for x in jax.tree.leaves(tree))


def run_layout(layout: str, mesh, save_to):
  """Trains on one layout; returns (step, arrays by name, facts)."""
  tx = make_tx()
  params = on_mesh(host_params(), mesh, layout)
  state = jax.jit(tx.init)(params)
  step = make_step(tx)
  compiled = step.lower(params, state, np.int32(0)).compile().as_text()
  facts = {'collectives': collectives(compiled)}
  if layout == 'out_axis' and jax.process_count() > 1:
    # Asserted of the job whose vectors lie in two processes only.
    facts['plain_collectives'] = plain_sync_collectives(params)
  params, state, facts['history'] = train(
      step, params, state, 0, TOTAL_STEPS,
      None if save_to is None else save_to / layout)
  exact = laperm_jax.exact_params(state, params)  # eager
  reconnected, is_permutation = queries(params, state.pool)
  facts.update({
      'check_state': laperm_jax.check_state(tx, state, params) is state,
      'exact_is_permutation': all_true(is_permutation),
      'param_specs': {k: str(v.sharding.spec) for k, v in params.items()},
      'pool_specs': {k: str(v.values.sharding.spec)
                     for k, v in state.pool.items()
                     if not isinstance(v, optax.MaskedNode)},
      'fully_addressable': {k: v.is_fully_addressable
                            for k, v in params.items()},
  })
  arrays = {**named(f'{layout}/trained', (params, state)),
            **named(f'{layout}/exact', exact),
            **named(f'{layout}/reconnected', reconnected)}
  return step, arrays, facts


def resume(source: str, layout: str, mesh, step, directory: pathlib.Path):
  """Restores the checkpoint of ``source`` onto ``layout`` and trains on.

  Returns the arrays by name and the facts.
  """
  tx = make_tx()
  params, state = restore(directory / source, tx, mesh,
                          on_mesh(host_params(), mesh, layout))
  facts = {'is_state': isinstance(state, laperm_jax.LaPermState),
           'count': int(state.count),
           'pool_specs': {k: str(v.values.sharding.spec)
                          for k, v in state.pool.items()
                          if not isinstance(v, optax.MaskedNode)}}
  params, state, facts['history'] = train(step, params, state, SAVE_AFTER,
                                          TOTAL_STEPS)
  return named(resumed_name(source, layout), (params, state)), facts


def resumed_name(source: str, layout: str) -> str:
  return f'{layout}/resumed_from_{source}'


def shard_table(arrays: dict[str, jax.Array]):
  """This process's replica-0 shards: (npz data, where each one lies)."""
  data, where = {}, {}
  for name, array in arrays.items():
    entry = {'shape': list(array.shape), 'dtype': str(array.dtype),
             'shards': []}
    for shard in array.addressable_shards:
      if shard.replica_id != 0:
        continue
      key = f'{name}#{len(entry["shards"])}'
      data[key] = np.asarray(shard.data)
      bounds = [list(s.indices(n)[:2]) for s, n in zip(shard.index,
                                                       array.shape)]
      entry['shards'].append([key, bounds])
    where[name] = entry
  return data, where


def run_checks(args: argparse.Namespace) -> None:
  wall, cpu = time.perf_counter(), time.process_time()
  mesh = jax.make_mesh((4,), ('x',), axis_types=(AxisType.Explicit,))
  arrays, facts = {}, {
      'process_count': jax.process_count(),
      'process_index': jax.process_index(),
      'local_devices': jax.local_device_count(),
      'mesh_processes': [d.process_index for d in mesh.devices.flat]}
  steps = {}
  for layout in LAYOUTS:
    steps[layout], layout_arrays, facts[layout] = run_layout(
        layout, mesh, args.save)
    arrays.update(layout_arrays)
  if args.restore is not None:
    for source, layout in RESUMES:
      resumed_arrays, facts[resumed_name(source, layout)] = resume(
          source, layout, mesh, steps[layout], args.restore)
      arrays.update(resumed_arrays)
  data, facts['shards'] = shard_table(arrays)
  facts['seconds'] = {'wall': time.perf_counter() - wall,
                      'cpu': time.process_time() - cpu}
  args.out.mkdir(parents=True, exist_ok=True)
  np.savez(args.out / f'process{args.process_index}.npz', **data)
  (args.out / f'process{args.process_index}.json').write_text(
      json.dumps(facts))


def parse(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, type=pathlib.Path)
  parser.add_argument('--save', type=pathlib.Path, default=None,
                      help=f'write checkpoints here (one per layout) after '
                      f'{SAVE_AFTER} steps')
  parser.add_argument('--restore', type=pathlib.Path, default=None,
                      help='restore the checkpoints written here and resume')
  parser.add_argument('--exit-after-init', type=int, default=None,
                      metavar='PROCESS_ID',
                      help='(launcher tests) this process exits with 3 once '
                      'the job is up')
  parser.add_argument('--sleep-after-init', type=float, default=0.0,
                      help='(launcher tests) seconds to wait before working')
  local_processes.add_arguments(parser)
  return parser.parse_args(argv)


def main(argv=None) -> None:
  args = parse(argv)
  local_processes.initialize(args)
  args.process_index = jax.process_index()
  if args.exit_after_init == args.process_index:
    os._exit(3)
  time.sleep(args.sleep_after_init)
  run_checks(args)


if __name__ == '__main__':
  main()
