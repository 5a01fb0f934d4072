"""The content of a run's results.json, assembled from a finished loop.

Field by field in experiments/README.md ("Outputs"). The checks of the final
weights are NumPy computations on the host, so that assembling the results
compiles no program.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
import optax

from experiments import models as models_lib
from experiments import protocol
from experiments import sparse_baselines
from experiments import vit
from experiments.loop import Loop
from experiments.pipeline import Pipeline
import laperm_jax


def vector_rows(leaf: np.ndarray,
                axes: tuple[int, ...] | None = None) -> np.ndarray:
  """(vector length, number of vectors): ``axes`` form one vector.

  ``axes`` defaults to every axis but the last; a 1-D leaf is one vector.

  >>> vector_rows(np.zeros((3, 4, 5))).shape, vector_rows(np.zeros(7)).shape
  ((12, 5), (7, 1))
  >>> vector_rows(np.zeros((3, 4, 5)), (1,)).shape
  (4, 15)
  """
  if axes is None:
    axes = tuple(range(max(1, leaf.ndim - 1)))
  rest = [a for a in range(leaf.ndim) if a not in axes]
  moved = np.transpose(leaf, list(axes) + rest)
  return moved.reshape(int(np.prod([leaf.shape[a] for a in axes])), -1)


def exact_permutation_check(params: Any, params0: Any, mask: Any,
                            layout: str = 'default') -> bool:
  """Whether every masked leaf, per vector of ``layout``, sorts to theta_0.

  ``layout``: a name of ``experiments.vit.LAYOUTS`` (the run's
  ``--layout``); the check is NumPy on the host.

  >>> exact_permutation_check({'w': np.array([[2.], [1.]])},
  ...                         {'w': np.array([[1.], [2.]])}, {'w': True})
  True
  """
  flags = jax.tree.leaves(mask)
  axes_of = jax.tree.leaves(vit.vector_axes(layout, params0),
                            is_leaf=lambda x: isinstance(x, tuple))
  ok = True
  for flag, leaf, leaf0, axes in zip(flags, jax.tree.leaves(params),
                                     jax.tree.leaves(params0), axes_of,
                                     strict=True):
    if flag:
      a = np.sort(vector_rows(np.asarray(leaf), axes), axis=0)
      b = np.sort(vector_rows(np.asarray(leaf0), axes), axis=0)
      ok &= bool(np.array_equal(a, b))
  return ok if any(flags) else False


def masked_leaves(tree: Any, mask: Any) -> list[np.ndarray]:
  """The reconnected leaves of ``tree`` as host arrays."""
  return [np.asarray(x) for x, f in zip(jax.tree.leaves(tree),
                                        jax.tree.leaves(mask)) if f]


def _by_vector(leaf: Any, vector_axes: tuple[int, ...]) -> np.ndarray:
  """(vector length, number of vectors), the vector axes first."""
  moved = np.moveaxis(np.asarray(leaf), vector_axes, range(len(vector_axes)))
  return moved.reshape(int(np.prod(moved.shape[:len(vector_axes)])), -1)


def matches_pool(params: Any, pool: Any) -> bool:
  """Whether every reconnected leaf, sorted per vector, is its pool (NumPy).

  ``pool``: the ``LaPermState.pool`` (``laperm_jax.PoolLeaf`` per
  reconnected leaf, ``optax.MaskedNode`` elsewhere).

  >>> import laperm_jax
  >>> params = {'b': np.zeros(1), 'w': np.array([[2.], [1.]])}
  >>> pool = laperm_jax.sorted_pool(params, mask={'b': False, 'w': True})
  >>> matches_pool({'b': np.ones(1), 'w': np.array([[1.], [2.]])}, pool)
  True
  >>> matches_pool({'b': np.ones(1), 'w': np.array([[1.], [3.]])}, pool)
  False
  """
  is_pool = lambda x: isinstance(x, laperm_jax.PoolLeaf)
  entries = jax.tree.leaves(
      pool, is_leaf=lambda x: is_pool(x) or isinstance(x, optax.MaskedNode))
  ok = True
  for leaf, entry in zip(jax.tree.leaves(params), entries, strict=True):
    if is_pool(entry):
      axes = entry.vector_axes
      ok &= bool(np.array_equal(np.sort(_by_vector(leaf, axes), axis=0),
                                _by_vector(entry.values, axes)))
  return ok


def final_weight_checks(loop: Loop, mask: Any) -> dict:
  """The LaPerm fields about the final weights (None for the baseline)."""
  if not loop.reconnects:
    return dict(exact_permutation_library=None,
                max_abs_change_by_final_exact_sync=None,
                trained_params_exact_permutation=None,
                trained_params_within_sync_bound=None)
  trained, final = loop.carry.params, loop.exact_params
  pool = loop.carry.opt_state.pool
  t, q = masked_leaves(trained, mask), masked_leaves(final, mask)
  within = None
  if loop.last_step_synced:
    within = protocol.within_sync_bound(
        t, q, masked_leaves(loop.params_before_last_step, mask))
  return dict(
      exact_permutation_library=matches_pool(final, pool),
      max_abs_change_by_final_exact_sync=max(
          float(np.max(np.abs(a - b))) for a, b in zip(t, q)),
      trained_params_exact_permutation=matches_pool(trained, pool),
      trained_params_within_sync_bound=within)


def timings(loop: Loop, wall_time_s: float) -> dict:
  """Where the run's time went: compilation apart from training."""
  pipe = loop.pipe
  steps_trained = loop.step
  return dict(
      wall_time_s=wall_time_s,
      compile_time_s=loop.steps.compile_time_s,
      train_time_s=loop.train_time_s,
      steps_per_second=(steps_trained / loop.train_time_s
                        if loop.train_time_s > 0 else None),
      n_syncs=steps_trained // pipe.k if loop.reconnects else 0,
      compiled_programs=sorted(
          ' '.join(map(str, key)) if isinstance(key, tuple) else key
          for key in loop.steps.programs.compiled))


