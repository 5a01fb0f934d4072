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
    'per_output_unit': "the paper's: every kernel per output unit, q/k/v too "
                       '(fan-in, axis 0); out per output unit (axes 0, 1); '
                       'embedding by row',
    'default': 'the library defaults: q/k/v per head, (in, head_dim) slices, '
               'axes (0, 2); the rest as per_output_unit',
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


# The LaPerm configurations run on the test set: (label, folder prefix,
# the --layout their results.json must record).
LAPERM_RUNS = (
    ('q/k/v per output unit (paper)', 'vit_fashion_seed', 'per_output_unit'),
    ('default: q/k/v per head', 'vit_fashion_qkv_per_head_seed', 'default'),
    ('tuned: q/k/v across heads, carry 1', 'vit_fashion_tuned_seed',
     'qkv_across_heads'))


def _laperm_run(files: tables_lib.Files, prefix: str, seed: int,
                layout: str) -> dict:
  """A LaPerm run's results; raises if it ran another layout."""
  run = (files.run(f'{prefix}{seed}', 'laperm')
         if prefix == 'vit_fashion_seed' else files.run(f'{prefix}{seed}'))
  if run['config']['layout'] != layout:
    raise ValueError(f'{prefix}{seed} ran layout '
                     f"{run['config']['layout']!r}, labelled {layout!r}")
  return run


def seeds(files: tables_lib.Files) -> str:
  """LaPerm configurations vs Adam per seed, on the test set."""
  rows = []
  for seed in SEEDS:
    adam = files.run(f'vit_fashion_seed{seed}', 'adam')
    runs = [_laperm_run(files, prefix, seed, layout)
            for _, prefix, layout in LAPERM_RUNS]
    cells = []
    for run in runs:
      cells += [_acc(run), tables_lib.signed(tables_lib.gap(run, adam))]
    rows.append([seed, _acc(adam), *cells,
                 all(run['exact_permutation'] for run in runs)])
  header = ['seed', 'Adam final (best)']
  for label, _, _ in LAPERM_RUNS:
    header += [f'LaPerm, {label}: final (best)', '− Adam']
  return tables_lib.table(header + ['exact permutations'], rows)


def ksweep(files: tables_lib.Files) -> str:
  """The k sweep on the validation split, without and with residual carry."""
  rows = []
  for folder, carry in (('vit_fashion_ksweep_val', '0 (paper)'),
                        ('vit_fashion_ksweep_carry0.5_val', '0.5'),
                        ('vit_fashion_ksweep_carry1.0_val', '1')):
    for r in files.json(folder, 'ksweep.json')['rows']:
      if r['k'] == 'adam':
        if folder == 'vit_fashion_ksweep_val':
          rows.append(['Adam', '—', '—', _acc(r), '—'])
        continue
      rows.append([r['k'], r['k_steps'], carry, _acc(r),
                   r['exact_permutation']])
  return tables_lib.table(['k', 'k (steps)', 'residual carry',
                           'validation final (best)', 'exact permutation'],
                          rows)


LAYOUT_RUNS = (('vit_fashion_layouts_val', 'k 1 epoch, carry 0 (paper)'),
               ('vit_fashion_layouts_carry0.5_val', 'k 1 epoch, carry 0.5'),
               ('vit_fashion_layouts_carry1.0_val', 'k 1 epoch, carry 1'),
               ('vit_fashion_layouts_carry1.0_k20_val', 'k 20, carry 1'))


# The layout every other one is compared against: each alternative changes
# one kind of leaf of it (experiments.vit.LAYOUTS).
BASE = 'per_output_unit'


def _layout_rows(files: tables_lib.Files, folder: str) -> dict:
  """{layout: row} of one layouts run; without carry, the base layout's row
  is the k sweep's run at the same k (the same configuration)."""
  out = files.json(folder, 'layouts.json')
  rows = {r['layout']: r for r in out['rows']}
  if BASE not in rows:
    k = out['config']['k']
    swept = next(r for r in files.json('vit_fashion_ksweep_val',
                                       'ksweep.json')['rows'] if r['k'] == k)
    rows[BASE] = dict(final_accuracy=swept['final_test_accuracy'],
                      exact_permutation=swept['exact_permutation'])
  return rows


def layouts(files: tables_lib.Files) -> str:
  """Validation final accuracy per weight-vector layout (and vs the base)."""
  runs = [_layout_rows(files, folder) for folder, _ in LAYOUT_RUNS]

  def cell(rows, layout):
    if layout not in rows:
      return '—'
    final, base = (rows[layout]['final_accuracy'],
                   rows[BASE]['final_accuracy'])
    return (f'{tables_lib.pct(final)} '
            f'({tables_lib.signed(100 * (final - base))})')
  table_rows = []
  for layout in [BASE] + [name for name in vit.LAYOUTS if name != BASE]:
    exact = all(r[layout]['exact_permutation'] for r in runs if layout in r)
    table_rows.append([f'`{layout}`', LAYOUT_LABEL[layout],
                       *[cell(r, layout) for r in runs], exact])
  return tables_lib.table(
      ['layout', 'weight vectors'] + [label for _, label in LAYOUT_RUNS] +
      ['exact permutations'], table_rows)


TRACKED = {'per_output_unit': ('vit_fashion_seed0', 'laperm'),
           'default': ('vit_fashion_qkv_per_head_seed0', None),
           'tuned': ('vit_fashion_tuned_seed0', None)}


def sync_moves_by_kind(files: tables_lib.Files) -> str:
  """Fraction of each kind of layer's weights that each sync moves (seed 0)."""
  rows = []
  for layout, (name, optimizer) in TRACKED.items():
    records = files.run(name, optimizer)['sync_records']
    fractions = [sync_moves.fraction_by_kind(r['moved_by_leaf'],
                                             vit.layer_kind) for r in records]
    sizes: dict[str, int] = {}
    for leaf, (_, size) in records[0]['moved_by_leaf'].items():
      kind = vit.layer_kind(leaf)
      sizes[kind] = sizes.get(kind, 0) + size
    rows += [[f'`{layout}`', KIND_LABEL[kind], f'{sizes[kind]:,}',
              ' → '.join(f'{100 * f[kind]:.1f}%' for f in fractions)]
             for kind in KINDS]
  steps = ', '.join(str(r['step']) for r in records)
  return tables_lib.table(['layout', 'layer kind', 'weights',
                           f'moved at the syncs (steps {steps})'], rows)


def sync_accuracy(files: tables_lib.Files) -> str:
  """Test accuracy just before and just after each sync (seed 0)."""
  rows = []
  for layout, (name, optimizer) in TRACKED.items():
    rows += [[f'`{layout}`', r['step'], tables_lib.pct(r['acc_before']),
              tables_lib.pct(r['acc_after']),
              tables_lib.signed(100 * (r['acc_after'] - r['acc_before'])),
              f'{100 * r["changed_fraction"]:.1f}%']
             for r in files.run(name, optimizer)['sync_records']]
  return tables_lib.table(['layout', 'sync at step', 'test accuracy before (%)',
                           'after (%)', 'after − before (pt)',
                           'weights moved'], rows)


TABLES = {'vit_seeds': seeds, 'vit_ksweep': ksweep, 'vit_layouts': layouts,
          'vit_sync_moves': sync_moves_by_kind,
          'vit_sync_accuracy': sync_accuracy}
