"""The compiled programs of one run: training chunks, evaluation, sync step.

Every program is compiled ahead of time, once per argument shape, by
:class:`Programs`, which keeps the compile time apart from the time spent
running them (``compile_time_s`` and ``train_time_s`` in results.json). A
LaPerm run compiles the same programs as the baseline: the training chunk
(its sync is inside the optimizer's ``lax.cond``) and the evaluation, which
for LaPerm evaluates ``laperm_jax.exact_params`` (the exact pool values) in
the same program. Two programs are compiled only when asked for: the step
that also returns the params just before a sync (``--track-syncs``), and the
evaluation of raw LaPerm weights (a run that does not end on a sync).
"""

from __future__ import annotations

from collections.abc import Callable
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import augment as augment_lib
from experiments.pipeline import Pipeline
import laperm_jax


class TrainCarry(NamedTuple):
  """What the training loop carries from step to step.

  Attributes:
    params: the trained params.
    batch_stats: batch-norm statistics (``{}`` without BN).
    opt_state: the optimizer state (a ``laperm_jax.LaPermState`` for LaPerm).
  """
  params: Any
  batch_stats: Any
  opt_state: Any


class ChunkOutput(NamedTuple):
  """The result of training steps lo+1 .. hi.

  Attributes:
    carry: the carry after step hi.
    losses: the cross-entropy of each step (host, float32).
    params_before_last: the params just before step hi.
    synced: whether step hi was a sync.
  """
  carry: TrainCarry
  losses: np.ndarray
  params_before_last: Any
  synced: bool


