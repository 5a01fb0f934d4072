"""The training loop: chunks of steps between evaluation points, and resume.

Where evaluations happen and what they evaluate is ``experiments.protocol``;
the numerics are the programs of ``experiments.steps``. The loop times the
training programs apart from their compilation, keeps the history, and saves
and restores checkpoints.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
import optax

from experiments import checkpointing
from experiments import protocol
from experiments import sync_moves
from experiments.pipeline import Pipeline
from experiments.steps import Steps
from experiments.steps import TrainCarry
import laperm_jax


class Loop:
  """One run's loop state: carry, step, history, sync records, times.

  Attributes:
    carry: the :class:`~experiments.steps.TrainCarry`.
    step: the number of steps trained.
    history: one dict per evaluation (``experiments.protocol``).
    sync_records: with ``--track-syncs``, one dict per sync.
    train_time_s: seconds spent running the training programs (no
      compilation, no evaluation).
    exact_params: LaPerm's params on exact pool values at the last
      evaluation after a sync (None before one, and for the baseline).
    last_sync_exact: with ``--track-syncs``, the exact params of the last
      sync (theta_0 before the first): what the next sync record counts
      moved weights against.
    params_before_last_step: the params just before the last step trained.
    last_step_synced: whether the last step trained was a sync.
  """

  def __init__(self, pipe: Pipeline, steps: Steps, tx: Any,
               carry: TrainCarry, mask: Any, checkpoints: Any = None,
               mesh: Any = None):
    self.cfg, self.pipe, self.steps = pipe.cfg, pipe, steps
    self.mask = mask
    self.reconnects = pipe.reconnects
    self.carry = carry
    self.step, self.history, self.sync_records = 0, [], []
    self.train_time_s, self.pending = 0.0, []
    self.stopped_early: dict | None = None
    self.exact_params: Any = None
    self.last_sync_exact: Any = None
    self.params_before_last_step: Any = None
    self.last_step_synced = False
    self.checkpoints = checkpoints
    self.initial_accuracy = self._evaluate_synced()[0]  # theta_0
    self.last_sync_exact = self.exact_params
    self.every = None
    if checkpoints is not None:
      checkpoints.total_steps, self.every = pipe.total_steps, checkpoints.every
      if checkpoints.latest is not None:
        self._resume(tx, mesh)

  def _resume(self, tx: Any, mesh: Any) -> None:
    self.carry = self.checkpoints.restore(
        tx, self.carry, mesh.sharding_of if mesh is not None else
        lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    meta = self.checkpoints.loop_state()
    self.step, self.history = meta['step'], meta['history']
    self.sync_records = meta['sync_records']
    self.train_time_s = meta['train_time']
    self.initial_accuracy = meta['initial_accuracy']
    self.pending = meta['pending_losses']
    if self.reconnects:
      self.exact_params = laperm_jax.exact_params(self.carry.opt_state,
                                                  self.carry.params)
      self.last_sync_exact = last_sync_weights(self.carry.opt_state,
                                               self.exact_params)

  def _evaluate_synced(self) -> tuple[float, float]:
    """Accuracy and loss of the exact pool values (raw params for Adam)."""
    if not self.reconnects:
      return self.steps.evaluate(self.carry.params, self.carry.batch_stats)
    acc, loss, self.exact_params = self.steps.evaluate_exact(self.carry)
    return acc, loss

  def save(self, at: int, losses: Any = ()) -> None:
    self.checkpoints.save(
        at, dict(carry=tuple(self.carry)),
        checkpointing.loop_meta(self.history, self.sync_records,
                                self.train_time_s, self.initial_accuracy,
                                losses))

  def train(self, progress: bool) -> None:
    """Trains to the last evaluation point (or the time limit)."""
    cfg, pipe = self.cfg, self.pipe
    points = protocol.evaluation_points(
        pipe.total_steps, pipe.k, pipe.eval_interval,
        every_sync=cfg.track_syncs and self.reconnects)
    bar = None
    if progress:
      from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
      bar = tqdm(total=pipe.total_steps, desc=f'{cfg.optimizer} {cfg.model}',
                 unit='step', leave=True)
    for point in points:
      if point <= self.step:  # done before the checkpoint resumed from
        continue
      if (cfg.time_limit_s is not None and self.history and
          self.train_time_s >= cfg.time_limit_s):
        self.stopped_early = dict(
            at_step=self.step, epochs_done=self.step / pipe.steps_per_epoch,
            reason=f'time limit of {cfg.time_limit_s} s')
        break
      self._advance_to(point)
      if bar is not None:
        bar.update(point - bar.n)
        bar.set_postfix(test_acc=f'{self.history[-1]["test_accuracy"]:.4f}')
      if self.checkpoints is not None and self.checkpoints.due(point):
        self.save(point)
    if bar is not None:
      bar.close()

  def _train_to(self, point: int, tracked: bool) -> tuple[list, Any]:
    """Runs the programs up to ``point``; returns the losses and, for a
    tracked sync, the params just before it."""
    losses, self.pending = self.pending, []
    chunk_end = point - 1 if tracked else point
    for lo, hi in checkpointing.spans(self.step, chunk_end, self.every):
      out = self.steps.chunk(self.carry, lo, hi)
      self.carry, self.params_before_last_step = (out.carry,
                                                  out.params_before_last)
      self.last_step_synced = out.synced
      losses.append(out.losses)
      if (self.checkpoints is not None and hi < point and
          self.checkpoints.due(hi)):
        self.save(hi, losses)  # mid-interval (between two syncs for LaPerm)
    pre_sync = None
    if tracked:
      self.params_before_last_step = self.carry.params
      self.carry, ce, pre_sync = self.steps.sync_step(self.carry, point)
      self.last_step_synced = True
      losses.append(ce)
    jax.block_until_ready(self.carry)
    return losses, pre_sync

  def _advance_to(self, point: int) -> None:
    tracked = (self.cfg.track_syncs and
               protocol.is_sync_point(point, self.pipe.k, self.reconnects))
    compile_before = self.steps.compile_time_s
    start = time.perf_counter()
    losses, pre_sync = self._train_to(point, tracked)
    self.train_time_s += (time.perf_counter() - start -
                          (self.steps.compile_time_s - compile_before))
    self.step = point
    train_loss = float(np.concatenate(losses).mean()) if losses else None
    carry = self.carry
    self.history += protocol.evaluate_point(
        point, is_laperm=self.reconnects, is_sync=self.last_step_synced,
        evaluate_raw=lambda: self.steps.evaluate(carry.params,
                                                 carry.batch_stats),
        evaluate_synced=self._evaluate_synced,
        epoch=point / self.pipe.steps_per_epoch, train_loss=train_loss)
    if self.cfg.init == 'sparse' and self.last_step_synced:
      self._record_connections()
    if tracked:
      self._record_sync(point, pre_sync, self.last_sync_exact)
      self.last_sync_exact = self.exact_params

  def _record_connections(self) -> None:
    """The connections the sync just evaluated created and removed, in its
    history entry (sparse LaPerm, from ``laperm_jax.SyncChanges``)."""
    changes = getattr(self.carry.opt_state, 'changes', None)
    if isinstance(changes, laperm_jax.SyncChanges):
      self.history[-1].update(sync_created=int(changes.created),
                              sync_removed=int(changes.removed))

  def _record_sync(self, point: int, pre_sync: Any,
                   previous_exact: Any) -> None:
    """Accuracy just before and after the sync, and what it changed
    (``laperm_jax.SyncChanges``, kept by ``laperm(track_changes=True)``;
    per leaf, the weights moved since ``previous_exact``, the exact params
    of the previous sync or theta_0)."""
    acc_before, _ = self.steps.evaluate(pre_sync, self.carry.batch_stats)
    changes = self.carry.opt_state.changes
    mask = jax.tree.leaves(self.mask)
    nonzero = sum(int(np.count_nonzero(np.asarray(p))) for p, f in zip(
        jax.tree.leaves(self.exact_params), mask) if f)
    self.sync_records.append(dict(
        step=point, acc_before=acc_before,
        acc_after=self.history[-1]['test_accuracy'],
        changed_fraction=float(changes.changed_fraction),
        created=int(changes.created), removed=int(changes.removed),
        nonzero=nonzero,
        moved_by_leaf=sync_moves.moved_by_leaf(previous_exact,
                                               self.exact_params, self.mask)))


def last_sync_weights(opt_state: Any, exact: Any) -> Any:
  """The exact params of the last sync, from a restored LaPerm state.

  ``laperm(track_changes=True)`` keeps them in ``SyncChanges.previous``
  (theta_0 before the first sync; ``optax.MaskedNode`` at leaves without
  pool), so a run resumed between two syncs counts the next sync's moved
  weights against them, as the uninterrupted run does. Leaves without pool,
  and every leaf of a state without ``SyncChanges``, come from ``exact``.

  >>> import jax.numpy as jnp, optax, laperm_jax
  >>> params = {'w': jnp.array([[1., 2.], [3., 4.]]), 'b': jnp.zeros(2)}
  >>> tx = laperm_jax.laperm(optax.sgd(1.0), 2, track_changes=True)
  >>> last_sync_weights(tx.init(params), {'w': jnp.zeros((2, 2)),
  ...                                     'b': jnp.ones(2)})['w']
  Array([[1., 2.],
         [3., 4.]], dtype=float32)
  """
  changes = getattr(opt_state, 'changes', None)
  if not isinstance(changes, laperm_jax.SyncChanges):
    return exact
  previous = jax.tree.leaves(changes.previous,
                             is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  leaves, treedef = jax.tree.flatten(exact)
  return jax.tree.unflatten(treedef, [
      leaf if isinstance(kept, optax.MaskedNode) else kept
      for leaf, kept in zip(leaves, previous, strict=True)])
