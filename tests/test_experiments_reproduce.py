"""`python -m experiments.reproduce`: a same-machine rerun is bit-identical."""

import json
import shutil

import pytest

pytest.importorskip('mlxtend', reason='needs the experiments extra')
pytest.importorskip('sklearn', reason='the digits dataset')

from experiments import reproduce  # pylint: disable=wrong-import-position
from experiments import train  # pylint: disable=wrong-import-position

TINY = ['--dataset', 'digits', '--model', 'f2', '--batch-size', '32',
        '--epochs', '1',
        '--k', '5', '--max-steps', '20', '--eval-every', '10',
        '--optimizer', 'laperm']


def test_rows_name_committed_runs():
  for name in reproduce.ROWS:
    assert reproduce.result_files(f'{reproduce.RESULTS}/{name}'), name


def test_a_rerun_on_the_same_machine_is_bit_identical(tmp_path, monkeypatch,
                                                      capsys):
  committed = tmp_path / 'results'
  assert train.main(TINY + ['--no-progress', '--out',
                            str(committed / 'tiny')]) == 0
  monkeypatch.setattr(reproduce, 'RESULTS', str(committed))
  monkeypatch.setitem(reproduce.ROWS, 'tiny', TINY)
  out = tmp_path / 'rerun'
  assert reproduce.main(['--rows', 'tiny', '--out', str(out)]) == 0
  report = json.loads((out / 'reproduce.json').read_text())
  files = report['rows'][0]['files']
  assert set(files) == {'results.json'}
  for f in files.values():
    assert f['identical'] and f['differences'] == [], f
    assert f['same_machine'] is True
  assert '| tiny | laperm |' in capsys.readouterr().out

  # A recorded number that the rerun does not give is a failure here. The
  # rerun gives the files of the rerun above (bit-identical, as just shown)
  # without training a third time.
  path = committed / 'tiny' / 'results.json'
  res = json.loads(path.read_text())
  res['history'][0]['test_loss'] += 1e-7
  res['final_test_accuracy'] -= 0.01
  path.write_text(json.dumps(res))
  shutil.copytree(out / 'tiny', tmp_path / 'first_rerun')

  def same_rerun(argv):
    shutil.copytree(tmp_path / 'first_rerun', argv[argv.index('--out') + 1])
    return 0
  monkeypatch.setattr(reproduce.train, 'main', same_rerun)
  assert reproduce.main(['--rows', 'tiny', '--out', str(out)]) == 1
  lap = json.loads((out / 'reproduce.json').read_text())['rows'][0]['files'][
      'results.json']
  assert not lap['identical'] and len(lap['differences']) == 2


def test_another_machine_is_named_with_its_differences():
  here = {'backend': 'cpu', 'cpu_model': 'AMD EPYC',
          'xla_target': {'cpu': 'znver5', 'features': ['avx2', 'avx512f']}}
  there = dict(here, xla_target={'cpu': 'znver3', 'features': ['avx2']})
  same, why = reproduce.provenance.same_machine(there, here)
  assert same is False and 'znver3 -> znver5' in why and 'avx512f' in why
  assert reproduce.provenance.same_machine(here, dict(here))[0] is True
  assert reproduce.provenance.same_machine(None, here)[0] is None
