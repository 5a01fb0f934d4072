"""The train CLI contract: results.json, plots, clean failures.

The README's main command runs once (a module fixture) and its tests read
it: each optimizer's results.json and plot, the comparison and the summary
table.
"""

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip('matplotlib', reason='needs the experiments extra')
pytest.importorskip('mlxtend', reason='needs the experiments extra')

from experiments import analyze  # pylint: disable=wrong-import-position
from experiments import train  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--dataset', 'digits', '--batch-size', '32', '--epochs', '1',
        '--k', '5', '--no-progress']
# F2 (three kernels, no biases) compiles faster than LeNet-300-100, and what
# an analysis writes does not depend on the model.
SMALL = ['--model', 'f2']


@pytest.fixture(scope='module')
def readme_run(tmp_path_factory):
  """`python -m experiments.train` with its defaults, cut to 20 steps:
  (the output directory, what it printed)."""
  out = tmp_path_factory.mktemp('readme') / 'default'
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    assert train.main(['--max-steps', '20', '--no-progress',
                       '--out', str(out)]) == 0
  return out, printed.getvalue()


def test_the_readme_main_command_runs(readme_run):
  out, printed = readme_run
  assert 'LaPerm - Adam (final)' in printed
  assert (out / 'laperm' / 'results.json').exists()


def test_results_contract(readme_run):
  out = readme_run[0] / 'laperm'  # as `--optimizer laperm --out DIR` writes
  res = json.loads((out / 'results.json').read_text())
  for field in ('final_test_accuracy', 'best_test_accuracy', 'history',
                'config', 'wall_time_s', 'compile_time_s', 'train_time_s',
                'steps_per_second', 'n_syncs', 'exact_permutation'):
    assert field in res
  # The run ends on a sync.
  assert res['config']['total_steps'] % res['config']['k_steps'] == 0
  assert res['trained_params_within_sync_bound'] is True
  for entry in res['history']:
    assert {'step', 'test_accuracy', 'train_loss', 'after_sync'} <= set(entry)
  assert res['config']['optimizer'] == 'laperm'
  assert res['config']['seed'] == 0
  assert (out / 'curves.png').stat().st_size > 1000


def test_both_optimizers_write_a_comparison(readme_run):
  out, out_text = readme_run
  res = json.loads((out / 'results.json').read_text())
  assert 'laperm_minus_adam_final_pt' in res['comparison']
  assert (out / 'adam' / 'results.json').exists()
  assert (out / 'laperm' / 'results.json').exists()
  assert 'LaPerm - Adam' in out_text
  assert 'compile' in out_text and 'steps/s' in out_text
  time = res['comparison']['time']
  syncs = res['config']['total_steps'] // res['config']['k_steps']
  assert syncs > 0 and time['n_syncs'] == syncs
  assert time['sync_cost_plain_steps'] is not None


def test_preset_values_are_defaults_that_flags_override(tmp_path):
  parser = train.build_parser()
  from experiments import cli  # pylint: disable=import-outside-toplevel
  args = cli.parse(parser, ['--preset', 'paper_f2_mnist', '--epochs', '3'])
  assert args.model == 'f2' and args.k == '250' and args.epochs == 3
  cfg = cli.config_from_args(args)
  assert cfg.init == 'shared' and len(cfg.density) == 3


def failure(capsys, *args):
  """(exit code, standard error) of ``train.main(args)``, which must exit
  (no other exception: no traceback). tests/test_experiments_data.py runs
  such a failure through ``python -m experiments.train``."""
  with pytest.raises(SystemExit) as exit_info:
    train.main(list(args))
  return exit_info.value.code, capsys.readouterr().err


def test_unknown_model_fails_cleanly(capsys):
  code, err = failure(capsys, '--model', 'alexnet', '--no-progress')
  assert code != 0
  assert err.strip().count('\n') == 0 and 'alexnet' in err


def test_missing_dataset_fails_with_one_line(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv('HOME', str(tmp_path))
  monkeypatch.delenv('MNIST_DIR', raising=False)
  code, err = failure(capsys, '--dataset', 'mnist', '--data-dir',
                      str(tmp_path), '--no-progress')
  assert code != 0
  lines = err.strip().splitlines()
  assert len(lines) == 1 and 'tfds' in lines[0] and '--data-dir' in lines[0]


@pytest.mark.parametrize('name', sorted(analyze.ANALYSES))
def test_each_analysis_on_tiny_settings(name, tmp_path):
  out = tmp_path / name
  # The transplant keeps the leaves outside the mask: LeNet's biases.
  model = [] if name == 'transplant' else SMALL
  assert analyze.main([name] + TINY + model + [
      '--max-steps', '15', '--ks', '1,5', '--random-perms', '2',
      '--out', str(out)]) == 0
  assert (out / f'{name}.json').exists()
  assert (out / f'{name}.md').exists()
  assert list(out.glob('*.png'))


@pytest.mark.slow
def test_default_command_runs(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'experiments.train', '--out',
                         str(tmp_path / 'default')], cwd=ROOT,
                        capture_output=True, text=True, timeout=900,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'LaPerm - Adam' in proc.stdout


def test_summarize_lists_both_runs(readme_run, capsys):
  from experiments import summarize  # pylint: disable=import-outside-toplevel
  out, _ = readme_run
  assert summarize.main([str(out)]) == 0
  table = capsys.readouterr().out
  assert '| laperm |' in table and '| adam |' in table


def test_compile_cache_lives_in_the_user_cache_and_the_suite_turns_it_off(
    tmp_path, monkeypatch):
  from experiments import compile_cache  # pylint: disable=import-outside-toplevel
  # tests/conftest.py: the suite never writes to the user's cache.
  assert compile_cache.disabled_by_environment()
  assert compile_cache.enable() is None
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  assert compile_cache.default_directory() == str(tmp_path / 'laperm_jax' /
                                                  'jax')
  for value, off in (('0', True), ('off', True), ('1', False), ('', False)):
    monkeypatch.setenv(compile_cache.ENV_SWITCH, value)
    assert compile_cache.disabled_by_environment() is off, value
  assert '--no-compile-cache' in train.build_parser().format_help()
