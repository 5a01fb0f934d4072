"""The training protocol of the experiments harness, on tiny real data."""

import re

import jax
import numpy as np
import optax
import pytest

from experiments import data
from experiments import training
from experiments.steps import Steps
from tests.sync_bound_checks import assert_trained_params_are_a_synced_theta0

DIGITS = data.load('digits')


def tiny(**overrides):
  cfg = dict(model='lenet300', dataset='digits', batch_size=32, epochs=1,
             k='5', seed=0)
  cfg.update(overrides)
  return training.RunConfig(**cfg)


@pytest.fixture(scope='module')
def laperm_run_and_programs():
  """A LaPerm run of 23 steps, and the programs it compiled (by key)."""
  built = []

  def steps(*args, **kwargs):
    built.append(Steps(*args, **kwargs))
    return built[-1]
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(training, 'Steps', steps)
    run = training.run(tiny(max_steps=23, eval_every=10), DIGITS,
                       progress=False)
  (run_steps,) = built
  return run, run_steps.programs.compiled


@pytest.fixture(scope='module')
def laperm_run(laperm_run_and_programs):
  return laperm_run_and_programs[0]


def test_evaluations_follow_syncs_and_final_is_post_sync(laperm_run):
  res = laperm_run.results
  hist = res['history']
  # eval interval: the multiple of k=5 nearest to 10 steps; 23 is no sync.
  assert [h['step'] for h in hist] == [10, 20, 23, 23]
  assert [h['after_sync'] for h in hist] == [True, True, False, True]
  assert hist[-1]['explicit_final_sync']
  assert res['final_test_accuracy'] == hist[-1]['test_accuracy']
  assert res['best_test_accuracy'] == max(
      h['test_accuracy'] for h in hist if h['after_sync'])
  # The explicit final sync exports theta_0 permuted per vector.
  for p0, q, f in zip(jax.tree.leaves(laperm_run.params0),
                      jax.tree.leaves(laperm_run.params_final),
                      jax.tree.leaves(laperm_run.mask)):
    if f:
      np.testing.assert_array_equal(np.sort(q, axis=0), np.sort(p0, axis=0))
  # Three Adam steps after the last sync: the explicit final sync moves them.
  assert res['max_abs_change_by_final_exact_sync'] > 0
  assert res['trained_params_exact_permutation'] is False
  assert res['trained_params_within_sync_bound'] is None  # no sync at the end
  assert res['exact_permutation_library'] is True  # the export, as it must
  prov = res['provenance']
  assert prov['machine']['backend'] == jax.default_backend()
  assert prov['versions']['jax'] == jax.__version__
  if prov['git'] is not None:  # None outside a git checkout
    assert len(prov['git']['commit']) == 40
    assert isinstance(prov['git']['dirty'], bool)


