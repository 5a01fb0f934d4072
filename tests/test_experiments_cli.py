"""The train CLI contract: results.json, plots, clean failures."""

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


def test_results_contract(tmp_path):
  out = tmp_path / 'run'
  assert train.main(TINY + ['--optimizer', 'laperm', '--max-steps', '40',
                            '--out', str(out)]) == 0
  res = json.loads((out / 'results.json').read_text())
  for field in ('final_test_accuracy', 'best_test_accuracy', 'history',
                'config', 'wall_time_s', 'compile_time_s', 'train_time_s',
                'steps_per_second', 'n_syncs', 'exact_permutation'):
    assert field in res
  # 40 steps at k = 5: the run ends on a sync.
  assert res['trained_params_within_sync_bound'] is True
  for entry in res['history']:
    assert {'step', 'test_accuracy', 'train_loss', 'after_sync'} <= set(entry)
  assert res['config']['optimizer'] == 'laperm'
  assert res['config']['seed'] == 0
  assert (out / 'curves.png').stat().st_size > 1000


def test_both_optimizers_write_a_comparison(tmp_path, capsys):
  out = tmp_path / 'both'
  assert train.main(TINY + ['--max-steps', '12', '--out', str(out)]) == 0
  res = json.loads((out / 'results.json').read_text())
  assert 'laperm_minus_adam_final_pt' in res['comparison']
  assert (out / 'adam' / 'results.json').exists()
  assert (out / 'laperm' / 'results.json').exists()
  out_text = capsys.readouterr().out
  assert 'LaPerm - Adam' in out_text
  assert 'compile' in out_text and 'steps/s' in out_text
  time = res['comparison']['time']
  assert time['n_syncs'] == 2 and time['sync_cost_plain_steps'] is not None


def test_preset_values_are_defaults_that_flags_override(tmp_path):
  parser = train.build_parser()
  from experiments import cli  # pylint: disable=import-outside-toplevel
  args = cli.parse(parser, ['--preset', 'paper_f2_mnist', '--epochs', '3'])
  assert args.model == 'f2' and args.k == '250' and args.epochs == 3
  cfg = cli.config_from_args(args)
  assert cfg.init == 'shared' and len(cfg.density) == 3


def run_cli(*args, env=None):
  return subprocess.run([sys.executable, '-m', 'experiments.train', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=120,
                        env=env, check=False)


def test_unknown_model_fails_cleanly():
  proc = run_cli('--model', 'alexnet', '--no-progress')
  assert proc.returncode != 0
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip().count('\n') == 0 and 'alexnet' in proc.stderr


def test_missing_dataset_fails_with_one_line(tmp_path):
  env = dict(os.environ, HOME=str(tmp_path))
  env.pop('MNIST_DIR', None)
  proc = run_cli('--dataset', 'mnist', '--data-dir', str(tmp_path),
                 '--no-progress', env=env)
  assert proc.returncode != 0
  assert 'Traceback' not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and 'tfds' in lines[0] and '--data-dir' in lines[0]


@pytest.mark.parametrize('name', sorted(analyze.ANALYSES))
def test_each_analysis_on_tiny_settings(name, tmp_path):
  out = tmp_path / name
  assert analyze.main([name] + TINY + ['--max-steps', '15', '--ks', '1,5',
                                       '--random-perms', '2',
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


def test_summarize_lists_both_runs(tmp_path, capsys):
  from experiments import summarize  # pylint: disable=import-outside-toplevel
  out = tmp_path / 'both'
  assert train.main(TINY + ['--max-steps', '6', '--out', str(out)]) == 0
  capsys.readouterr()
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
