"""One training run: an optimizer of the registry on the run's pipeline.

``run(RunConfig(...))`` trains and returns a :class:`RunResult`. The pieces,
one job each:

* ``experiments.config``: ``RunConfig`` (every CLI flag), ``parse_k``,
  ``make_schedule``;
* ``experiments.optimizers``: the optimizer registry (``--optimizer``,
  ``--inner``);
* ``experiments.initialisation``: theta_0, sparse / shared set-up, masks;
* ``experiments.pipeline``: the data on the device, batches, step counts;
* ``experiments.steps``: the compiled programs (training chunk, evaluation);
* ``experiments.protocol``: where and how a run is evaluated (described
  there, once);
* ``experiments.loop``: the loop between evaluation points, resume;
* ``experiments.results_json``: the results.json content.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import time
from typing import Any

import jax
import numpy as np

from experiments import data as data_lib
from experiments import results_json
from experiments.config import DECAY_SCOPES
from experiments.config import INITS
from experiments.config import INNERS
from experiments.config import PREPROCESSING
from experiments.config import RunConfig
from experiments.config import make_schedule
from experiments.config import parse_k
from experiments.initialisation import per_leaf_density
from experiments.loop import Loop
from experiments.optimizers import OPTIMIZERS
from experiments.pipeline import Pipeline
from experiments.results_json import exact_permutation_check
from experiments.results_json import vector_rows
from experiments.steps import Steps
from experiments.steps import TrainCarry
from experiments.steps import has_conv

__all__ = [
    'DECAY_SCOPES', 'INITS', 'INNERS', 'OPTIMIZERS', 'PREPROCESSING',
    'Pipeline', 'RunConfig', 'RunResult', 'Steps', 'TrainCarry',
    'exact_permutation_check', 'has_conv', 'make_schedule', 'parse_k',
    'per_leaf_density', 'run', 'to_host', 'vector_rows',
]


@dataclasses.dataclass
class RunResult:
  """A finished run.

  Attributes:
    config: the run's configuration.
    results: the results.json content.
    params0: theta_0 (after sparse / shared set-up), host NumPy.
    params_final: the exported params (LaPerm: exact pool values).
    params_trained: the trained params as the last step left them (LaPerm:
      the pool values up to the rounding of ``p + (q - p)`` after a sync).
    sorted_theta0: LaPerm's pool (per reconnected leaf theta_0 sorted within
      each vector, kept from init; ``optax.MaskedNode`` elsewhere), host
      NumPy; None for the baseline.
    params_before_last_step: the params just before the last step.
    batch_stats: the final batch-norm statistics.
    mask: per leaf, whether it is reconnected.
    evaluate: ``evaluate(params, batch_stats) -> (accuracy, loss)``.
    sync_records: with ``--track-syncs``, one dict per sync.
  """
  config: RunConfig
  results: dict
  params0: Any
  params_final: Any
  params_trained: Any
  sorted_theta0: Any
  params_before_last_step: Any
  batch_stats: Any
  mask: Any
  evaluate: Callable[[Any, Any], tuple[float, float]]
  sync_records: list


def to_host(tree: Any) -> Any:
  """Every leaf as a NumPy array."""
  return jax.tree.map(np.asarray, tree)


def run(cfg: RunConfig, dataset: data_lib.Dataset | None = None,
        progress: bool = True, pipeline: Pipeline | None = None,
        checkpoints: Any = None, mesh: Any = None) -> RunResult:
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
  inner, tx = pipe.make_optimizer(params, mask)
  steps = Steps(pipe, tx, inner, params, batch_stats, mesh)
  if mesh is not None:
    params, batch_stats, opt_state = mesh.place(pipe, params, batch_stats, tx)
  else:
    opt_state = steps.programs.call('init', jax.jit(tx.init), params)
  loop = Loop(pipe, steps, tx, TrainCarry(params, batch_stats, opt_state),
              mask, checkpoints, mesh)
  loop.train(progress)
  if mesh is not None and jax.process_count() > 1:  # no process holds all
    loop.carry, loop.exact_params, loop.params_before_last_step = (
        mesh.to_host((loop.carry, loop.exact_params,
                      loop.params_before_last_step)))
  trained = loop.carry.params
  final = to_host(loop.exact_params if loop.reconnects else trained)
  results = results_json.assemble(loop, params0, final, mask, mesh,
                                  time.time() - start_time)
  pool = to_host(loop.carry.opt_state.pool) if loop.reconnects else None
  return RunResult(cfg, results, params0, final, to_host(trained), pool,
                   to_host(loop.params_before_last_step),
                   to_host(loop.carry.batch_stats), mask, steps.evaluate,
                   loop.sync_records)
