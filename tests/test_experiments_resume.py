"""`--checkpoint-every` / `--resume`: an interrupted run resumes bit-identically."""

import json

import jax
import numpy as np
import pytest

pytest.importorskip('mlxtend', reason='needs the experiments extra')
pytest.importorskip('sklearn', reason='the digits dataset')
ocp = pytest.importorskip('orbax.checkpoint')

from experiments import checkpointing  # pylint: disable=wrong-import-position
from experiments import train  # pylint: disable=wrong-import-position

# Syncs after steps 3, 6, 9, 12, each evaluated and recorded (--track-syncs);
# evaluations also at 14; checkpoints at 4, 8, 12, 14. Step 8 is mid-period
# (between the syncs of 6 and 9, whose record counts the weights moved since
# the sync of 6) and mid-interval (its losses since step 6 are pending).
RUN = ['--dataset', 'digits', '--model', 'f1', '--batch-size', '32',
       '--k', '3', '--max-steps', '14', '--eval-every', '6',
       '--optimizer', 'laperm', '--no-progress', '--checkpoint-every', '4',
       '--track-syncs']
INTERRUPT_AT = 8


class Interrupted(Exception):
  pass


def final_state(out):
  """Every array of the last checkpoint (params, pool, Adam, counters)."""
  directory = out / 'checkpoints'
  last = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.restore(directory / str(last) / 'state')
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return last, {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def interrupt_at(step, argv, monkeypatch):
  """Runs ``argv`` until its checkpoint of ``step`` is saved, then dies."""
  save = checkpointing.Checkpoints.save
  def save_then_die(self, at, tree, loop):
    save(self, at, tree, loop)
    if at == step:
      raise Interrupted
  monkeypatch.setattr(checkpointing.Checkpoints, 'save', save_then_die)
  with pytest.raises(Interrupted):
    train.main(argv)
  monkeypatch.undo()


def test_interrupted_mid_period_resumes_bit_identically(tmp_path, monkeypatch,
                                                        capsys):
  full, cut = tmp_path / 'full', tmp_path / 'cut'
  assert train.main(RUN + ['--out', str(full)]) == 0

  interrupt_at(INTERRUPT_AT, RUN + ['--out', str(cut)], monkeypatch)
  assert not (cut / 'results.json').exists()
  with pytest.raises(SystemExit):  # checkpoints there, no --resume: refused
    train.main(RUN + ['--out', str(cut)])
  assert '--resume' in capsys.readouterr().err

  restored = []
  restore = checkpointing.Checkpoints.restore
  def spy(self, *args):
    out = restore(self, *args)
    # A host copy: the run donates the restored carry to its first chunk.
    restored.append((self.latest, jax.tree.map(np.asarray, out.opt_state)))
    return out
  monkeypatch.setattr(checkpointing.Checkpoints, 'restore', spy)
  assert train.main(RUN + ['--out', str(cut), '--resume']) == 0
  assert 'resuming from step 8' in capsys.readouterr().err
  (latest, state), = restored
  assert latest == INTERRUPT_AT
  import laperm_jax  # pylint: disable=import-outside-toplevel
  assert isinstance(state, laperm_jax.LaPermState)
  assert int(state.count) == 8 and int(state.steps_since_sync) == 2

  a = json.loads((full / 'results.json').read_text())
  b = json.loads((cut / 'results.json').read_text())
  assert a['history'] == b['history']
  assert [r['step'] for r in a['sync_records']] == [3, 6, 9, 12]
  assert a['sync_records'] == b['sync_records']
  assert a['final_test_accuracy'] == b['final_test_accuracy']
  last_a, leaves_a = final_state(full)
  last_b, leaves_b = final_state(cut)
  assert last_a == last_b == 14
  assert leaves_a.keys() == leaves_b.keys() and len(leaves_a) > 5
  for name, value in leaves_a.items():
    assert np.array_equal(value, leaves_b[name]), name

  # Resuming with another config fails with one clear line.
  with pytest.raises(SystemExit) as exit_info:
    train.main(RUN + ['--out', str(cut), '--resume', '--lr', '0.01'])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert 'another config' in err and 'lr: 0.001 -> 0.01' in err


def test_spans_split_at_checkpoints():
  assert checkpointing.spans(0, 6, None) == [(0, 6)]
  assert checkpointing.spans(2, 9, 4) == [(2, 4), (4, 8), (8, 9)]
  assert checkpointing.spans(5, 5, 4) == []
