"""Every preset trains a few steps in CI, so that a broken preset fails here.

Each preset runs through the CLI's parsing (its values as defaults) on tiny
fake data of its dataset's shape: a couple of steps, a sync, an evaluation.
The README's main command runs for real (a few steps) in
tests/test_experiments_cli.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip('mlxtend', reason='needs the experiments extra')

from experiments import cli  # pylint: disable=wrong-import-position
from experiments import data  # pylint: disable=wrong-import-position
from experiments import presets  # pylint: disable=wrong-import-position
from experiments import train  # pylint: disable=wrong-import-position
from experiments import training  # pylint: disable=wrong-import-position
from tests.sync_bound_checks import assert_trained_params_are_a_synced_theta0  # pylint: disable=wrong-import-position

SHAPES = {'cifar10': (32, 32, 3)}


def fake_dataset(name):
  shape = SHAPES.get(name, (28, 28, 1))
  rng = np.random.default_rng(0)
  return data.Dataset(
      name, rng.integers(0, 256, (16,) + shape, dtype=np.uint8),
      np.arange(16, dtype=np.int32) % 10,
      rng.integers(0, 256, (8,) + shape, dtype=np.uint8),
      np.arange(8, dtype=np.int32) % 10, 10, 255.0, 'fake')


# One real run per model family that is cheap on CPU; every preset (ResNet50
# and Conv13 included, whose CPU compile alone takes a minute) is traced.
# LeNet runs for real in the README command (and F1 in the resume tests).
# The convnets' runs are heavy (-m slow); their steps are traced below.
RUN = (pytest.param('cpu_conv7_mnist5k', marks=pytest.mark.slow),
       pytest.param('paper_conv2_cifar10', marks=pytest.mark.slow),
       'paper_f2_mnist')
# Presets that differ from a traced sibling only in their numbers (the
# density of a pruned ResNet): traced with -m slow.
TRACED_SLOW = ('paper_resnet50_cifar10_pruned30',
               'paper_resnet50_cifar10_pruned50',
               'paper_resnet50_cifar10_pruned70')


def small_config(preset):
  args = cli.parse(train.build_parser(), ['--preset', preset])
  cfg = cli.config_from_args(args, optimizer='laperm')
  expected = presets.PRESETS[preset]
  for field, value in expected.items():  # the preset reached the config
    got = getattr(cfg, field)
    assert got == value or [got] == value, (field, got, value)
  return training.RunConfig(**dict(
      vars(cfg), batch_size=2, k='1', max_steps=2, eval_batch_size=8,
      time_limit_s=None))


@pytest.mark.parametrize('preset', [
    pytest.param(name, marks=pytest.mark.slow) if name in TRACED_SLOW else name
    for name in sorted(presets.PRESETS)])
def test_preset_traces_a_training_step_and_an_evaluation(preset):
  cfg = small_config(preset)
  pipe = training.Pipeline(cfg, fake_dataset(cfg.dataset))

  def init_and_step():
    params, batch_stats, mask = pipe.init_variables()
    inner, tx = pipe.make_optimizer(params, mask)
    carry = training.TrainCarry(params, batch_stats, tx.init(params))
    steps = training.Steps(pipe, tx, inner, params, batch_stats)
    idx = jnp.asarray(pipe.batch_indices(0, 1)[0])
    carry, loss, _ = steps._single_step(  # pylint: disable=protected-access
        carry, idx, jnp.int32(1), pipe.x_train, pipe.y_train)
    correct, _, _ = steps._evaluate_exact(  # pylint: disable=protected-access
        carry.params, carry.opt_state, carry.batch_stats, pipe.x_test,
        pipe.y_test, pipe.valid)
    return loss, correct

  loss, correct = jax.eval_shape(init_and_step)
  assert loss.shape == () and correct.shape == ()


@pytest.mark.parametrize('preset', RUN)
def test_preset_trains_a_few_steps(preset):
  cfg = small_config(preset)
  result = training.run(cfg, fake_dataset(cfg.dataset), progress=False)
  res = result.results
  assert [h['step'] for h in res['history']] == [2]
  assert_trained_params_are_a_synced_theta0(result)
  assert res['trained_params_within_sync_bound'] is True
  assert np.isfinite(res['history'][-1]['test_loss'])

