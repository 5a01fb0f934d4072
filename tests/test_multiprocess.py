"""LaPerm across processes: 2 processes x 2 CPU devices against 1 x 4.

One launch of two processes (``jax.distributed`` over gloo on localhost)
trains on a mesh that spans both, queries the state, writes an Orbax
checkpoint mid-period and resumes from it; one launch of a single process
with 4 devices trains the same way and resumes from that same checkpoint.
Each process writes the shards it holds; here they are put together into the
global arrays and compared bit for bit.
"""

import json
import pathlib
import time

import numpy as np
import pytest

from experiments import processes as local_processes
from tests import multiprocess_checks as checks

CHILD = 'tests.multiprocess_checks'
TIMEOUT_S = 300  # per launch; each takes a fraction of it
# A launch with a dead process ends within this: well before TIMEOUT_S, and
# before JAX's own detection of a missing process would end it.
FAIL_FAST_S = 60
KERNELS = ('dense', 'conv')


def load(directory: pathlib.Path, num_processes: int):
  """The global arrays from every process's shards, and each one's facts.

  Returns ``(arrays, holders, facts)``: arrays by name, the processes that
  hold a part of each array, and the facts of each process. Fails unless
  every element of every array was written by exactly one process.
  """
  tables = [np.load(directory / f'process{i}.npz')
            for i in range(num_processes)]
  facts = [json.loads((directory / f'process{i}.json').read_text())
           for i in range(num_processes)]
  where = [f.pop('shards') for f in facts]
  arrays, holders = {}, {}
  for name, entry in where[0].items():
    value = np.zeros(entry['shape'], entry['dtype'])
    written = np.zeros(entry['shape'], np.int32)
    holders[name] = set()
    for process, (table, shards) in enumerate(zip(tables, where)):
      for key, bounds in shards[name]['shards']:
        index = tuple(slice(start, stop) for start, stop in bounds)
        value[index] = table[key]
        written[index] += 1
        holders[name].add(process)
    assert np.all(written == 1), (name, written)
    arrays[name] = value
  return arrays, holders, facts


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('multiprocess')
  checkpoint = root / 'checkpoint'
  local_processes.run(
      CHILD, ['--out', str(root / 'two'), '--save', str(checkpoint),
              '--restore', str(checkpoint)],
      num_processes=2, devices_per_process=2, timeout_s=TIMEOUT_S)
  local_processes.run(
      CHILD, ['--out', str(root / 'one'), '--restore', str(checkpoint)],
      num_processes=1, devices_per_process=4, timeout_s=TIMEOUT_S)
  return {'two': load(root / 'two', 2), 'one': load(root / 'one', 1)}


def assert_bit_identical(got: dict, want: dict, prefix: str) -> None:
  names = sorted(k for k in want if k.startswith(prefix + '/'))
  assert names and sorted(k for k in got if k.startswith(prefix + '/')) == (
      names)
  for name in names:
    assert got[name].dtype == want[name].dtype, name
    assert got[name].shape == want[name].shape, name
    assert got[name].tobytes() == want[name].tobytes(), name


def test_the_mesh_spans_both_processes(runs):
  _, holders, facts = runs['two']
  for index, process in enumerate(facts):
    assert process['process_count'] == 2
    assert process['process_index'] == index
    assert process['local_devices'] == 2
    assert process['mesh_processes'] == [0, 0, 1, 1]
  for layout in checks.LAYOUTS:
    for kernel in KERNELS:
      assert holders[f'{layout}/trained/0/{kernel}'] == {0, 1}
      assert not any(f[layout]['fully_addressable'][kernel] for f in facts)
    wanted = {k: str(checks.LAYOUTS[layout][k]) for k in KERNELS}
    assert {k: facts[0][layout]['param_specs'][k] for k in KERNELS} == wanted
    assert facts[0][layout]['pool_specs'] == wanted


@pytest.mark.parametrize('layout', list(checks.LAYOUTS))
@pytest.mark.parametrize('what', ['trained', 'exact', 'reconnected'])
def test_two_processes_give_the_bits_of_one(runs, layout, what):
  # Params and the whole state (pool, Adam moments, counters, SyncChanges).
  assert_bit_identical(runs['two'][0], runs['one'][0], f'{layout}/{what}')


