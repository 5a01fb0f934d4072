"""Orbax checkpoints of a training run: ``--checkpoint-every N`` and ``--resume``.

A checkpoint (``DIR/checkpoints/<step>``) holds, as one Orbax composite:

* ``state``: the carry ``(params, batch_stats, opt_state)``. For LaPerm
  ``opt_state`` is a ``laperm_jax.LaPermState``: its pool (the sorted
  theta_0) is restored from the checkpoint, never rebuilt from the weights
  (with ``--track-syncs`` it also holds the exact weights of the previous
  sync, which a resumed run's next sync record counts moved weights against);
* ``meta`` (JSON): the step, the history and sync records so far, the losses
  of the current evaluation interval, the initial accuracy, the train time and
  the run's config.

The state is restored against ``jax.eval_shape(tx.init, params)`` (so the
NamedTuples come back, not dicts) with each leaf's sharding filled in, then
checked with ``laperm_jax.check_state``. Dropout keys are folded from the
step number and the batch order comes from ``(seed, epoch)``, so a resumed run
is bit-identical to the uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from experiments.steps import TrainCarry
import laperm_jax


class ResumeError(ValueError):
  """The checkpoint cannot continue this run (one-line message)."""


def spans(start: int, stop: int, every: int | None):
  """[start, stop) split at the multiples of ``every`` (checkpoint steps)."""
  out, lo = [], start
  while lo < stop:
    hi = stop if not every else min(stop, (lo // every + 1) * every)
    out.append((lo, hi))
    lo = hi
  return out


def _jsonable_config(cfg) -> dict:
  return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


class Checkpoints:
  """The checkpoints of one run in ``directory`` (``OUT/checkpoints``)."""

  def __init__(self, directory: str, cfg, every: int | None,
               resume: bool = False, keep: int = 2):
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    self._ocp = ocp
    if every is not None and every < 1:
      raise ResumeError(f'--checkpoint-every must be >= 1, got {every}')
    self.directory = os.path.abspath(directory)
    self.config = _jsonable_config(cfg)
    self.every = every
    self.total_steps = None  # set by the run: the last step is always saved
    exists = os.path.isdir(self.directory)
    if not resume and exists and os.listdir(self.directory):
      raise ResumeError(
          f'{self.directory} already holds checkpoints: pass --resume to '
          'continue that run, or use another --out')
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=False, create=True))
    self.latest = self.manager.latest_step() if resume else None
    self.meta = None
    if self.latest is not None:
      self.meta = self.manager.restore(self.latest, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))['meta']
      self._check_config(self.meta['config'])
      if self.every is None:
        self.every = self.meta.get('checkpoint_every')

  def _check_config(self, saved: dict) -> None:
    diff = [f'{key}: {saved.get(key)!r} -> {value!r}'  # every field counts
            for key, value in self.config.items() if saved.get(key) != value]
    diff += [f'{key}: {saved[key]!r} -> (absent)' for key in saved
             if key not in self.config]
    if diff:
      raise ResumeError(
          f'cannot --resume from {self.directory} (step {self.latest}): the '
          f'checkpoint was written with another config ({"; ".join(diff)})')

  def due(self, step: int) -> bool:
    return bool(self.every and step % self.every == 0) or (
        step == self.total_steps)

  def save(self, step: int, tree: Any, loop: dict) -> None:
    """Saves ``tree`` (arrays) and ``loop`` (JSON) as checkpoint ``step``."""
    ocp = self._ocp
    meta = dict(loop, step=step, config=self.config,
                checkpoint_every=self.every)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
                      force=True)
    self.manager.wait_until_finished()

  def restore(self, tx, carry_like: TrainCarry,
              sharding_of: Callable) -> TrainCarry:
    """The latest checkpoint's carry, restored against abstract targets.

    ``carry_like`` is the carry of a fresh start: only its shapes and the
    shardings (``sharding_of(leaf)``) are used; ``opt_state`` is restored
    against ``jax.eval_shape(tx.init, params)`` and checked with
    ``laperm_jax.check_state``.
    """
    ocp = self._ocp
    params, batch_stats, _ = carry_like
    abstract = lambda tree: jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=sharding_of(x)),
        jax.eval_shape(lambda: tree))
    abstract_params = abstract(params)
    abstract_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=sharding_of(x)),
        jax.eval_shape(tx.init, abstract_params))
    target = dict(carry=(abstract_params, abstract(batch_stats),
                         abstract_state))
    if not jax.tree.leaves(batch_stats):
      target['carry'] = (abstract_params, batch_stats, abstract_state)
    restored = self.manager.restore(self.latest, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))['state']
    carry = TrainCarry(*restored['carry'])
    if isinstance(abstract_state, laperm_jax.LaPermState):
      laperm_jax.check_state(tx, carry.opt_state, carry.params)
    return carry

  def loop_state(self) -> dict:
    """The loop variables of the latest checkpoint (``meta``)."""
    meta = dict(self.meta)
    meta['pending_losses'] = (
        [np.asarray(meta['pending_losses'], np.float32)]
        if meta.get('pending_losses') else [])
    return meta

  def close(self) -> None:
    self.manager.close()


def loop_meta(history, sync_records, train_time, initial_accuracy,
              pending_losses=()) -> dict:
  """The JSON part of a checkpoint (float32 losses round-trip exactly)."""
  pending = ([float(v) for v in np.concatenate(
      [np.asarray(a).reshape(-1) for a in pending_losses])]
             if len(pending_losses) else [])
  return dict(history=history, sync_records=sync_records,
              train_time=train_time, initial_accuracy=initial_accuracy,
              pending_losses=pending)
