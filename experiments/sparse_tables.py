"""RESULTS.md's tables of sparse LaPerm against sparse-training baselines.

Registered in ``experiments.tables`` (``TABLES``), which rewrites and checks
them like the others. Every number comes from a results.json under
``experiments/results/sparse_training_lenet300_fashion/``:

* ``sparse70/``, ``sparse50/``: ``METHOD_seedS`` for each method below
  (``laperm_momentum_k10``: 70% only);
* ``dense/adam_seedS``: dense Adam, the reference of both sparsities;
* ``val/sparse70__TAG``, ``val/sparse50__TAG``: the validation runs that
  chose the ``*_best`` presets.
"""

from __future__ import annotations

import statistics
from typing import Any, Protocol

ROOT = 'sparse_training_lenet300_fashion'
SEEDS = (0, 1, 2)
SPARSITIES = (('sparse70', '70%'), ('sparse50', '50%'))
METHODS = (('laperm_paper', 'LaPerm (paper recipe)'),
           ('laperm_momentum_k10', 'LaPerm (momentum lr 0.1, carry 1, k 10)'),
           ('laperm_best', 'LaPerm (best preset)'),
           ('masked_adam', 'masked Adam'), ('set', 'SET'), ('rigl', 'RigL'))
VAL_TAGS = {
    'sparse70': ('paper', 'adam_carry1', 'momentum_lr0.01_carry1',
                 'momentum_lr0.1_carry1', 'momentum_lr0.3_carry1',
                 'momentum_lr0.1_carry1_reset', 'momentum_lr0.1_carry1_k5',
                 'momentum_lr0.1_carry1_k2', 'momentum_lr0.1_carry1_k1'),
    'sparse50': ('paper', 'momentum_lr0.1_carry1'),
}
# The 50% best preset is the k 10 momentum recipe: no separate row there.
METHODS_AT = {'sparse50': tuple(m for m, _ in METHODS
                                if m != 'laperm_momentum_k10')}
MINUS = '\u2212'
NOT_RUN = 'not run'


class RunFiles(Protocol):
  """What these tables read: ``experiments.tables.Files``."""

  def run(self, name: str) -> dict: ...


def _pct(x: float) -> str:
  return f'{100 * x:.2f}'


def _signed(pt: float) -> str:
  return f'{pt:+.2f}'.replace('-', MINUS)


