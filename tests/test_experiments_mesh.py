"""`--mesh`: the train CLI on 4 fake CPU devices equals the one-device run;
without `--mesh` it trains on every device, also when the batch does not
divide over them."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip('mlxtend', reason='needs the experiments extra')
pytest.importorskip('sklearn', reason='the digits dataset')
pytest.importorskip('orbax.checkpoint')

from experiments import mesh as mesh_lib  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a subprocess: the device count is fixed when JAX starts.
SCRIPT = r'''
import json, pathlib, sys
import jax, numpy as np
from experiments import loop, mesh, train

assert jax.device_count() == 4, jax.devices()
out = pathlib.Path(sys.argv[1])
# A batch of 6 does not divide over the 4 devices.
RUN = ['--dataset', 'digits', '--model', 'lenet300', '--batch-size', '6',
       '--k', '3', '--max-steps', '12', '--eval-every', '6', '--lr', '0.003',
       '--optimizer', 'laperm', '--no-progress']
# --track-syncs also evaluates the params just before each sync, which
# another program than the training chunk returns.
MESHES = {'model=4': ['--mesh', 'model=4', '--track-syncs'], 'default': []}
loops = []  # the loop of each run once it has trained
train_loop = loop.Loop.train
def spy(self, progress):
  train_loop(self, progress)
  loops.append(self)
loop.Loop.train = spy

def final():
  leaves = jax.tree_util.tree_flatten_with_path(tuple(loops[-1].carry))[0]
  values = {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}
  shardings = {jax.tree_util.keystr(p): [tuple(x.sharding.spec) if hasattr(
      x.sharding, 'spec') else 'single', len(x.sharding.device_set)]
               for p, x in leaves}
  return values, shardings

def by_step(history):
  return {h['step']: h for h in history if h['after_sync']}

report = {}
assert train.main(RUN + ['--mesh', 'none', '--out', str(out / 'single')]) == 0
a = json.loads((out / 'single' / 'results.json').read_text())
ref, _ = final()
for spec, flags in MESHES.items():
  name = spec.replace('=', '').replace(',', '_')
  assert train.main(RUN + flags + ['--out', str(out / name)]) == 0
  b = json.loads((out / name / 'results.json').read_text())
  got, shardings = final()
  single, sharded = by_step(a['history']), by_step(b['history'])
  report[spec] = dict(
      mesh=b['mesh'],
      accuracies=[[single[s]['test_accuracy'],
                   sharded[s]['test_accuracy']] for s in single],
      # With --track-syncs the evaluations, and so the mean losses between
      # them, are more frequent: only the runs without it compare losses.
      max_loss_diff=None if flags else max(
          abs((x['train_loss'] or 0) - (y['train_loss'] or 0))
          for x, y in zip(a['history'], b['history'])),
      max_param_diff=max(float(np.max(np.abs(ref[k] - got[k])))
                         for k in ref if ref[k].size),
      same_leaves=set(ref) <= set(got),
      within_sync_bound=b['trained_params_within_sync_bound'],
      shardings=shardings)
  if '--track-syncs' in flags:
    # The evaluation, compiled for the params just before a sync, accepts
    # the params of every other program too.
    run = loops[-1]
    report[spec]['evaluated'] = [
        run.steps.evaluate(params, run.carry.batch_stats)[0] for params in (
            run.carry.params, run.exact_params, run.params_before_last_step)]
    report[spec]['final_accuracy'] = b['final_test_accuracy']
rows = mesh.MeshPlan('data=2,model=2').batch_indices(
    np.arange(3 * 6).reshape(3, 6))
report['batch_rows'] = sorted({s.data.shape for s in rows.addressable_shards})
print('RESULTS ' + json.dumps(report))
'''


def test_mesh_matches_single_device(tmp_path):
  env = dict(os.environ,
             XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', SCRIPT, str(tmp_path)],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith('RESULTS ')][-1]
  report = json.loads(line[len('RESULTS '):])
  # Each device holds only its data shard of each batch's rows.
  assert report.pop('batch_rows') == [[3, 3]]
  assert report['default']['mesh'] == dict(
      spec='data=2,model=2', shape={'data': 2, 'model': 2}, devices=4,
      platform='cpu', chosen='default', processes=1)
  assert ('training on all 4 devices: --mesh data=2,model=2'
          in proc.stdout), proc.stdout
  assert report['model=4']['mesh']['chosen'] == 'flag'
  assert report['default']['max_loss_diff'] < 1e-5, report['default']
  tracked = report['model=4']
  assert tracked['evaluated'][1] == tracked['final_accuracy'], tracked
  for mesh, got in report.items():
    assert got['mesh']['devices'] == 4, mesh
    assert got['same_leaves'] and got['within_sync_bound'] is True, mesh
    for single, sharded in got['accuracies']:
      assert single == sharded, (mesh, got['accuracies'])
    assert got['max_param_diff'] < 1e-5, (mesh, got)
  # After training, kernels are still split over their output axis on
  # `model` where it divides, on all 4 devices, and so are their LaPerm pool
  # and Adam moments (the biases too, as in examples/sharded_training.py);
  # the 10 outputs of dense3 do not divide over model=4 and stay replicated.
  on_model, replicated = [[None, 'model'], 4], [[], 4]
  for mesh, dense3 in (('default', on_model), ('model=4', replicated)):
    shardings = report[mesh]['shardings']
    for layer, layout in (('dense1', on_model), ('dense2', on_model),
                          ('dense3', dense3)):
      kernel = [v for k, v in shardings.items()
                if f"['{layer}']['kernel']" in k]
      assert len(kernel) >= 4 and all(v == layout for v in kernel), shardings
      bias = [['model'], 4] if layout == on_model else replicated
      assert shardings[f"[0]['{layer}']['bias']"] == bias, shardings
    assert any(k.startswith('[2].pool') for k in shardings)


def test_mesh_flag_errors():
  assert mesh_lib.parse('data=4,model=2') == {'data': 4, 'model': 2}
  assert mesh_lib.parse('data=8') == {'data': 8, 'model': 1}
  for bad in ('data', 'batch=2', 'data=x', 'data=0', 'data=2,data=2'):
    with pytest.raises(mesh_lib.MeshError):
      mesh_lib.parse(bad)
  with pytest.raises(mesh_lib.MeshError, match='needs 64 devices'):
    mesh_lib.MeshPlan('data=64')