class OutputShardings:
  """Where each program puts its outputs on a mesh (the compiler's choice
  without one).

  A compiled program accepts only arguments laid out as the ones it was
  compiled for. The evaluation receives params from several programs (a
  chunk's carry, the params just before a sync, the exact params), so every
  program returns params, batch statistics and optimizer state in the plan's
  layout (``MeshPlan.shardings``: the output axis on ``model`` where it
  divides, else replicated) and its metrics replicated. Left to the
  compiler, a leaf the plan replicates (a final Dense kernel ``(100, 10)``
  on ``model=4``) can come out split over another axis, and the evaluation
  compiled for one layout then rejects the other
  (``tests/test_experiments_mesh.py`` runs ``--mesh model=4`` with
  ``--track-syncs``, which evaluates the params just before each sync).

  >>> from experiments.mesh import MeshPlan
  >>> params = {'kernel': jnp.zeros((4, 3))}
  >>> outputs = OutputShardings(MeshPlan('data=1'), optax.adam(0.1), params, {})
  >>> _, _, exact = outputs.of_program['evaluate_exact']
  >>> exact['kernel'].spec
  P(None, 'model')
  >>> evaluate = outputs.jit('evaluate', lambda x: (x.sum(), x.max()))
  >>> [float(v) for v in evaluate(jnp.arange(3.0))]
  [3.0, 2.0]
  """

  def __init__(self, mesh: Any, tx: optax.GradientTransformation,
               params: Any, batch_stats: Any) -> None:
    self.of_program: dict[str, Any] = {}
    if mesh is None:
      return
    on_params, metric = mesh.shardings(params), mesh.replicated
    carry = TrainCarry(on_params, mesh.shardings(batch_stats),
                       mesh.shardings(jax.eval_shape(tx.init, params)))
    self.of_program = dict(
        chunk=(carry, metric, on_params, metric),
        single_step=(carry, metric, metric),
        sync_step=(carry, metric, on_params),
        evaluate=(metric, metric),
        evaluate_exact=(metric, metric, on_params))

  def jit(self, name: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
    """``jax.jit(fn, **kwargs)``, its outputs pinned on a mesh."""
    if name in self.of_program:
      kwargs['out_shardings'] = self.of_program[name]
    return jax.jit(fn, **kwargs)


class Programs:
  """Compiles each program once per key and times compilation apart.

  ``call(key, fn, *args)`` lowers and compiles the jitted ``fn`` for ``args``
  the first time ``key`` is seen (adding to ``compile_time_s``), then runs
  the compiled executable, which never retraces.

  >>> programs = Programs()
  >>> double = jax.jit(lambda x: 2 * x)
  >>> float(programs.call('double', double, jnp.float32(3)))
  6.0
  >>> sorted(programs.compiled)
  ['double']
  """

  def __init__(self) -> None:
    self.compile_time_s = 0.0
    self.compiled: dict[Any, Any] = {}

  def call(self, key: Any, fn: Callable[..., Any], *args: Any) -> Any:
    program = self.compiled.get(key)
    if program is None:
      start = time.perf_counter()
      program = fn.lower(*args).compile()
      self.compile_time_s += time.perf_counter() - start
      self.compiled[key] = program
    return program(*args)


def _loss_function(pipe: Pipeline, decay_mask: Any, has_bn: bool
                   ) -> Callable[..., Any]:
  """The training loss: cross-entropy (times ``--logit-scale``) plus L2."""
  cfg, model = pipe.cfg, pipe.model
  decayed = [bool(f) for f in jax.tree.leaves(decay_mask)]

  def loss_fn(params, batch_stats, x, y, key):
    variables = {'params': params}
    if has_bn:
      variables['batch_stats'] = batch_stats
    logits, new_vars = model.apply(
        variables, x, train=True, rngs={'dropout': key},
        mutable=['batch_stats'] if has_bn else [])
    if cfg.logit_scale != 1.0:  # a loss temperature; accuracy unchanged
      logits = logits * cfg.logit_scale
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss = ce
    if cfg.weight_decay:
      l2 = sum(jnp.sum(p ** 2) for p, f in zip(jax.tree.leaves(params),
                                               decayed) if f)
      loss = loss + cfg.weight_decay * l2
    new_bs = new_vars['batch_stats'] if has_bn else batch_stats
    return loss, (ce, new_bs)
  return loss_fn


def _evaluation(pipe: Pipeline, has_bn: bool) -> Callable[..., Any]:
  """Summed correct predictions and cross-entropy over the padded test set."""
  model = pipe.model

  def evaluate(params, batch_stats, xs, ys, valid):
    variables = {'params': params}
    if has_bn:
      variables['batch_stats'] = batch_stats
    def batch(inputs):
      x, y, v = inputs
      logits = model.apply(variables, pipe.preprocess(x), train=False)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      return (jnp.sum(v * (jnp.argmax(logits, -1) == y)), jnp.sum(v * ce))
    correct, loss = jax.lax.map(batch, (xs, ys, valid))
    return jnp.sum(correct), jnp.sum(loss)
  return evaluate


def has_conv(params: Any) -> bool:
  """Whether any leaf is a 4-D (convolution) kernel."""
  return any(np.ndim(p) == 4 for p in jax.tree.leaves(params))


class Steps:
  """The programs of one run and how the loop calls them.

  Built once per run from the pipeline, the optimizer and theta_0, so that
  the loop holds no numerics of its own.
  """

  def __init__(self, pipe: Pipeline, tx: optax.GradientTransformation,
               inner: optax.GradientTransformation, params: Any,
               batch_stats: Any, mesh: Any = None):
    self.pipe, self.programs = pipe, Programs()
    # Host inputs as global arrays on the mesh (each process its own rows).
    self._rows = mesh.batch_indices if mesh is not None else jnp.asarray
    self._replicated = mesh.steps if mesh is not None else lambda x: x
    self.reconnects = pipe.reconnects
    has_bn = bool(jax.tree.leaves(batch_stats))
    loss_fn = _loss_function(pipe, pipe.decay_mask(params), has_bn)
    base_key = jax.random.fold_in(jax.random.key(pipe.cfg.seed), 1)
    synced = (laperm_jax.has_synced if self.reconnects else
              lambda _: jnp.zeros([], bool))

    def one_step(carry, inputs, x_train, y_train):
      params, batch_stats, opt_state = carry
      idx, step = inputs
      k_aug, k_drop = jax.random.split(jax.random.fold_in(base_key, step))
      x = pipe.preprocess(x_train[idx])
      if mesh is not None:
        x = mesh.shard_batch(x)
      x = augment_lib.random_affine(k_aug, x, pipe.augmentation)
      (_, (ce, batch_stats)), grads = jax.value_and_grad(
          loss_fn, has_aux=True)(params, batch_stats, x, y_train[idx], k_drop)
      updates, opt_state = tx.update(grads, opt_state, params)
      new_carry = TrainCarry(optax.apply_updates(params, updates),
                             batch_stats, opt_state)
      if mesh is not None:
        new_carry = mesh.constrain(new_carry)
      return new_carry, (ce, grads)

    def chunk(carry, idx, steps, x_train, y_train):
      """Steps idx.shape[0]: all but the last in a scan, then the last.

      The sync bound needs the params just before the last step. Carrying
      them through the scan would copy the params on every step (a while
      loop's carry is one buffer per element, so the previous params must be
      copied out of the way of the new ones); the params the scan ends with
      are them, at no cost.
      """
      def body(c, inp):
        new_carry, (ce, _) = one_step(c, inp, x_train, y_train)
        return new_carry, ce
      before, ce = jax.lax.scan(body, carry, (idx[:-1], steps[:-1]))
      last, (last_ce, _) = one_step(before, (idx[-1], steps[-1]), x_train,
                                    y_train)
      return (last, jnp.concatenate([ce, last_ce[None]]), before.params,
              synced(last.opt_state))

    def single_step(carry, idx, step, x_train, y_train):
      new_carry, (ce, _) = one_step(carry, (idx, step), x_train, y_train)
      return new_carry, ce, synced(new_carry.opt_state)

    def sync_step(carry, idx, step, x_train, y_train):
      """One step that also returns the params just before its sync."""
      new_carry, (ce, grads) = one_step(carry, (idx, step), x_train, y_train)
      inner_updates, _ = inner.update(grads, carry.opt_state.inner_state,
                                      carry.params)
      return new_carry, ce, optax.apply_updates(carry.params, inner_updates)

    evaluate = _evaluation(pipe, has_bn)

    def evaluate_exact(params, opt_state, batch_stats, xs, ys, valid):
      exact = laperm_jax.exact_params(opt_state, params)
      return evaluate(exact, batch_stats, xs, ys, valid) + (exact,)

    self.use_scan = pipe.cfg.scan == 'on' or (pipe.cfg.scan == 'auto' and (
        jax.default_backend() != 'cpu' or not has_conv(params)))
    # The chunk's carry is donated: the loop replaces it by the chunk's
    # output, and XLA updates params and optimizer state in place instead of
    # copying them in on every call.
    outputs = OutputShardings(mesh, tx, params, batch_stats)
    self._chunk = outputs.jit('chunk', chunk, donate_argnums=0)
    self._single_step = outputs.jit('single_step', single_step)
    self._sync_step = outputs.jit('sync_step', sync_step)
    self._evaluate = outputs.jit('evaluate', evaluate)
    self._evaluate_exact = outputs.jit('evaluate_exact', evaluate_exact)

  @property
  def compile_time_s(self) -> float:
    return self.programs.compile_time_s

  def _data(self) -> tuple[jax.Array, jax.Array]:
    return self.pipe.x_train, self.pipe.y_train

  def chunk(self, carry: TrainCarry, lo: int, hi: int) -> ChunkOutput:
    """Trains steps lo+1 .. hi."""
    idx = self._rows(self.pipe.batch_indices(lo, hi))
    steps = self._replicated(jnp.arange(lo + 1, hi + 1, dtype=jnp.int32))
    if self.use_scan:
      carry, ce, before, synced = self.programs.call(
          ('chunk', hi - lo), self._chunk, carry, idx, steps, *self._data())
      return ChunkOutput(carry, np.asarray(ce), before, bool(synced))
    losses = []
    for i in range(idx.shape[0]):
      before = carry.params
      carry, ce, synced = self.programs.call(
          'step', self._single_step, carry, idx[i], steps[i], *self._data())
      losses.append(ce)
    return ChunkOutput(carry, np.asarray(jnp.stack(losses)), before,
                       bool(synced))

  def sync_step(self, carry: TrainCarry, step: int
                ) -> tuple[TrainCarry, np.ndarray, Any]:
    """Trains step ``step`` (a sync); also returns the params just before
    the sync, after the inner optimizer's update of that step."""
    idx = self._rows(self.pipe.batch_indices(step - 1, step))[0]
    carry, ce, pre_sync = self.programs.call(
        'sync_step', self._sync_step, carry, idx,
        self._replicated(jnp.int32(step)),
        *self._data())
    return carry, np.asarray(ce)[None], pre_sync

  def evaluate(self, params: Any, batch_stats: Any) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``params`` as they are."""
    pipe = self.pipe
    correct, loss = self.programs.call(
        'evaluate', self._evaluate, params, batch_stats, pipe.x_test,
        pipe.y_test, pipe.valid)
    return float(correct) / pipe.n_test, float(loss) / pipe.n_test

  def evaluate_exact(self, carry: TrainCarry) -> tuple[float, float, Any]:
    """(accuracy, mean cross-entropy, exact params): LaPerm's params with
    every reconnected weight exactly on its pool value."""
    pipe = self.pipe
    correct, loss, exact = self.programs.call(
        'evaluate_exact', self._evaluate_exact, carry.params,
        carry.opt_state, carry.batch_stats, pipe.x_test, pipe.y_test,
        pipe.valid)
    return float(correct) / pipe.n_test, float(loss) / pipe.n_test, exact
