"""experiments/colab_tpu.ipynb is a valid notebook whose code runs on CPU."""

import json
import os

import pytest

nbformat = pytest.importorskip('nbformat', reason='needs the experiments extra')
pytest.importorskip('matplotlib', reason='needs the experiments extra')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'experiments', 'colab_tpu.ipynb')


def test_notebook_is_valid():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  assert any(c.cell_type == 'code' for c in nb.cells)


def test_notebook_code_runs_on_cpu_with_tiny_settings(tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  monkeypatch.setenv('LAPERM_NOTEBOOK_TINY', '1')
  monkeypatch.setenv('LAPERM_NOTEBOOK_OUT', str(tmp_path / 'colab'))
  monkeypatch.delenv('LAPERM_REPO_URL', raising=False)
  namespace = {'__name__': '__main__'}
  for cell in nb.cells:
    if cell.cell_type == 'code':
      exec(compile(cell.source, 'colab_tpu.ipynb', 'exec'), namespace)  # pylint: disable=exec-used
  results = json.loads((tmp_path / 'colab' / 'results.json').read_text())
  # 12 steps at k = 5: the last is not a sync, so the final evaluation is
  # the explicit final sync of the protocol.
  assert [h['step'] for h in results['history']][-2:] == [12, 12]
  assert results['history'][-1]['explicit_final_sync']
  assert results['trained_params_within_sync_bound'] is None
  assert (tmp_path / 'colab' / 'curves.png').exists()