def _table(header: list[str], rows: list[list[str]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join('---' for _ in header) + '|']
  return '\n'.join(lines + ['| ' + ' | '.join(row) + ' |' for row in rows])


def _runs(files: RunFiles, folder: str, method: str) -> list[dict | None]:
  """The results of each seed; None for a run not made."""
  name = ('dense/adam' if method == 'adam' else f'{folder}/{method}')
  out = []
  for seed in SEEDS:
    try:
      out.append(files.run(f'{ROOT}/{name}_seed{seed}'))
    except FileNotFoundError:
      out.append(None)
  return out


def _per_seed(runs: list[dict | None], field: str) -> str:
  values = [r[field] for r in runs if r is not None]
  cells = [NOT_RUN if r is None else _pct(r[field]) for r in runs]
  return ' / '.join(cells) + (f' ({_pct(statistics.mean(values))})'
                              if values else '')


def _mean(runs: list[dict | None], field: str) -> float | None:
  values = [r[field] for r in runs if r is not None]
  return statistics.mean(values) if values else None


def connections(res: dict) -> str:
  """Mean connections created / removed per LaPerm sync or SET/RigL update.

  LaPerm: over the syncs that the run evaluated (one per epoch, recorded in
  its history); SET and RigL: over all their topology updates.
  """
  if 'topology_updates' in res:
    n = res['topology_updates']
    if not n:
      return MINUS
    return (f'{res["connections_created"] / n:,.0f} / '
            f'{res["connections_removed"] / n:,.0f}')
  syncs = [h for h in res['history'] if 'sync_created' in h]
  if not syncs:
    return MINUS
  return (f'{statistics.mean(h["sync_created"] for h in syncs):,.0f} / '
          f'{statistics.mean(h["sync_removed"] for h in syncs):,.0f}')


def _row(sparsity: str, label: str, runs: list[dict | None]) -> list[str]:
  if not any(runs):
    return [sparsity, label] + [NOT_RUN] * 5
  zeros = _mean(runs, 'initial_zero_fraction_reconnected')
  best = _mean(runs, 'best_test_accuracy')
  return [sparsity, label, f'{100 * zeros:.1f}%',
          _per_seed(runs, 'final_test_accuracy'), _pct(best),
          ' · '.join(NOT_RUN if r is None else connections(r) for r in runs),
          f'{_mean(runs, "wall_time_s"):.0f}']


def sparse_training(files: RunFiles) -> str:
  """Every method at both sparsities, three seeds, equal epochs and batches."""
  rows = []
  for folder, sparsity in SPARSITIES:
    rows += [_row(sparsity, label, _runs(files, folder, method))
             for method, label in METHODS
             if method in METHODS_AT.get(folder, (method,))]
  rows.append(_row('0%', 'dense Adam', _runs(files, '', 'adam')))
  return _table(['pruned', 'method', 'zeros at init',
                 'final test acc., seed 0 / 1 / 2 (mean)',
                 'best test acc. (mean)',
                 'created / removed per sync or update, seed 0 · 1 · 2',
                 'wall s / run'], rows)


def sparse_training_targets(files: RunFiles) -> str:
  """70% sparse LaPerm (best preset) per seed against the targets."""
  best = _runs(files, 'sparse70', 'laperm_best')
  others = {m: _runs(files, 'sparse70', m) for m in ('masked_adam', 'set',
                                                     'rigl')}
  dense = _runs(files, '', 'adam')
  rows = []
  for i, seed in enumerate(SEEDS):
    if any(runs[i] is None for runs in [best, dense, *others.values()]):
      rows.append([str(seed)] + [NOT_RUN] * 7)
      continue
    final = lambda runs, i=i: runs[i]['final_test_accuracy']
    vs_dense = 100 * (final(best) - final(dense))
    vs_masked = 100 * (final(best) - final(others['masked_adam']))
    rows.append([str(seed), _pct(final(best)), _signed(vs_dense),
                 'yes' if vs_dense >= -1.5 else 'no', _signed(vs_masked),
                 'yes' if vs_masked >= 0 else 'no',
                 _signed(100 * (final(best) - final(others['set']))),
                 _signed(100 * (final(best) - final(others['rigl'])))])
  return _table(['seed', 'LaPerm best, final', '− dense Adam (pt)',
                 'within 1.5 pt?', '− masked Adam (pt)', 'not below?',
                 '− SET (pt)', '− RigL (pt)'], rows)


def describe(cfg: dict[str, Any]) -> str:
  """The LaPerm options of a run, as the flags that set them."""
  text = (f'{cfg["inner"]} lr {cfg["lr"]:g}, k {cfg["k_steps"]}, carry '
          f'{cfg["carry_residual"]:g}')
  return text + (', reset inner state' if cfg['reset_inner_state'] else '')


def sparse_training_val(files: RunFiles) -> str:
  """The validation runs (seed 0, 20% of the training set held out)."""
  rows = []
  for folder, sparsity in SPARSITIES:
    for tag in VAL_TAGS[folder]:
      res = files.run(f'{ROOT}/val/{folder}__{tag}')
      rows.append([sparsity, f'`{tag}`', describe(res['config']),
                   _pct(res['final_test_accuracy']),
                   _pct(res['best_test_accuracy']), connections(res)])
  return _table(['pruned', 'candidate', 'options',
                 'validation acc., final', 'best',
                 'created / removed per sync'], rows)


TABLES = {'sparse_training': sparse_training,
          'sparse_training_targets': sparse_training_targets,
          'sparse_training_val': sparse_training_val}
