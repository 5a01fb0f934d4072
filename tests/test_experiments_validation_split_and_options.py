"""The harness's validation split, LaPerm options and tuned presets."""

import numpy as np
import pytest

pytest.importorskip('mlxtend', reason='needs the experiments extra')

from experiments import cli  # pylint: disable=wrong-import-position
from experiments import data  # pylint: disable=wrong-import-position
from experiments import presets  # pylint: disable=wrong-import-position
from experiments import train  # pylint: disable=wrong-import-position
from experiments import training  # pylint: disable=wrong-import-position

DIGITS = data.load('digits')


def test_validation_split_is_carved_from_train_only():
  val = data.validation_split(DIGITS, 0.2)
  again = data.validation_split(DIGITS, 0.2)
  np.testing.assert_array_equal(val.y_test, again.y_test)  # fixed seed
  assert val.name == 'digits-val'
  assert len(val.y_train) + len(val.y_test) == len(DIGITS.y_train)
  # Every validation and remaining training image is a training image, and
  # none of the test images is used at all.
  rows = {r.tobytes() for r in DIGITS.x_train}
  test_rows = {r.tobytes() for r in DIGITS.x_test} - rows
  for x in (val.x_train, val.x_test):
    got = {r.tobytes() for r in x}
    assert got <= rows and not got & test_rows
  # Disjoint as multisets of rows: counts add up per class, stratified.
  for c in range(10):
    n = np.sum(DIGITS.y_train == c)
    assert np.sum(val.y_test == c) == round(0.2 * n)
    assert np.sum(val.y_train == c) == n - round(0.2 * n)
  with pytest.raises(ValueError):
    data.validation_split(DIGITS, 1.0)


def test_options_reach_the_library_and_keep_permutations():
  cfg = training.RunConfig(model='f2', dataset='digits', batch_size=32,
                           epochs=1, k='5', init='shared',
                           density=[0.5, 0.2, 0.4], shared_value=0.05,
                           max_steps=15, track_syncs=True, val_split=0.25,
                           carry_residual=1.0, reset_inner_state=True,
                           inner='momentum', lr=0.05)
  run = training.run(cfg, DIGITS, progress=False)
  res = run.results
  assert res['exact_permutation'] and res['exact_permutation_library']
  assert res['config']['carry_residual'] == 1.0
  assert res['dataset']['name'] == 'digits-val'
  val = data.validation_split(DIGITS, 0.25)
  assert res['dataset']['n_test'] == len(val.y_test)
  assert res['dataset']['n_train'] == len(val.y_train)
  assert len(run.sync_records) == 3


def test_flags_parse_into_the_config():
  args = cli.parse(train.build_parser(), [
      '--preset', 'cpu_f2_mnist5k', '--carry-residual', '0.5',
      '--reset-inner-state', '--inner', 'sgd', '--val-split', '0.2'])
  cfg = cli.config_from_args(args)
  assert (cfg.carry_residual, cfg.reset_inner_state, cfg.inner,
          cfg.val_split) == (0.5, True, 'sgd', 0.2)
  plain = cli.config_from_args(cli.parse(train.build_parser(), []))
  assert (plain.carry_residual, plain.reset_inner_state, plain.inner,
          plain.val_split) == (0.0, False, 'adam', 0.0)


# One real run per model in the default suite; the other two differ from
# these only in their numbers (and every preset is traced in
# tests/test_experiments_presets.py).
@pytest.mark.parametrize('name', [
    'cpu_f1_mnist5k_best',
    pytest.param('cpu_f2_mnist5k_best', marks=pytest.mark.slow),
    pytest.param('cpu_f1_fashion_best', marks=pytest.mark.slow),
    'cpu_f2_fashion_best'])
def test_best_presets_run_a_few_steps(name):
  cfg = cli.config_from_args(cli.parse(train.build_parser(),
                                       ['--preset', name]), optimizer='laperm')
  assert cfg.init == 'shared' and cfg.model in ('f1', 'f2')
  # Few steps on digits-sized fake MNIST-shaped data.
  rng = np.random.default_rng(0)
  fake = data.Dataset('fake', rng.integers(0, 256, (64, 28, 28, 1), np.uint8),
                      np.arange(64, dtype=np.int32) % 10,
                      rng.integers(0, 256, (20, 28, 28, 1), np.uint8),
                      np.arange(20, dtype=np.int32) % 10, 10, 255.0, 'fake')
  import dataclasses  # pylint: disable=import-outside-toplevel
  cfg = dataclasses.replace(cfg, batch_size=16, k='2', max_steps=4)
  run = training.run(cfg, fake, progress=False)
  assert run.results['exact_permutation']
  assert name in presets.PRESETS