def test_adam_baseline_is_the_same_pipeline(laperm_run):
  adam_run = training.run(tiny(max_steps=23, eval_every=10,
                               optimizer='adam'), DIGITS, progress=False)
  adam = adam_run.results
  # The same programs, each compiled once; LaPerm's evaluation scores the
  # exact pool values, and it evaluates raw weights only at its last step,
  # which is not a sync.
  lap = laperm_run.results
  assert adam['compiled_programs'] == ['chunk 10', 'chunk 3', 'evaluate',
                                       'init']
  assert lap['compiled_programs'] == ['chunk 10', 'chunk 3', 'evaluate',
                                      'evaluate_exact', 'init']
  for res in (lap, adam):
    assert 0 < res['compile_time_s'] < res['wall_time_s']
    assert 0 < res['train_time_s'] < res['wall_time_s']
    assert res['steps_per_second'] == pytest.approx(23 / res['train_time_s'])
  assert (lap['n_syncs'], adam['n_syncs']) == (4, 0)
  assert [h['step'] for h in adam['history']] == [10, 20, 23]
  assert not any(h['after_sync'] for h in adam['history'])
  assert adam['exact_permutation'] is False
  # Same init, same data order: identical theta_0.
  for a, b in zip(jax.tree.leaves(laperm_run.params0),
                  jax.tree.leaves(adam_run.params0), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.fixture(scope='module')
def stopped_sparse_run():
  """Sparse LaPerm on F2 stopped by a time limit of 0 s: the run stops after
  its first evaluation point, which for LaPerm is right after a sync (step
  10), so the final model is still exact. The sparse set-up and the time
  limit are each read by their own test."""
  return training.run(tiny(model='f2', init='sparse', density=0.3,
                           max_steps=20, eval_every=10, time_limit_s=0.0),
                      DIGITS, progress=False)


def test_sparse_init_keeps_the_zero_count(stopped_sparse_run):
  run = stopped_sparse_run
  res = run.results
  kernels = [(p, q) for p, q, f in zip(jax.tree.leaves(run.params0),
                                       jax.tree.leaves(run.params_final),
                                       jax.tree.leaves(run.mask)) if f]
  first, rest = kernels[0], kernels[1:]
  assert np.mean(first[0] == 0) < 0.25  # the first layer keeps >= 80%.
  assert all(abs(np.mean(p == 0) - 0.7) < 0.1 for p, _ in rest)
  for p, q in kernels:
    np.testing.assert_array_equal((p == 0).sum(0), (q == 0).sum(0))
  # Ends on a sync step: the trained weights are the pool up to rounding.
  assert_trained_params_are_a_synced_theta0(run)
  assert res['max_abs_change_by_final_exact_sync'] < 1e-6
  assert res['trained_params_within_sync_bound'] is True


def test_shared_init_values_and_sync_tracking():
  run = training.run(tiny(model='f2', init='shared', density=[0.5, 0.2, 0.4],
                          shared_value=0.05, max_steps=15, track_syncs=True),
                     DIGITS, progress=False)
  for p, f in zip(jax.tree.leaves(run.params_final),
                  jax.tree.leaves(run.mask)):
    if f:
      assert set(np.unique(p).tolist()) <= {0.0, np.float32(0.05)}
  assert_trained_params_are_a_synced_theta0(run)
  records = run.sync_records
  assert [r['step'] for r in records] == [5, 10, 15]
  for r in records:
    assert 0 <= r['changed_fraction'] <= 1
    assert r['created'] == r['removed']  # the zero count is invariant.


def test_k_in_epochs_and_schedules():
  pipe = training.Pipeline(tiny(k='2ep'), DIGITS)
  assert pipe.k == 2 * pipe.steps_per_epoch
  cfg = tiny(lr=1.0, lr_schedule='step:0.5:2')
  schedule = training.make_schedule(cfg, steps_per_epoch=10)
  assert [float(schedule(s)) for s in (0, 19, 20, 45)] == [1, 1, 0.5, 0.25]
  resnet = training.make_schedule(tiny(lr_schedule='resnet'), 1)
  assert np.isclose(float(resnet(81)), 1e-4)
  with pytest.raises(ValueError):
    training.make_schedule(tiny(lr_schedule='cosine'), 1)


@pytest.mark.slow
@pytest.mark.parametrize('preset', ['paper_conv2_cifar10',
                                    'paper_resnet50_cifar10_pruned50',
                                    'paper_conv7_mnist', 'paper_f2_mnist'])
def test_paper_presets_take_a_few_steps_on_fake_data(preset, tmp_path):
  """BN, weight decay scopes, augmentation and sparse init, on random data."""
  from experiments import presets  # pylint: disable=import-outside-toplevel
  cfg = dict(presets.PRESETS[preset])
  shape = (32, 32, 3) if cfg['dataset'] == 'cifar10' else (28, 28, 1)
  rng = np.random.default_rng(0)
  fake = data.Dataset(cfg['dataset'], rng.integers(0, 256, (40,) + shape,
                                                    dtype=np.uint8),
                      rng.integers(0, 10, 40).astype(np.int32),
                      rng.integers(0, 256, (10,) + shape, dtype=np.uint8),
                      rng.integers(0, 10, 10).astype(np.int32), 10, 255.0,
                      'fake')
  if isinstance(cfg.get('density'), list) and len(cfg['density']) == 1:
    cfg['density'] = cfg['density'][0]
  cfg.update(batch_size=8, k='2', max_steps=4)  # ends on a sync
  run = training.run(training.RunConfig(**cfg), fake, progress=False)
  assert_trained_params_are_a_synced_theta0(run)
  assert np.isfinite(run.results['history'][-1]['test_loss'])


def test_time_limit_stops_at_an_evaluation_and_says_where(stopped_sparse_run):
  run = stopped_sparse_run
  res = run.results
  assert [h['step'] for h in res['history']] == [10]
  assert res['stopped_early']['at_step'] == 10
  assert res['final_test_accuracy'] == res['history'][-1]['test_accuracy']
  assert_trained_params_are_a_synced_theta0(run)


def test_a_registry_entry_is_a_new_optimizer(monkeypatch):
  from experiments import optimizers  # pylint: disable=import-outside-toplevel
  built = []
  def plain_sgd(setup):
    built.append(setup.sync_period)
    inner = optax.sgd(setup.learning_rate)
    return optimizers.BuiltOptimizer(inner, inner)
  monkeypatch.setitem(optimizers.OPTIMIZERS, 'plain_sgd',
                      optimizers.OptimizerEntry(plain_sgd, reconnects=False))
  run = training.run(tiny(model='f2', optimizer='plain_sgd', max_steps=3,
                          eval_every=3, k='3'), DIGITS, progress=False)
  res = run.results
  assert built == [3]  # the entry's builder made the run's optimizer
  assert res['config']['optimizer'] == 'plain_sgd'
  assert res['n_syncs'] == 0 and res['exact_permutation_library'] is None
  assert not res['history'][-1]['after_sync']



def loop_body_copies(hlo: str, shapes) -> list[str]:
  """The copy instructions of ``shapes`` in the loop bodies of a compiled
  program (each runs once per loop iteration)."""
  bodies = set(re.findall(r'body=%?([\w.\-]+)', hlo))
  wanted = {','.join(map(str, s)) for s in shapes}
  found, computation = [], None
  for line in hlo.splitlines():
    header = re.match(r'(?:ENTRY )?%?([\w.\-]+) .*\{$', line)
    if header:
      computation = header.group(1)
    elif (computation in bodies and
          (m := re.search(r'= \w+\[([\d,]*)\]\S* copy\(', line)) and
          m.group(1) in wanted):
      found.append(line.strip()[:100])
  return found


def test_the_training_chunk_copies_no_kernel_per_step_and_is_donated(
    laperm_run_and_programs):
  # A kernel-sized copy in the scan's loop body runs on every step; an
  # undonated carry is copied in on every call. The chunks the run compiled:
  run, programs = laperm_run_and_programs
  kernels = {np.shape(p) for p in jax.tree.leaves(run.params0)
             if np.ndim(p) > 1}
  for key in (('chunk', 10), ('chunk', 3)):
    hlo = programs[key].as_text()
    assert re.search(r'body=', hlo), key  # the steps before the last: a loop
    assert not loop_body_copies(hlo, kernels), key
    assert 'input_output_alias' in hlo.splitlines()[0], key  # donated carry