@pytest.mark.parametrize('layout', list(checks.LAYOUTS))
def test_state_queries_work_on_arrays_spread_over_processes(runs, layout):
  arrays, _, facts = runs['two']
  reference = runs['one'][2][0][layout]
  for process in facts:
    assert process[layout]['check_state']
    assert process[layout]['exact_is_permutation']
    assert process[layout]['history'] == reference['history']
  history = facts[0][layout]['history']
  assert [h['has_synced'] for h in history] == [
      (step + 1) % checks.SYNC_PERIOD == 0
      for step in range(checks.TOTAL_STEPS)]
  assert any(h['changed_fraction'] > 0 for h in history)
  # exact_params (eager) and reconnect (under jit) agree bit for bit.
  exact = {k.split('/', 2)[2]: v for k, v in arrays.items()
           if k.startswith(f'{layout}/exact/')}
  reconnected = {k.split('/', 2)[2]: v for k, v in arrays.items()
                 if k.startswith(f'{layout}/reconnected/')}
  assert exact.keys() == reconnected.keys()
  for name, value in exact.items():
    assert value.tobytes() == reconnected[name].tobytes(), name


def test_sync_of_process_local_vectors_has_no_collective(runs):
  for process in runs['two'][2]:
    check = process['out_axis']
    assert check['plain_collectives'] == {'all': [], 'of_arrays': []}
    # With track_changes, SyncChanges sums its counts over all devices:
    # one all-reduce of scalars, no array moves.
    assert check['collectives'] == {'all': ['all-reduce'], 'of_arrays': []}


def test_vectors_split_across_processes_are_exchanged_for_the_sort(runs):
  for process in runs['two'][2]:
    assert process['fan_in']['collectives'] == {
        'all': ['all-reduce', 'all-to-all'], 'of_arrays': ['all-to-all']}


def assert_resumed(facts: list[dict], source: str, layout: str,
                   history: list[dict]) -> None:
  """Each process restored a LaPermState onto ``layout``, then ``history``."""
  for process in facts:
    resumed = process[checks.resumed_name(source, layout)]
    assert resumed['is_state'] and resumed['count'] == checks.SAVE_AFTER
    assert resumed['pool_specs'] == {
        k: str(checks.LAYOUTS[layout][k]) for k in KERNELS}
    assert resumed['history'] == history


@pytest.mark.parametrize('restored_by', ['two', 'one'])
@pytest.mark.parametrize('layout', list(checks.LAYOUTS))
def test_a_checkpoint_of_two_processes_resumes_bit_identically(
    runs, restored_by, layout):
  # Written by 2 processes; restored onto the same layout by 2 processes and
  # by 1 process with 4 devices, then trained on to the end.
  prefix = checks.resumed_name(layout, layout)
  uninterrupted = {k.replace(f'{layout}/trained', prefix, 1): v
                   for k, v in runs['two'][0].items()
                   if k.startswith(f'{layout}/trained/')}
  assert_bit_identical(runs[restored_by][0], uninterrupted, prefix)
  assert_resumed(runs[restored_by][2], layout, layout,
                 runs['two'][2][0][layout]['history'][checks.SAVE_AFTER:])


def test_a_checkpoint_restored_onto_another_layout_resumes_alike(runs):
  # The output-axis checkpoint restored with its vectors split over the
  # processes. XLA:CPU compiles elementwise code per shard shape, so Adam's
  # moments may differ in the last bit from the uninterrupted run on the
  # other layout; across process counts the bits agree.
  prefix = checks.resumed_name('out_axis', 'fan_in')
  assert_bit_identical(runs['two'][0], runs['one'][0], prefix)
  history = runs['one'][2][0][prefix]['history']
  assert len(history) == checks.TOTAL_STEPS - checks.SAVE_AFTER
  for restored_by in ('two', 'one'):
    assert_resumed(runs[restored_by][2], 'out_axis', 'fan_in', history)
  pool = [k for k in runs['two'][0]
          if k.startswith(prefix + '/1/pool/')]
  assert pool
  for name in pool:  # the pool never drifts
    assert runs['two'][0][name].tobytes() == runs['two'][0][
        name.replace(prefix, 'fan_in/trained')].tobytes()


def test_a_process_that_dies_stops_the_launch_fast(tmp_path):
  start = time.monotonic()
  with pytest.raises(local_processes.LaunchError,
                     match=r'process \d exited with') as failure:
    local_processes.run(
        CHILD, ['--out', str(tmp_path), '--exit-after-init', '1'],
        num_processes=2, devices_per_process=2, timeout_s=TIMEOUT_S)
  assert time.monotonic() - start < FAIL_FAST_S
  assert failure.value.returncodes[1] == 3
  assert failure.value.returncodes[0] != 0  # stopped, not finished


def test_a_launch_that_overruns_is_stopped(tmp_path):
  # Shorter than the processes take to start: they are stopped wherever
  # they are, and the sleep makes sure they could never finish in time.
  timeout_s = 2
  start = time.monotonic()
  with pytest.raises(local_processes.LaunchError,
                     match='overran') as failure:
    local_processes.run(
        CHILD, ['--out', str(tmp_path), '--sleep-after-init', '600'],
        num_processes=2, devices_per_process=2, timeout_s=timeout_s)
  assert time.monotonic() - start < timeout_s + 5
  assert all(code < 0 for code in failure.value.returncodes)  # killed
