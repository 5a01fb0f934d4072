"""RESULTS.md tables of the Vision Transformer section, from its result files.

Registered in ``experiments.tables.TABLES``; every table reads only files
under ``experiments/results/vit_fashion_*``.
"""

from __future__ import annotations

from experiments import sync_moves
from experiments import tables as tables_lib
from experiments import vit

SEEDS = (0, 1, 2)
KINDS = ('qkv', 'attention_out', 'mlp', 'patch_embed', 'pos_embed', 'head')
KIND_LABEL = {'qkv': 'q/k/v kernels', 'attention_out': 'attention output',
              'mlp': 'MLP', 'patch_embed': 'patch embedding',
              'pos_embed': 'position embedding', 'head': 'classifier head'}
LAYOUT_LABEL = {
    'default': 'library defaults: q/k/v per output unit (fan-in, axis 0); '
               'out per output unit (axes 0, 1); embedding by row',
    'qkv_per_head': 'q/k/v per head: (in, head_dim) slices, axes (0, 2)',
    'qkv_across_heads': 'q/k/v per head_dim unit across heads, axes (0, 1)',
    'out_per_head': 'attention out per head and output unit, axis 1',
    'out_by_row': 'attention out by row (fan-out), axis 2',
    'pos_by_column': 'position embedding by column (one feature across '
                     'positions), axis 0',
    'patch_by_row': 'patch embedding by row (one pixel across features), '
                    'axis 1',
}


def _acc(res: dict) -> str:
  return tables_lib.final_best(res)


def seeds(files: tables_lib.Files) -> str:
  """LaPerm vs Adam per seed on the test set."""
  rows = []
  for seed in SEEDS:
    name = f'vit_fashion_seed{seed}'
    lap, adam = files.run(name, 'laperm'), files.run(name, 'adam')
    cfg = lap['config']
    rows.append([seed, f'{cfg["epochs"]:g}', cfg['k_steps'],
                 f'{cfg["carry_residual"]:g}', _acc(lap), _acc(adam),
                 tables_lib.signed(tables_lib.gap(lap, adam)),
                 lap['exact_permutation'],
                 f'`python -m experiments.train --preset cpu_vit_fashion '
                 f'--seed {seed} --no-progress --out experiments/results/'
                 f'{name}`'])
  return tables_lib.table(
      ['seed', 'epochs', 'k', 'residual carry', 'LaPerm final (best)',
       'Adam final (best)', 'LaPerm − Adam', 'exact permutation', 'command'],
      rows)


def ksweep(files: tables_lib.Files) -> str:
  """The k sweep on the validation split."""
  sweep = files.json('vit_fashion_ksweep_val', 'ksweep.json')['rows']
  rows = [['Adam' if r['k'] == 'adam' else r['k'],
           '—' if r['k'] == 'adam' else r['k_steps'], _acc(r),
           r['exact_permutation'] if r['k'] != 'adam' else '—']
          for r in sweep]
  return tables_lib.table(['k', 'k (steps)', 'validation final (best)',
                           'exact permutation'], rows)


def layouts(files: tables_lib.Files) -> str:
  """Weight-vector layouts on the validation split.

  The default layout's row is the k sweep's run at the preset's k: the same
  configuration (validation split, seed, k), so it is not run twice.
  """
  out = files.json('vit_fashion_layouts_val', 'layouts.json')
  k = out['config']['k']
  swept = next(r for r in files.json('vit_fashion_ksweep_val',
                                     'ksweep.json')['rows'] if r['k'] == k)
  default = dict(layout='default', final_accuracy=swept['final_test_accuracy'],
                 best_accuracy=swept['best_test_accuracy'],
                 exact_permutation=swept['exact_permutation'])
  rows = [[f'`{r["layout"]}`', LAYOUT_LABEL[r['layout']],
           f'{tables_lib.pct(r["final_accuracy"])} '
           f'({tables_lib.pct(r["best_accuracy"])})',
           tables_lib.signed(100 * (r['final_accuracy'] -
                                    default['final_accuracy'])),
           r['exact_permutation']] for r in [default] + out['rows']]
  return tables_lib.table(['layout', 'weight vectors', 'validation final '
                           '(best)', 'vs default', 'exact permutation'], rows)


def _tracked() -> tuple[str, str]:
  return 'vit_fashion_seed0', 'laperm'


def sync_moves_by_kind(files: tables_lib.Files) -> str:
  """Fraction of each kind of layer's weights that a sync moves."""
  records = files.run(*_tracked())['sync_records']
  fractions = [sync_moves.fraction_by_kind(r['moved_by_leaf'], vit.layer_kind)
               for r in records]
  sizes: dict[str, int] = {}
  for name, (_, size) in records[0]['moved_by_leaf'].items():
    kind = vit.layer_kind(name)
    sizes[kind] = sizes.get(kind, 0) + size
  mean = lambda kind: sum(f[kind] for f in fractions) / len(fractions)
  rows = [[KIND_LABEL[kind], f'{sizes[kind]:,}'] +
          [f'{100 * f[kind]:.1f}%' for f in fractions] +
          [f'{100 * mean(kind):.1f}%'] for kind in KINDS]
  return tables_lib.table(
      ['layer kind', 'weights'] + [f'moved at sync {r["step"]}'
                                   for r in records] + ['mean'], rows)


def sync_accuracy(files: tables_lib.Files) -> str:
  """Test accuracy just before and just after each sync."""
  res = files.run(*_tracked())
  rows = [[r['step'], tables_lib.pct(r['acc_before']),
           tables_lib.pct(r['acc_after']),
           tables_lib.signed(100 * (r['acc_after'] - r['acc_before'])),
           f'{100 * r["changed_fraction"]:.1f}%']
          for r in res['sync_records']]
  return tables_lib.table(['sync at step', 'test accuracy before (%)',
                           'after (%)', 'after − before (pt)',
                           'weights moved'], rows)


TABLES = {'vit_seeds': seeds, 'vit_ksweep': ksweep, 'vit_layouts': layouts,
          'vit_sync_moves': sync_moves_by_kind,
          'vit_sync_accuracy': sync_accuracy}
