"""`--mesh`: the train CLI on 8 fake CPU devices equals the one-device run;
without `--mesh` it trains data parallel on every device."""

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
import orbax.checkpoint as ocp
from experiments import checkpointing, mesh, train

assert jax.device_count() == 8, jax.devices()
out = pathlib.Path(sys.argv[1])
RUN = ['--dataset', 'digits', '--model', 'lenet300', '--batch-size', '32',
       '--k', '3', '--max-steps', '12', '--eval-every', '6',
       '--optimizer', 'laperm', '--no-progress', '--checkpoint-every', '12']
live = {}
save = checkpointing.Checkpoints.save
def spy(self, step, tree, loop):
  live[self.directory] = {
      jax.tree_util.keystr(p): [tuple(x.sharding.spec) if hasattr(
          x.sharding, 'spec') else 'single', len(x.sharding.device_set)]
      for p, x in jax.tree_util.tree_flatten_with_path(tree['carry'])[0]}
  save(self, step, tree, loop)
checkpointing.Checkpoints.save = spy

def final(name):
  with ocp.StandardCheckpointer() as c:
    tree = c.restore(out / name / 'checkpoints' / '12' / 'state')
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}

report = {}
assert train.main(RUN + ['--mesh', 'none', '--out', str(out / 'single')]) == 0
for spec in ('data=4,model=2', 'default'):
  name = spec.replace('=', '').replace(',', '_')
  flags = [] if spec == 'default' else ['--mesh', spec]
  assert train.main(RUN + flags + ['--out', str(out / name)]) == 0
  a = json.loads((out / 'single' / 'results.json').read_text())
  b = json.loads((out / name / 'results.json').read_text())
  ref, got = final('single'), final(name)
  report[spec] = dict(
      mesh=b['mesh'],
      accuracies=[[x['test_accuracy'], y['test_accuracy']]
                  for x, y in zip(a['history'], b['history'])],
      max_loss_diff=max(abs((x['train_loss'] or 0) - (y['train_loss'] or 0))
                        for x, y in zip(a['history'], b['history'])),
      max_param_diff=max(float(np.max(np.abs(ref[k] - got[k])))
                         for k in ref if ref[k].size),
      same_leaves=sorted(ref) == sorted(got),
      within_sync_bound=b['trained_params_within_sync_bound'],
      shardings=live[str((out / name / 'checkpoints').absolute())])
rows = mesh.MeshPlan('data=4,model=2').batch_indices(
    np.arange(3 * 32).reshape(3, 32))
report['batch_rows'] = sorted({s.data.shape for s in rows.addressable_shards})
print('RESULTS ' + json.dumps(report))
'''


def test_mesh_matches_single_device(tmp_path):
  env = dict(os.environ,
             XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', SCRIPT, str(tmp_path)],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith('RESULTS ')][-1]
  report = json.loads(line[len('RESULTS '):])
  # Each device holds only its data shard of each batch's rows.
  assert report.pop('batch_rows') == [[3, 8]]
  assert report['default']['mesh']['spec'] == 'data=8'
  assert report['default']['mesh']['chosen'] == 'default'
  assert report['data=4,model=2']['mesh']['chosen'] == 'flag'
  for mesh, got in report.items():
    assert got['mesh']['devices'] == 8, mesh
    assert got['same_leaves'] and got['within_sync_bound'] is True, mesh
    for single, sharded in got['accuracies']:
      assert single == sharded, (mesh, got['accuracies'])
    assert got['max_loss_diff'] < 1e-5, (mesh, got)
    assert got['max_param_diff'] < 1e-5, (mesh, got)
  shardings = report['data=4,model=2']['shardings']
  # After training, kernels are still split over their output axis on
  # `model`, on all 8 devices, and so are their LaPerm pool and Adam moments
  # (the biases too, as in examples/sharded_training.py).
  on_model = [[None, 'model'], 8]
  for layer in ('dense1', 'dense2', 'dense3'):
    kernel = [v for k, v in shardings.items() if f"['{layer}']['kernel']" in k]
    assert len(kernel) == 4 and all(v == on_model for v in kernel), shardings
    assert shardings[f"[0]['{layer}']['bias']"] == [['model'], 8], shardings
  assert any(k.startswith('[2].pool') for k in shardings)


def test_mesh_flag_errors():
  assert mesh_lib.parse('data=4,model=2') == {'data': 4, 'model': 2}
  assert mesh_lib.parse('data=8') == {'data': 8, 'model': 1}
  for bad in ('data', 'batch=2', 'data=x', 'data=0', 'data=2,data=2'):
    with pytest.raises(mesh_lib.MeshError):
      mesh_lib.parse(bad)
  with pytest.raises(mesh_lib.MeshError, match='needs 64 devices'):
    mesh_lib.MeshPlan('data=64')
