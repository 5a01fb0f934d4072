"""The evaluation protocol of a run, apart from the training loop.

Small pure functions, tested on their own (``tests/test_experiments_protocol.py``):

* where a run is evaluated: after syncs only (every ``eval_interval`` steps, a
  multiple of k; every sync with ``track_syncs``) and at the last step;
* how a point is evaluated: at a sync step on ``exact(params)`` (the exact
  reconnect, a true per-vector permutation of theta_0); at a last step that
  is not a sync, the raw weights (``after_sync: false``) and then, for LaPerm,
  one explicit final sync;
* which evaluation is "best": the maximum over the post-sync evaluations for
  LaPerm (all evaluations for Adam), selected on the test set;
* the final LaPerm weights: the exact reconnect of the trained ones, and
  whether the trained weights were within the documented rounding bound of
  that reconnect (one ulp of ``max(|p|, |q|)``, ``p`` the weights before the
  last sync step).
"""

from __future__ import annotations

from typing import Any, Callable

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


def evaluate_point(point: int, params, *, is_laperm: bool, is_sync: bool,
                   evaluate: Callable[[Any], tuple[float, float]],
                   exact: Callable[[Any], Any], **entry) -> list[dict]:
  """History entries for one evaluation point (``entry``: step, epoch ...)."""
  entry = dict(entry, step=point)
  if is_sync:
    acc, loss = evaluate(exact(params))
    return [dict(entry, test_accuracy=acc, test_loss=loss, after_sync=True)]
  acc, loss = evaluate(params)
  out = [dict(entry, test_accuracy=acc, test_loss=loss, after_sync=False)]
  if is_laperm:  # the last step was not a sync step: sync explicitly.
    acc, loss = evaluate(exact(params))
    out.append(dict(entry, train_loss=None, test_accuracy=acc,
                    test_loss=loss, after_sync=True,
                    explicit_final_sync=True))
  return out


def select_best(history: list[dict], is_laperm: bool) -> dict:
  """The best evaluation: post-sync ones only for LaPerm, any for Adam."""
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
