"""The evaluation protocol of a run (the one description of it).

* LaPerm syncs after steps k, 2k, ... (1-based). A run is evaluated only
  right after a sync -- every ``eval_interval`` steps, the multiple of k
  nearest to ``--eval-every`` (default one epoch); every sync with
  ``--track-syncs`` -- and at its last step.
* An evaluation after a sync scores ``laperm_jax.exact_params`` (every
  reconnected weight exactly on its pool value, a true per-vector
  permutation of theta_0; the trained params differ from it only by the
  rounding of ``p + (q - p)``). At a last step that is not a sync, the raw
  weights are scored (``after_sync: false``), then, for LaPerm, their exact
  reconnect (``explicit_final_sync``): the final LaPerm accuracy is always
  post-sync.
* The baseline runs the identical pipeline (theta_0, data order, dropout
  keys, schedule, evaluation steps), only without syncs.
* The "best" evaluation is the maximum over the post-sync evaluations for
  LaPerm (all evaluations for the baseline). It is selected on the test set,
  hence optimistic; the final accuracy is the unbiased figure.
* With ``--track-syncs`` each sync is also scored just before it (the params
  after the inner optimizer's update of that step) and records what it
  changed (``laperm_jax.SyncChanges``).
* The trained weights after a final sync lie within the documented rounding
  bound of their exact reconnect: one ulp of ``max(|p|, |q|)``, ``p`` the
  weights before the last step (:func:`within_sync_bound`).

The functions here are small and pure, tested on their own
(``tests/test_experiments_protocol.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def evaluation_points(total_steps: int, k: int, eval_interval: int, *,
                      every_sync: bool) -> list[int]:
  """The steps after which a run is evaluated; the last is ``total_steps``."""
  every = k if every_sync else eval_interval
  points = list(range(every, total_steps + 1, every))
  if not points or points[-1] != total_steps:
    points.append(total_steps)
  return points


def is_sync_point(point: int, k: int, is_laperm: bool) -> bool:
  """LaPerm syncs after steps k, 2k, ... (1-based)."""
  return is_laperm and point % k == 0


def evaluate_point(point: int, *, is_laperm: bool, is_sync: bool,
                   evaluate_raw: Callable[[], tuple[float, float]],
                   evaluate_synced: Callable[[], tuple[float, float]],
                   **entry: Any) -> list[dict]:
  """History entries for one evaluation point (``entry``: step, epoch ...).

  ``evaluate_raw()`` scores the trained params as they are,
  ``evaluate_synced()`` their exact reconnect (LaPerm only); each returns
  (accuracy, mean loss).

  >>> evaluate_point(20, is_laperm=True, is_sync=True,
  ...                evaluate_raw=lambda: (0.5, 1.0),
  ...                evaluate_synced=lambda: (0.75, 0.5))
  [{'step': 20, 'test_accuracy': 0.75, 'test_loss': 0.5, 'after_sync': True}]
  """
  entry = dict(entry, step=point)
  if is_sync:
    acc, loss = evaluate_synced()
    return [dict(entry, test_accuracy=acc, test_loss=loss, after_sync=True)]
  acc, loss = evaluate_raw()
  out = [dict(entry, test_accuracy=acc, test_loss=loss, after_sync=False)]
  if is_laperm:  # the last step was not a sync step: sync explicitly.
    acc, loss = evaluate_synced()
    out.append(dict(entry, train_loss=None, test_accuracy=acc,
                    test_loss=loss, after_sync=True,
                    explicit_final_sync=True))
  return out


def select_best(history: list[dict], is_laperm: bool) -> dict:
  """The best evaluation: post-sync ones only for LaPerm, any for Adam.

  >>> history = [dict(test_accuracy=0.9, after_sync=False),
  ...            dict(test_accuracy=0.8, after_sync=True)]
  >>> select_best(history, is_laperm=True)['test_accuracy']
  0.8
  """
  selectable = [h for h in history if h['after_sync'] or not is_laperm]
  return max(selectable, key=lambda h: h['test_accuracy'])


def best_selection_note(is_laperm: bool) -> str:
  return ('max test accuracy over the evaluations right after a sync '
          '(test-set selection: optimistic; the final accuracy is the '
          'unbiased figure)' if is_laperm else
          'max test accuracy over all evaluations, held at the same steps '
          'as the LaPerm run (test-set selection: optimistic)')


def within_sync_bound(trained, exact, before) -> bool:
  """Whether ``trained`` is within one ulp of max(|before|, |exact|) of
  ``exact``, leaf by leaf (NumPy arrays): the rounding of ``p + (q - p)``."""
  for t, q, p in zip(trained, exact, before):
    t, q, p = (np.asarray(a) for a in (t, q, p))
    bound = np.spacing(np.maximum(np.abs(p), np.abs(q)).astype(q.dtype))
    if not np.all(np.abs(t.astype(np.float64) - q.astype(np.float64)) <=
                  bound.astype(np.float64)):
      return False
  return True
