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
  """Weight-vector layouts on the validation split."""
  out = files.json('vit_fashion_layouts_val', 'layouts.json')
  default = next(r for r in out['rows'] if r['layout'] == 'default')
  rows = [[f'`{r["layout"]}`', LAYOUT_LABEL[r['layout']],
           f'{tables_lib.pct(r["final_accuracy"])} '
           f'({tables_lib.pct(r["best_accuracy"])})',
           tables_lib.signed(100 * (r['final_accuracy'] -
                                    default['final_accuracy'])),
           r['exact_permutation']] for r in out['rows']]
  return tables_lib.table(['layout', 'weight vectors', 'validation final '
                           '(best)', 'vs default', 'exact permutation'], rows)


def sync_moves_by_kind(files: tables_lib.Files) -> str:
  """Fraction of each kind of layer's weights that a sync moves."""
  records = files.json('vit_fashion_syncs_val', 'syncs.json')['records']
  fractions = [sync_moves.fraction_by_kind(r['moved_by_leaf'], vit.layer_kind)
               for r in records]
  sizes: dict[str, int] = {}
  for name, (_, size) in records[0]['moved_by_leaf'].items():
    kind = vit.layer_kind(name)
    sizes[kind] = sizes.get(kind, 0) + size
  mean = lambda kind: sum(f[kind] for f in fractions) / len(fractions)
  rows = [[KIND_LABEL[kind], f'{sizes[kind]:,}',
           f'{100 * fractions[0][kind]:.1f}%', f'{100 * mean(kind):.1f}%',
           f'{100 * fractions[-1][kind]:.1f}%'] for kind in KINDS]
  return tables_lib.table(['layer kind', 'weights', 'moved at the first sync',
                           'mean over syncs', 'at the last sync'], rows)


def sync_accuracy(files: tables_lib.Files) -> str:
  """Validation accuracy just before and just after the syncs."""
  s = files.json('vit_fashion_syncs_val', 'syncs.json')
  records = s['records']
  drops = [100 * (r['acc_after'] - r['acc_before']) for r in records]
  return tables_lib.table(
      ['syncs', 'k', 'mean accuracy before → after',
       'syncs that helped', 'largest drop', 'final'],
      [[s['n_syncs'], s['config']['k_steps'],
        f'{tables_lib.pct(s["mean_acc_before"])} → '
        f'{tables_lib.pct(s["mean_acc_after"])} '
        f'({tables_lib.signed(s["mean_after_minus_before_pt"])} pt)',
        f'{100 * s["fraction_syncs_after_better"]:.0f}%',
        f'{tables_lib.signed(min(drops))} pt',
        tables_lib.pct(s['final_test_accuracy'])]])


TABLES = {'vit_seeds': seeds, 'vit_ksweep': ksweep, 'vit_layouts': layouts,
          'vit_sync_moves': sync_moves_by_kind,
          'vit_sync_accuracy': sync_accuracy}