def _counts(params0: Any, mask: Any) -> dict:
  reconnected = masked_leaves(params0, mask)
  n_reconnected = int(sum(p.size for p in reconnected))
  n_zero0 = int(sum(np.sum(p == 0) for p in reconnected))
  return dict(n_params=models_lib.count_params(params0),
              n_reconnected=n_reconnected,
              initial_zero_fraction_reconnected=(
                  n_zero0 / n_reconnected if n_reconnected else 0.0))


def _describe(pipe: Pipeline, params0: Any, mask: Any) -> dict:
  flags = jax.tree.leaves(mask)
  ds = pipe.dataset
  return dict(
      config=dict(dataclasses.asdict(pipe.cfg), k_steps=pipe.k,
                  steps_per_epoch=pipe.steps_per_epoch,
                  total_steps=pipe.total_steps,
                  eval_interval=pipe.eval_interval,
                  permute_biases_effective=bool(any(
                      f for p, f in zip(jax.tree.leaves(params0), flags)
                      if np.ndim(p) == 1))),
      dataset=dict(name=ds.name, source=ds.source,
                   n_train=len(ds.y_train), n_test=pipe.n_test,
                   image_shape=list(ds.image_shape)))


def assemble(loop: Loop, params0: Any, final_params: Any, mask: Any,
             mesh: Any, wall_time_s: float) -> dict:
  """The results.json content of a finished loop."""
  from experiments import provenance  # pylint: disable=import-outside-toplevel
  history, reconnects = loop.history, loop.reconnects
  best = protocol.select_best(history, reconnects)
  checks = final_weight_checks(loop, mask)
  return dict(
      final_test_accuracy=history[-1]['test_accuracy'],
      initial_test_accuracy=loop.initial_accuracy,
      best_test_accuracy=best['test_accuracy'],
      best_step=best['step'],
      best_selection=protocol.best_selection_note(reconnects),
      exact_permutation=exact_permutation_check(final_params, params0, mask,
                                                loop.cfg.layout),
      **checks,
      history=history,
      sync_records=loop.sync_records,
      **_describe(loop.pipe, params0, mask),
      **_counts(params0, mask),
      mesh=mesh.describe() if mesh is not None else None,
      stopped_early=loop.stopped_early,
      **timings(loop, wall_time_s),
      backend=jax.default_backend(),
      versions=dict(jax=jax.__version__, optax=optax.__version__,
                    laperm_jax=getattr(laperm_jax, '__version__', None)),
      provenance=provenance.collect(),
      **sparse_baselines.topology_counts(loop.carry.opt_state),
  )
