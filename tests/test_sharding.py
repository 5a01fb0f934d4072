"""Sharded params on 8 fake CPU devices, against a single-device run.

All multi-device work happens in one subprocess (``sharding_checks.py``),
because the device count must be fixed before JAX starts; the rest of the
suite keeps its single device.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

CHECKS = pathlib.Path(__file__).with_name('sharding_checks.py')


# The core claims run in the default suite; their variants run under
# -m slow: forced sort kernels, row blocks, data parallelism alone, a fan-in
# layout on an Explicit mesh (the 2-D layout splits vectors too, and
# test_multiprocess.py splits them over a 1-D mesh) and on an Auto mesh (the
# library's code path is the output-axis one's; the compiler partitions).
CORE_CHECKS = ('explicit_out_axis', 'explicit_2d', 'auto_out_axis', 'nnx',
               'checkpoint', 'example')
VARIANT_CHECKS = ('explicit_fan_in', 'auto_fan_in',
                  'auto_out_axis_packed_cosort', 'auto_out_axis_keyed',
                  'auto_out_axis_keyed_cosort', 'explicit_out_axis_blocked',
                  'auto_out_axis_blocked', 'data_parallel')

def run_checks(names):
  """Runs the named checks of ``sharding_checks.py`` on 8 fake devices."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      ' --xla_force_host_platform_device_count=8').strip()
  env['JAX_PLATFORMS'] = 'cpu'
  env.pop('LAPERM_JAX_RECONNECT_VARIANT', None)
  proc = subprocess.run([sys.executable, '-W', 'error', str(CHECKS),
                         '--checks', ','.join(names)],
                        env=env, capture_output=True, text=True, timeout=900,
                        cwd=CHECKS.parents[1], check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULTS ')]
  assert proc.returncode == 0 and lines, (proc.stdout[-3000:] +
                                         proc.stderr[-5000:])
  # Older JAX prints a spec as PartitionSpec(...), newer as P(...).
  return json.loads(lines[-1][len('RESULTS '):].replace('PartitionSpec(', 'P('))


@pytest.fixture(scope='module')
def results():
  return run_checks(CORE_CHECKS)


@pytest.fixture(scope='module')
def variant_results():
  return run_checks(VARIANT_CHECKS)


def _keeps_sharding(check):
  assert check['pool_specs'] == {k: check['wanted_specs'][k]
                                 for k in ('dense', 'conv')}
  assert check['eager_specs'] == check['pool_specs']
  for key in ('dense', 'conv'):
    assert check['param_specs'][key] == check['wanted_specs'][key]
    assert check['eager_reconnect_specs'][key] == check['wanted_specs'][key]
    assert check['moment_specs'][key] == check['wanted_specs'][key]


def test_output_axis_sharding_syncs_without_collectives(results):
  check = results['explicit_out_axis']
  assert check['equal'] and check['pool_equal'] and check['eager_equal']
  assert check['collectives'] == [], check['collectives']
  _keeps_sharding(check)


def check_reshards_for_the_sort_and_back(check):
  assert check['equal'] and check['pool_equal'] and check['eager_equal']
  # The vectors are split across devices: the sort needs one all-to-all.
  assert check['collectives'] == ['all-to-all'], check['collectives']
  _keeps_sharding(check)


def test_2d_mesh_reshards_for_the_sort_and_back(results):
  check_reshards_for_the_sort_and_back(results['explicit_2d'])


@pytest.mark.slow
def test_fan_in_mesh_reshards_for_the_sort_and_back(variant_results):
  check_reshards_for_the_sort_and_back(variant_results['explicit_fan_in'])


def test_auto_mesh_gives_single_device_results(results):
  check = results['auto_out_axis']
  assert check['equal'] and check['pool_equal'] and check['eager_equal']
  # Output-axis sharded: jit(tx.init) keeps the pool on the param's sharding.
  # (Under Auto the compiler picks output shardings; pin them with
  # jit(..., out_shardings=...) or use an Explicit mesh.)
  assert check['pool_specs'] == {k: check['wanted_specs'][k]
                                 for k in ('dense', 'conv')}


@pytest.mark.slow
def test_auto_fan_in_mesh_gives_single_device_results(variant_results):
  check = variant_results['auto_fan_in']
  assert check['equal'] and check['pool_equal'] and check['eager_equal']


def test_auto_mesh_output_axis_sync_has_no_collectives(results):
  # Every weight vector of an output-axis-sharded kernel is on one device:
  # the compiler partitions the sync with no communication (the scatter's
  # rows are batching dimensions, not indices).
  check = results['auto_out_axis']
  assert check['equal'] and check['pool_equal']
  assert check['collectives'] == [], check['collectives']


@pytest.mark.slow
@pytest.mark.parametrize('variant', ['packed_cosort', 'keyed', 'keyed_cosort'])
def test_auto_mesh_output_axis_sync_has_no_collectives_for_every_variant(
    variant_results, variant):
  check = variant_results[f'auto_out_axis_{variant}']
  assert check['equal'] and check['pool_equal']
  assert check['collectives'] == [], check['collectives']


@pytest.mark.slow
@pytest.mark.parametrize('axis_type', ['explicit', 'auto'])
def test_row_blocks_of_large_leaves_stay_local(variant_results, axis_type):
  # Large leaves loop over strided row blocks, along a minor factor of the
  # rows: a partitioner splitting the rows keeps each block local.
  check = variant_results[f'{axis_type}_out_axis_blocked']
  assert check['equal'] and check['pool_equal'] and check['eager_equal']
  assert check['collectives'] == [], check['collectives']


def test_nnx_pool_carries_sharding_metadata_like_adam_moments(results):
  check = results['nnx']
  assert check['pool_metadata'] == check['mu_metadata'] == (
      check['kernel_metadata']) == "(None, 'x')"
  assert check['pool_spec'] == check['kernel_spec'] == "P(None, 'x')"
  assert check['partition_spec'] == "P(None, 'x')"
  assert check['synced'] and check['gap_to_pool'] <= 1e-6


def test_data_and_model_parallel_training_matches_single_device(results):
  check = results['example']
  assert check['devices'] == 8 and check['mesh'] == {'data': 4, 'model': 2}
  assert check['match'], check
  assert check['loss_last_mesh'] < check['loss_first']


@pytest.mark.slow
def test_data_parallel_training_matches_single_device(variant_results):
  check = variant_results['data_parallel']
  assert check['mesh'] == {'data': 8, 'model': 1}
  assert check['match'], check


def test_sharded_state_checkpoint_restores_onto_its_shardings(results):
  check = results['checkpoint']
  assert check['is_state'] and check['equal']
  assert check['pool_specs'] == {'dense': "P('x', 'y')",
                                 'conv': "P(None, None, None, 'x')"}
  assert check['moment_specs'] == {'dense': "P('x', 'y')",
                                   'conv': "P(None, None, None, 'x')",
                                   'bias': "P('y',)"}
