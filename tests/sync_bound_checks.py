"""Whether a finished LaPerm run's trained weights are a synced theta_0.

The evidence that a run trained with LaPerm and ended on a sync: per weight
vector, the trained params (as ``optax.apply_updates`` left them, not the
exact export) lie within the documented rounding bound of a permutation of
theta_0. Checked against the pool the run kept from init, which must itself
be theta_0 sorted within each vector. Sorting is 1-Lipschitz in the max
norm, so if ``|t_i - q_pi(i)| <= b`` for a permutation ``pi`` then
``|sort(t) - sort(q)| <= b`` elementwise; ``b`` is one ulp of
``max(|p|, |q|)`` over the vector, ``p`` the params before the last step.
"""

import jax
import numpy as np

import laperm_jax


def vectors(leaf, vector_axes):
  """(vector length, number of vectors): the vector axes first, flattened."""
  leaf = np.asarray(leaf)
  front = np.moveaxis(leaf, vector_axes, range(len(vector_axes)))
  length = int(np.prod([leaf.shape[a] for a in vector_axes]))
  return front.reshape(length, -1)


def assert_trained_params_are_a_synced_theta0(run):
  """Raises AssertionError unless ``run`` ended on a sync of theta_0."""
  trees = (run.params0, run.params_trained, run.params_before_last_step,
           run.mask)
  is_pool = lambda x: isinstance(x, laperm_jax.PoolLeaf)
  pools = [entry for entry in jax.tree.leaves(run.sorted_theta0,
                                              is_leaf=is_pool)
           if is_pool(entry)]
  checked = 0
  for theta0, trained, before, flag in zip(*map(jax.tree.leaves, trees)):
    if not flag:
      continue
    axes = pools[checked].vector_axes
    pool = vectors(pools[checked].values, axes)
    np.testing.assert_array_equal(pool, np.sort(vectors(theta0, axes), axis=0),
                                  err_msg='the pool is not sorted theta_0')
    t, p = vectors(trained, axes), vectors(before, axes)
    scale = np.maximum(np.abs(p).max(axis=0), np.abs(pool).max(axis=0))
    bound = np.spacing(scale.astype(t.dtype))
    error = np.abs(np.sort(t, axis=0) - pool).max(axis=0)
    assert np.all(error <= bound), (
        f'reconnected leaf {checked}: trained weights are up to '
        f'{error.max():.3g} from a permutation of theta_0 (bound '
        f'{bound.max():.3g}): the run did not end on a sync')
    checked += 1
  assert checked and checked == len(pools), (checked, len(pools))
