"""One training run: LaPerm(Adam) or plain Adam on the same pipeline.

The protocol (better than the original's, see paper-notes.md section 5):

* LaPerm syncs on steps k, 2k, ... (1-based). Evaluations happen only at
  sync steps -- every ``eval_interval`` steps, the multiple of k nearest to
  ``eval_every`` (default one epoch) -- and at the end. An evaluation at a
  sync step uses ``reconnect(params, pool)``, the exact sync, so every
  evaluated model is a true per-vector permutation of theta_0 (the trained
  params differ from it only by rounding of ``p + (q - p)``).
* If the last step is not a sync step, the raw final weights are evaluated
  (recorded with ``after_sync: false``) and then one explicit final sync
  (``reconnect``) is applied and evaluated: the reported final accuracy is
  always post-sync.
* The Adam baseline runs the identical pipeline (data order, dropout keys,
  schedule, evaluation steps), only without syncs.
* ``best_test_accuracy`` is the maximum over post-sync evaluations (all
  evaluations for Adam). It is selected on the test set, hence optimistic;
  ``final_test_accuracy`` is the unbiased number.
* With ``track_syncs`` every sync is evaluated twice: just before the sync
  (the params after the inner Adam step of that same step, computed from the
  public ``LaPermState.inner_state``) and just after; it also records the
  fraction of reconnected weights whose value changed since the previous sync
  and, for sparse runs, connections created (0 -> non-0) and removed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import laperm_jax
from experiments import augment as augment_lib
from experiments import checkpointing
from experiments import data as data_lib
from experiments import models as models_lib
from experiments import protocol
from experiments import sparse_baselines

PREPROCESSING = ('scale', 'raw', 'mean')
INITS = ('default', 'sparse', 'shared')
OPTIMIZERS = ('laperm', 'adam') + sparse_baselines.OPTIMIZERS
DECAY_SCOPES = ('kernels', 'conv', 'hidden')
INNERS = ('adam', 'sgd', 'momentum', 'lars')


def _flag(default, help_text: str, **argparse_kwargs):
  """A RunConfig field and its CLI flag (``experiments.cli`` derives them)."""
  return dataclasses.field(default=default,
                           metadata=dict(help=help_text, **argparse_kwargs))


@dataclasses.dataclass
class RunConfig:
  """Everything that defines a run; recorded in results.json.

  The defaults are the default run (``python -m experiments.train``) and the
  CLI's defaults: each field is one flag (``--batch-size`` for
  ``batch_size``), derived from this class by ``experiments.cli``.
  """
  model: str = _flag('lenet300', ', '.join(models_lib.MODELS))
  dataset: str = _flag('mnist5k', ', '.join(data_lib.DATASETS))
  optimizer: str = _flag('laperm', ' | '.join(OPTIMIZERS), cli=False)
  k: str | int | None = _flag(
      '20', 'steps between syncs: an int, or "Nep" for N epochs')
  epochs: float = _flag(20.0, 'training epochs', type=float)
  batch_size: int = _flag(50, 'batch size', type=int)
  lr: float = _flag(1e-3, 'Adam learning rate', type=float)
  lr_schedule: str = _flag(
      'constant', 'constant | exp:R (lr*R^epoch) | step:R:E '
      '(lr*R^(epoch//E)) | resnet (the Keras CIFAR ResNet steps)')
  init: str = _flag('default', 'default | sparse (Bernoulli keep mask) | '
                    'shared ({0, w})', choices=INITS)
  density: Any = _flag(
      None, 'fraction of kernel weights kept non-zero; one value or one per '
      'layer, comma-separated (default 1, or 0.5 with --init sparse/shared)',
      type=str)
  first_layer_min_density: float = _flag(
      0.8, 'sparse init: the first layer keeps at least this fraction (the '
      "paper's 0.8; 0 prunes it like the others)", type=float)
  shared_value: float = _flag(0.08, 'w for --init shared', type=float)
  seed: int = _flag(0, 'seed of theta_0, data order and dropout', type=int)
  augment: str = _flag('none', 'augmentation',
                       choices=tuple(augment_lib.AUGMENTATIONS))
  preprocess: str = _flag(
      'scale', "scale: x/255 | raw: 0-255 (the paper's CIFAR bug) | mean: "
      'x/255 minus the per-pixel train mean', choices=PREPROCESSING)
  weight_decay: float = _flag(
      0.0, 'Keras-style L2 coefficient (loss += wd * sum w^2)', type=float)
  weight_decay_scope: str = _flag('kernels', 'which kernels L2 applies to',
                                  choices=DECAY_SCOPES)
  permute_biases: bool | None = _flag(
      None, 'also reconnect conv/dense biases (default: as in the paper)',
      action='optional_bool')
  eval_every: int | None = _flag(
      None, 'steps between evaluations, rounded to a multiple of k '
      '(default: one epoch)', type=int)
  max_steps: int | None = _flag(None, 'cap on training steps', type=int)
  train_subset: int | None = _flag(
      None, 'use a stratified random subset of this many training images',
      type=int)
  test_subset: int | None = _flag(None, 'the same for the test set', type=int)
  data_source: str = _flag(
      'auto', 'auto/local: local files only; tfds: tensorflow_datasets (may '
      'download)', choices=data_lib.SOURCES)
  data_dir: str | None = _flag(None, 'directory holding the dataset files',
                               type=str)
  track_syncs: bool = _flag(
      False, 'evaluate just before and after every sync and count moves')
  eval_batch_size: int = _flag(1000, 'test images per evaluation batch',
                               type=int)
  time_limit_s: float | None = _flag(
      None, 'stop at the first evaluation point after this much training '
      'time (results.json records where: stopped_early)', type=float,
      flag='--time-limit', metavar='SECONDS')
  # Issue 12: escaping the fixed point of shared-value {0, w} networks.
  val_split: float = _flag(
      0.0, 'carve a stratified validation set of this fraction from the '
      'training set (fixed seed) and evaluate on it instead of the test set: '
      'for tuning; the test set is not touched', type=float,
      metavar='FRACTION')
  carry_residual: float = _flag(
      0.0, 'laperm(carry_residual=BETA): rank candidate + residual at a sync '
      'and keep BETA * (ranked - reconnected); 0 = the paper', type=float,
      metavar='BETA')
  reset_inner_state: bool = _flag(
      False, 'laperm(reset_inner_state=True): re-initialise the inner '
      'optimizer at each sync')
  logit_scale: float = _flag(
      1.0, 'train on the cross-entropy of S * logits (a loss temperature: the '
      'network and its accuracy are unchanged; the recorded train loss is the '
      'scaled one)', type=float, metavar='S')
  inner: str = _flag(
      'adam', "inner optimizer: adam (paper) | sgd | momentum (SGD, 0.9) | "
      "lars (momentum 0.9, each leaf's step scaled to lr*|params|/|grads|); "
      '--lr is its learning rate', choices=INNERS)
  scan: str = _flag(
      'auto', 'lax.scan over the steps between evaluations (auto: not for '
      'conv models on CPU, where XLA runs convs ~20x slower inside a loop; '
      'those use one jitted step per call)', choices=('auto', 'on', 'off'))

  def __post_init__(self):
    if self.density is None:
      self.density = 0.5 if self.init in ('sparse', 'shared') else 1.0


def parse_k(k, steps_per_epoch: int) -> int:
  """'250' -> 250; '2ep' -> 2 epochs of steps; None -> one epoch."""
  if k is None:
    return steps_per_epoch
  if isinstance(k, str) and k.endswith('ep'):
    return max(1, int(round(float(k[:-2]) * steps_per_epoch)))
  value = int(k)
  if value < 1:
    raise ValueError(f'k must be >= 1, got {k}')
  return value


def make_schedule(cfg: RunConfig, steps_per_epoch: int):
  """The per-epoch Keras learning-rate schedules, as optax step schedules."""
  base, spec = cfg.lr, cfg.lr_schedule
  epoch_of = lambda count: count // steps_per_epoch
  if spec == 'constant':
    return optax.constant_schedule(base)
  if spec.startswith('exp:'):
    rate = float(spec.split(':')[1])
    return lambda count: base * rate ** epoch_of(count)
  if spec.startswith('step:'):
    _, rate, every = spec.split(':')
    return lambda count: base * float(rate) ** (epoch_of(count) // int(every))
  if spec == 'resnet':
    def resnet(count):
      e = epoch_of(count)
      factor = jnp.where(e > 180, 5e-4, jnp.where(e > 160, 1e-3, jnp.where(
          e > 120, 1e-2, jnp.where(e > 80, 1e-1, 1.0))))
      return base * factor
    return resnet
  raise ValueError(f'unknown --lr-schedule {spec!r}: use constant, exp:R, '
                   'step:R:E or resnet')


def per_leaf_density(params, density, first_layer: str, mask,
                     first_layer_floor: float | None):
  """A full pytree of keep probabilities (1.0 where the mask is False)."""
  masked_paths = [p for p, f in jax.tree_util.tree_flatten_with_path(mask)[0]
                  if f]
  if isinstance(density, (list, tuple)):
    if len(density) == 1:
      density = density[0]
    elif len(density) != len(masked_paths):
      raise ValueError(f'--density has {len(density)} values but the model '
                       f'has {len(masked_paths)} kernels')
  def leaf_density(path, leaf, flag):
    del leaf
    if not flag:
      return 1.0
    d = (density[masked_paths.index(path)] if isinstance(density, (list, tuple))
         else float(density))
    if first_layer_floor is not None and path[0].key == first_layer:
      d = max(d, first_layer_floor)
    return float(d)
  return jax.tree_util.tree_map_with_path(leaf_density, params, mask)


def vector_rows(leaf: np.ndarray) -> np.ndarray:
  """(vector length, number of vectors): every axis but the last is a vector."""
  return leaf.reshape(-1, leaf.shape[-1]) if leaf.ndim >= 2 else leaf[:, None]


def exact_permutation_check(params, params0, mask) -> bool:
  """Independent check: every masked leaf, per vector, sorts to theta_0."""
  flags = jax.tree.leaves(mask)
  leaves = jax.tree.leaves(params)
  leaves0 = jax.tree.leaves(params0)
  ok = True
  for flag, leaf, leaf0 in zip(flags, leaves, leaves0):
    if flag:
      a = np.sort(vector_rows(np.asarray(leaf)), axis=0)
      b = np.sort(vector_rows(np.asarray(leaf0)), axis=0)
      ok &= bool(np.array_equal(a, b))
  return ok if any(flags) else False


@dataclasses.dataclass
class RunResult:
  config: RunConfig
  results: dict           # the results.json content
  params0: Any            # theta_0 (after sparse / shared set-up), host numpy
  params_final: Any       # final exported params (post-sync for LaPerm)
  batch_stats: Any
  mask: Any               # reconnected leaves
  evaluate: Any           # evaluate(params, batch_stats) -> (acc, loss)
  sync_records: list


def has_conv(params) -> bool:
  return any(np.ndim(p) == 4 for p in jax.tree.leaves(params))


def to_host(tree):
  return jax.tree.map(np.asarray, tree)


class Pipeline:
  """Data, model and jitted train / eval functions for one configuration."""

  def __init__(self, cfg: RunConfig, dataset: data_lib.Dataset | None = None):
    if cfg.model not in models_lib.MODELS:
      raise ValueError(f'unknown model {cfg.model!r}')
    for value, allowed, what in ((cfg.optimizer, OPTIMIZERS, 'optimizer'),
                                 (cfg.init, INITS, 'init'),
                                 (cfg.inner, INNERS, 'inner'),
                                 (cfg.preprocess, PREPROCESSING, 'preprocess'),
                                 (cfg.weight_decay_scope, DECAY_SCOPES,
                                  'weight_decay_scope'),
                                 (cfg.augment, tuple(augment_lib.AUGMENTATIONS),
                                  'augment')):
      if value not in allowed:
        raise ValueError(f'unknown {what} {value!r}; choose from {allowed}')
    self.cfg = cfg
    if dataset is None:
      dataset = data_lib.load(cfg.dataset, cfg.data_source, cfg.data_dir)
    self.dataset = dataset.subset(cfg.train_subset, cfg.test_subset, cfg.seed)
    if cfg.val_split:
      self.dataset = data_lib.validation_split(self.dataset, cfg.val_split)
    ds = self.dataset
    self.spec = models_lib.MODELS[cfg.model]
    if min(ds.image_shape[:2]) < self.spec.min_hw:
      raise ValueError(f'{cfg.model} needs images of at least '
                       f'{self.spec.min_hw}x{self.spec.min_hw}; {ds.name} is '
                       f'{ds.image_shape[0]}x{ds.image_shape[1]}')
    self.model = self.spec.build(ds.num_classes)
    self.steps_per_epoch = len(ds.y_train) // cfg.batch_size
    if self.steps_per_epoch < 1:
      raise ValueError('batch size larger than the training set')
    self.total_steps = max(1, int(round(cfg.epochs * self.steps_per_epoch)))
    if cfg.max_steps is not None:
      self.total_steps = min(self.total_steps, cfg.max_steps)
    self.k = parse_k(cfg.k, self.steps_per_epoch)
    eval_every = cfg.eval_every or self.steps_per_epoch
    self.eval_interval = self.k * max(1, int(round(eval_every / self.k)))
    self.augmentation = augment_lib.AUGMENTATIONS[cfg.augment]

    # Data on the device, compact; scaling happens inside the jitted steps.
    self.x_train = jnp.asarray(ds.x_train)
    self.y_train = jnp.asarray(ds.y_train)
    self.pixel_mean = jnp.asarray(
        ds.x_train.astype(np.float32).mean(axis=0) / ds.max_value)
    n_test, eb = len(ds.y_test), cfg.eval_batch_size
    n_batches = math.ceil(n_test / eb)
    pad = n_batches * eb - n_test
    x_test = np.concatenate([ds.x_test, np.zeros((pad,) + ds.image_shape,
                                                 ds.x_test.dtype)])
    y_test = np.concatenate([ds.y_test, np.zeros(pad, np.int32)])
    valid = np.arange(n_batches * eb) < n_test
    self.x_test = jnp.asarray(x_test.reshape((n_batches, eb) + ds.image_shape))
    self.y_test = jnp.asarray(y_test.reshape(n_batches, eb))
    self.valid = jnp.asarray(valid.reshape(n_batches, eb))
    self.n_test = n_test
    self._epoch_orders = {}

  # -- preprocessing -------------------------------------------------------
  def preprocess(self, x):
    x = x.astype(jnp.float32)
    if self.cfg.preprocess == 'raw':
      return x
    x = x / self.dataset.max_value
    if self.cfg.preprocess == 'mean':
      x = x - self.pixel_mean
    return x

  # -- initial parameters --------------------------------------------------
  def init_variables(self):
    cfg = self.cfg
    key = jax.random.key(cfg.seed)
    k_init, k_sparse = jax.random.split(key)
    dummy = jnp.zeros((1,) + self.dataset.image_shape, jnp.float32)
    variables = self.model.init({'params': k_init}, dummy, train=False)
    params = variables['params']
    batch_stats = variables.get('batch_stats', {})
    kernels = models_lib.kernel_mask(params)
    if cfg.init == 'sparse':
      density = per_leaf_density(params, cfg.density, self.spec.first_layer,
                                 kernels,
                                 first_layer_floor=cfg.first_layer_min_density)
      params = laperm_jax.sparse_init(k_sparse, params, density, mask=kernels)
    elif cfg.init == 'shared':
      density = per_leaf_density(params, cfg.density, self.spec.first_layer,
                                 kernels, first_layer_floor=None)
      params = laperm_jax.shared_value_init(k_sparse, params, cfg.shared_value,
                                            density, mask=kernels)
    permute_biases = (self.spec.permute_biases if cfg.permute_biases is None
                      else cfg.permute_biases)
    mask = models_lib.reconnect_mask(params, permute_biases)
    return params, batch_stats, mask

  def decay_mask(self, params):
    kernels = models_lib.kernel_mask(params)
    scope = self.cfg.weight_decay_scope
    if scope == 'conv':
      return jax.tree.map(lambda f, p: bool(f and p.ndim == 4), kernels, params)
    if scope == 'hidden':
      last = sorted(k for k in params if k.startswith('dense'))[-1]
      return {name: jax.tree.map(lambda f: bool(f and name != last), sub)
              for name, sub in kernels.items()}
    return kernels

  # -- optimiser -----------------------------------------------------------
  def make_optimizer(self, mask):
    lr = make_schedule(self.cfg, self.steps_per_epoch)
    if self.cfg.inner == 'adam':
      inner = optax.adam(lr, b1=0.9, b2=0.999, eps=1e-7)
    elif self.cfg.inner == 'lars':  # per-leaf trust ratio, momentum 0.9
      inner = optax.lars(lr, trust_coefficient=1.0)
    else:
      inner = optax.sgd(lr, momentum=0.9 if self.cfg.inner == 'momentum'
                        else None)
    if self.cfg.optimizer == 'laperm':
      return inner, laperm_jax.laperm(
          inner, self.k, mask=mask, carry_residual=self.cfg.carry_residual,
          reset_inner_state=self.cfg.reset_inner_state,
          track_changes=self.cfg.init == 'sparse')
    if self.cfg.optimizer in sparse_baselines.OPTIMIZERS:  # sparse baselines
      return inner, sparse_baselines.from_name(
          self.cfg.optimizer, inner, steps_per_epoch=self.steps_per_epoch,
          total_steps=self.total_steps, seed=self.cfg.seed,
          selected=models_lib.kernel_mask)
    return inner, inner

  # -- batches -------------------------------------------------------------
  def batch_indices(self, start: int, stop: int) -> np.ndarray:
    """Row indices of steps start+1 .. stop (0-based step start)."""
    spe, bs = self.steps_per_epoch, self.cfg.batch_size
    out = []
    for step in range(start, stop):
      epoch, pos = divmod(step, spe)
      if epoch not in self._epoch_orders:
        self._epoch_orders = {epoch: np.random.default_rng(
            [self.cfg.seed, epoch]).permutation(len(self.dataset.y_train))}
      out.append(self._epoch_orders[epoch][pos * bs:(pos + 1) * bs])
    return np.stack(out).astype(np.int32)


class Steps:
  """The jitted functions of one run: training chunks, sync step, evaluation.

  Built once per run; their programs are what ``run`` executes, so that the
  loop below holds no numerics of its own.
  """

  def __init__(self, pipe: Pipeline, cfg: RunConfig, tx, inner, mask, params,
               batch_stats, mesh=None):
    model = pipe.model
    has_bn = bool(jax.tree.leaves(batch_stats))
    decay_mask = pipe.decay_mask(params)
    wd = cfg.weight_decay
    base_key = jax.random.fold_in(jax.random.key(cfg.seed), 1)

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
      if wd:
        l2 = sum(jnp.sum(p ** 2) for p, f in zip(
            jax.tree.leaves(params), jax.tree.leaves(decay_mask)) if f)
        loss = loss + wd * l2
      new_bs = new_vars['batch_stats'] if has_bn else batch_stats
      return loss, (ce, new_bs)

    def one_step(carry, inputs, x_train, y_train):
      params, batch_stats, opt_state = carry
      idx, step = inputs
      key = jax.random.fold_in(base_key, step)
      k_aug, k_drop = jax.random.split(key)
      x = pipe.preprocess(x_train[idx])
      if mesh is not None:
        x = mesh.shard_batch(x)
      x = augment_lib.random_affine(k_aug, x, pipe.augmentation)
      (_, (ce, batch_stats)), grads = jax.value_and_grad(
          loss_fn, has_aux=True)(params, batch_stats, x, y_train[idx], k_drop)
      updates, new_opt_state = tx.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      new_carry = (new_params, batch_stats, new_opt_state)
      if mesh is not None:
        new_carry = mesh.constrain(new_carry)
      return new_carry, (ce, grads)

    @jax.jit
    def scan_chunk(carry, idx, steps, x_train, y_train):
      def body(c, inp):
        c, (ce, _) = one_step(c, inp, x_train, y_train)
        return c, ce
      return jax.lax.scan(body, carry, (idx, steps))

    @jax.jit
    def single_step(carry, idx, step, x_train, y_train):
      carry, (ce, _) = one_step(carry, (idx, step), x_train, y_train)
      return carry, ce

    @jax.jit
    def sync_step(carry, idx, step, x_train, y_train):
      """One step that also returns the params just before the sync."""
      params, _, opt_state = carry
      new_carry, (ce, grads) = one_step(carry, (idx, step), x_train, y_train)
      inner_updates, _ = inner.update(grads, opt_state.inner_state, params)
      return new_carry, ce, optax.apply_updates(params, inner_updates)

    @jax.jit
    def evaluate_jit(params, batch_stats, xs, ys, valid):
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

    @jax.jit
    def sync_change(prev, cur):
      """Fraction of reconnected weights changed; connections created/removed."""
      changed = created = removed = nonzero = total = 0
      for a, b, f in zip(jax.tree.leaves(prev), jax.tree.leaves(cur),
                         jax.tree.leaves(mask)):
        if f:
          changed += jnp.sum(a != b)
          created += jnp.sum((a == 0) & (b != 0))
          removed += jnp.sum((a != 0) & (b == 0))
          nonzero += jnp.sum(b != 0)
          total += a.size
      return changed / total, created, removed, nonzero

    self.pipe = pipe
    self.use_scan = cfg.scan == 'on' or (cfg.scan == 'auto' and (
        jax.default_backend() != 'cpu' or not has_conv(params)))
    self._scan_chunk, self._single_step = scan_chunk, single_step
    self.sync_step, self.sync_change = sync_step, sync_change
    self._evaluate_jit = evaluate_jit
    self.exact = (jax.jit(laperm_jax.reconnect)
                  if cfg.optimizer == 'laperm' else None)

  def chunk(self, carry, lo: int, hi: int):
    """Steps lo+1 .. hi; returns the carry and their losses (host)."""
    pipe = self.pipe
    idx = jnp.asarray(pipe.batch_indices(lo, hi))
    steps = jnp.arange(lo + 1, hi + 1, dtype=jnp.int32)
    if self.use_scan:
      carry, ce = self._scan_chunk(carry, idx, steps, pipe.x_train,
                                   pipe.y_train)
      return carry, np.asarray(ce)
    losses = []
    for i in range(idx.shape[0]):
      carry, ce = self._single_step(carry, idx[i], steps[i], pipe.x_train,
                                    pipe.y_train)
      losses.append(ce)
    return carry, np.asarray(jnp.stack(losses))

  def evaluate(self, params, batch_stats):
    pipe = self.pipe
    correct, loss = self._evaluate_jit(params, batch_stats, pipe.x_test,
                                       pipe.y_test, pipe.valid)
    return float(correct) / pipe.n_test, float(loss) / pipe.n_test


def run(cfg: RunConfig, dataset: data_lib.Dataset | None = None,
        progress: bool = True, pipeline: Pipeline | None = None,
        checkpoints=None, mesh=None) -> RunResult:
  """Trains one configuration and returns its results and weights.

  ``checkpoints``: an ``experiments.checkpointing.Checkpoints`` (saves, and
  resumes from its latest checkpoint); ``mesh``: an
  ``experiments.mesh.MeshPlan`` (multi-device). The protocol (where and how
  evaluations happen, best selection) is ``experiments.protocol``.
  """
  start_time = time.time()
  pipe = pipeline or Pipeline(cfg, dataset)
  params, batch_stats, mask = pipe.init_variables()
  params0 = to_host(params)
  inner, tx = pipe.make_optimizer(mask)
  if mesh is not None:
    params, batch_stats, opt_state = mesh.place(pipe, params, batch_stats, tx)
  else:
    opt_state = tx.init(params)
  steps = Steps(pipe, cfg, tx, inner, mask, params, batch_stats, mesh)
  loop = _Loop(cfg, pipe, steps, tx, (params, batch_stats, opt_state),
               checkpoints, mesh)
  loop.train(progress)
  return _result(cfg, pipe, steps, loop, params0, mask, mesh,
                 time.time() - start_time)


class _Loop:
  """The training loop: chunks of steps between evaluation points, resume."""

  def __init__(self, cfg, pipe, steps, tx, carry, checkpoints, mesh):
    self.cfg, self.pipe, self.steps = cfg, pipe, steps
    self.is_laperm = cfg.optimizer == 'laperm'
    self.carry = carry
    self.prev_exact = carry[0]
    self.before_last_sync = None  # params before the last step, if a sync
    self.step, self.history, self.sync_records = 0, [], []
    self.train_time, self.pending = 0.0, []
    self.stopped_early = None
    self.checkpoints = checkpoints
    self.initial_accuracy = steps.evaluate(carry[0], carry[1])  # theta_0
    self.initial_accuracy = self.initial_accuracy[0]
    self.every = None
    if checkpoints is not None:
      checkpoints.total_steps, self.every = pipe.total_steps, checkpoints.every
      if checkpoints.latest is not None:
        restored = checkpoints.restore(
            tx, dict(carry=self.carry, prev_exact=self.prev_exact),
            mesh.sharding_of if mesh is not None else
            lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]))
        self.carry, self.prev_exact = restored['carry'], restored['prev_exact']
        meta = checkpoints.loop_state()
        self.step, self.history = meta['step'], meta['history']
        self.sync_records = meta['sync_records']
        self.train_time = meta['train_time']
        self.initial_accuracy = meta['initial_accuracy']
        self.pending = meta['pending_losses']

  @property
  def pool(self):
    return self.carry[2].pool if self.is_laperm else None

  def save(self, at, losses=()):
    self.checkpoints.save(
        at, dict(carry=self.carry, prev_exact=self.prev_exact),
        checkpointing.loop_meta(self.history, self.sync_records,
                                self.train_time, self.initial_accuracy,
                                losses))

  def train(self, progress: bool) -> None:
    cfg, pipe = self.cfg, self.pipe
    total, k = pipe.total_steps, pipe.k
    points = protocol.evaluation_points(
        total, k, pipe.eval_interval,
        every_sync=cfg.track_syncs and self.is_laperm)
    bar = None
    if progress:
      from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
      bar = tqdm(total=total, desc=f'{cfg.optimizer} {cfg.model}',
                 unit='step', leave=True)
    for point in points:
      if point <= self.step:  # done before the checkpoint resumed from
        continue
      if (cfg.time_limit_s is not None and self.history and
          self.train_time >= cfg.time_limit_s):
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

  def _advance_to(self, point: int) -> None:
    pipe, steps = self.pipe, self.steps
    t0 = time.time()
    losses, self.pending = self.pending, []
    is_sync = protocol.is_sync_point(point, pipe.k, self.is_laperm)
    tracked = self.cfg.track_syncs and is_sync
    # The last step of a run that ends on a sync runs on its own (the same
    # program, split as a checkpoint splits it), to keep the params before it.
    last_sync = is_sync and point == pipe.total_steps and not tracked
    chunk_end = point - 1 if (tracked or last_sync) else point
    for lo, hi in checkpointing.spans(self.step, chunk_end, self.every):
      self.carry, ce = steps.chunk(self.carry, lo, hi)
      losses.append(ce)
      if (self.checkpoints is not None and hi < point and
          self.checkpoints.due(hi)):
        self.save(hi, losses)  # mid-interval (between two syncs for LaPerm)
    pre_sync = None
    if tracked:
      idx = pipe.batch_indices(point - 1, point)[0]
      self.carry, ce, pre_sync = steps.sync_step(
          self.carry, jnp.asarray(idx), jnp.int32(point), pipe.x_train,
          pipe.y_train)
      losses.append(np.asarray(ce)[None])
    elif last_sync and chunk_end < point:
      before = self.carry[0]
      self.carry, ce = steps.chunk(self.carry, point - 1, point)
      losses.append(ce)
      self.before_last_sync = before
    jax.block_until_ready(self.carry)
    self.train_time += time.time() - t0
    self.step = point
    params, batch_stats, _ = self.carry
    train_loss = float(np.concatenate(losses).mean()) if losses else None
    pool = self.pool
    synced = []
    def exact(p):
      synced.append(steps.exact(p, pool))
      return synced[-1]
    self.history += protocol.evaluate_point(
        point, params, is_laperm=self.is_laperm, is_sync=is_sync,
        evaluate=lambda p: steps.evaluate(p, batch_stats), exact=exact,
        epoch=point / pipe.steps_per_epoch, train_loss=train_loss)
    changes = getattr(self.carry[2], 'changes', None)
    if is_sync and isinstance(changes, laperm_jax.SyncChanges):  # sparse init
      self.history[-1].update(sync_created=int(changes.created),
                              sync_removed=int(changes.removed))
    if tracked:
      acc_before, _ = steps.evaluate(pre_sync, batch_stats)
      frac, created, removed, nonzero = steps.sync_change(self.prev_exact,
                                                          synced[0])
      self.sync_records.append(dict(
          step=point, acc_before=acc_before,
          acc_after=self.history[-1]['test_accuracy'],
          changed_fraction=float(frac), created=int(created),
          removed=int(removed), nonzero=int(nonzero)))
      self.prev_exact = synced[0]


def _result(cfg, pipe, steps, loop, params0, mask, mesh,
            wall_time) -> RunResult:
  """The results.json content and the final weights of a finished loop."""
  from experiments import provenance  # pylint: disable=import-outside-toplevel
  is_laperm = loop.is_laperm
  params, batch_stats, _ = loop.carry
  history = loop.history
  flags = jax.tree.leaves(mask)
  within_bound = trained_permutation = None
  if is_laperm:
    final_params = steps.exact(params, loop.pool)
    deviation = max(float(jnp.max(jnp.abs(a - b))) for a, b, f in zip(
        jax.tree.leaves(params), jax.tree.leaves(final_params), flags) if f)
    library_check = all(bool(x) for x in jax.tree.leaves(
        laperm_jax.is_permutation_of_pool(final_params, loop.pool)))
    trained_permutation = all(bool(x) for x in jax.tree.leaves(
        laperm_jax.is_permutation_of_pool(params, loop.pool)))
    if loop.before_last_sync is not None:
      pick = lambda tree: [np.asarray(x) for x, f in zip(jax.tree.leaves(tree),
                                                         flags) if f]
      within_bound = protocol.within_sync_bound(
          pick(params), pick(final_params), pick(loop.before_last_sync))
  else:
    final_params, deviation, library_check = params, None, None
  final_params = to_host(final_params)
  best = protocol.select_best(history, is_laperm)
  total = pipe.total_steps
  n_reconnected = int(sum(np.size(p) for p, f in zip(
      jax.tree.leaves(params0), flags) if f))
  n_zero0 = int(sum(np.sum(p == 0) for p, f in zip(
      jax.tree.leaves(params0), flags) if f))
  results = dict(
      final_test_accuracy=history[-1]['test_accuracy'],
      initial_test_accuracy=loop.initial_accuracy,
      best_test_accuracy=best['test_accuracy'],
      best_step=best['step'],
      best_selection=protocol.best_selection_note(is_laperm),
      exact_permutation=exact_permutation_check(final_params, params0, mask),
      exact_permutation_library=library_check,
      max_abs_change_by_final_exact_sync=deviation,
      # The trained weights themselves, before the final exact reconnect:
      # exact pool values (rarely: p + (q - p) rounds), and within the
      # documented bound of one ulp of max(|p|, |q|) when the last step was
      # a sync (None when it was not: then Adam moved them off the pool).
      trained_params_exact_permutation=trained_permutation,
      trained_params_within_sync_bound=within_bound,
      history=history,
      sync_records=loop.sync_records,
      config=dict(dataclasses.asdict(cfg), k_steps=pipe.k,
                  steps_per_epoch=pipe.steps_per_epoch, total_steps=total,
                  eval_interval=pipe.eval_interval,
                  permute_biases_effective=bool(any(
                      f for p, f in zip(jax.tree.leaves(params0), flags)
                      if np.ndim(p) == 1))),
      dataset=dict(name=pipe.dataset.name, source=pipe.dataset.source,
                   n_train=int(len(pipe.dataset.y_train)), n_test=pipe.n_test,
                   image_shape=list(pipe.dataset.image_shape)),
      n_params=models_lib.count_params(params0),
      n_reconnected=n_reconnected,
      initial_zero_fraction_reconnected=(n_zero0 / n_reconnected
                                         if n_reconnected else 0.0),
      mesh=mesh.describe() if mesh is not None else None,
      stopped_early=loop.stopped_early,
      wall_time_s=wall_time,
      train_time_s=loop.train_time,
      backend=jax.default_backend(),
      versions=dict(jax=jax.__version__, optax=optax.__version__,
                    laperm_jax=getattr(laperm_jax, '__version__', None)),
      provenance=provenance.collect(),
      **sparse_baselines.topology_counts(loop.carry[2]),
  )
  return RunResult(cfg, results, params0, final_params, to_host(batch_stats),
                   mask, steps.evaluate, loop.sync_records)
