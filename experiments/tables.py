"""The tables of RESULTS.md, generated from the committed result files.

``python -m experiments.tables`` rewrites every table of
``experiments/RESULTS.md`` between its ``<!-- table: NAME -->`` and
``<!-- /table -->`` markers from the files under ``experiments/results/``;
``--check`` only compares and exits 1 naming each table that differs (the
test suite runs it). No number in a table is typed by hand: each comes from
a results.json / analysis JSON, a preset, or (the paper's column) from the
paper's published numbers below.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys

from experiments import presets
from experiments import sparse_tables
from experiments import vit_tables

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, 'results')
RESULTS_MD = os.path.join(HERE, 'RESULTS.md')

# Published top-1 accuracy (Qiu & Suda 2020, full MNIST), for comparison.
PAPER = {'f1': 85.46, 'f2': 78.14}
MINUS = '\u2212'


class Files:
  """Reads result files under one directory (cached)."""

  def __init__(self, root: str = RESULTS_DIR):
    self.root, self._cache = root, {}

  def json(self, *parts) -> dict:
    path = os.path.join(self.root, *parts)
    if path not in self._cache:
      with open(path, encoding='utf-8') as f:
        self._cache[path] = json.load(f)
    return self._cache[path]

  def run(self, name: str, optimizer: str | None = None) -> dict:
    """A run's results.json; ``optimizer`` picks the sub-run of a 'both'."""
    if optimizer is None:
      return self.json(name, 'results.json')
    return self.json(name, optimizer, 'results.json')


def pct(x: float) -> str:
  return f'{100 * x:.2f}'


def signed(pt: float, digits: int = 2) -> str:
  text = f'{pt:+.{digits}f}'
  return text.replace('-', MINUS)


def final_best(res: dict) -> str:
  return f'{pct(res["final_test_accuracy"])} ({pct(res["best_test_accuracy"])})'


def gap(a: dict, b: dict) -> float:
  return 100 * (a['final_test_accuracy'] - b['final_test_accuracy'])


def table(header: list[str], rows: list[list[str]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join('---' for _ in header) + '|']
  lines += ['|' + ''.join(f' {c} |' if str(c) else ' |' for c in row)
            for row in rows]
  return '\n'.join(lines)


DATA = {'mnist5k': 'mnist5k', 'fashion_mnist': 'Fashion-MNIST'}
MODEL = {'lenet300': 'LeNet-300-100', 'conv7': 'Conv7'}


# --- dense init -----------------------------------------------------------------
DENSE_RUNS = ['lenet300_fashion_seed1', 'lenet300_fashion_seed2',
              'lenet300_mnist5k_seed1', 'lenet300_mnist5k_seed2', 'default',
              'conv7_mnist5k_seed1', 'conv7_fashion_seed1',
              'conv7_fashion_4ep_seed1', 'lenet300_fashion_20ep_seed1']


def dense(files: Files) -> str:
  rows = []
  for name in DENSE_RUNS:
    lap, adam = files.run(name, 'laperm'), files.run(name, 'adam')
    cfg = lap['config']
    seed = str(cfg['seed']) + (' (default command)' if name == 'default'
                               else '')
    rows.append([MODEL[cfg['model']], DATA[lap['dataset']['name']],
                 f'{cfg["epochs"]:g}', cfg['k_steps'], seed, final_best(lap),
                 final_best(adam), signed(gap(lap, adam))])
  return table(['model', 'data', 'epochs', 'k', 'seed', 'LaPerm final (best)',
                'Adam final (best)', 'LaPerm − Adam'], rows)


# --- sparse init ----------------------------------------------------------------
def _dense_reference(lap: dict) -> str:
  cfg = lap['config']
  data = 'fashion' if lap['dataset']['name'] == 'fashion_mnist' else 'mnist5k'
  epochs = '_20ep' if cfg['epochs'] == 20 and data == 'fashion' else ''
  return f'lenet300_{data}{epochs}_seed{cfg["seed"]}'


def sparse(files: Files) -> str:
  groups = [
      (None, ['lenet300_fashion_sparse0.5_seed1',
              'lenet300_fashion_sparse0.5_seed2',
              'lenet300_fashion_sparse0.3_seed1',
              'lenet300_fashion_sparse0.3_seed2',
              'lenet300_mnist5k_sparse0.5_seed1',
              'lenet300_mnist5k_sparse0.3_seed1']),
      ("*paper's first-layer rule:*",
       ['lenet300_fashion_sparse0.5_l1floor_seed1',
        'lenet300_fashion_sparse0.3_l1floor_seed1',
        'lenet300_mnist5k_sparse0.5_l1floor_seed1',
        'lenet300_mnist5k_sparse0.3_l1floor_seed1']),
      ('20ep', ['lenet300_fashion_sparse0.5_20ep_seed1',
                'lenet300_fashion_sparse0.3_20ep_seed1'])]
  rows = []
  for title, names in groups:
    if title == '20ep':
      adam20 = files.run('lenet300_fashion_20ep_seed1', 'adam')
      title = (f'*{adam20["config"]["epochs"]:g} epochs (dense Adam '
               f'{adam20["config"]["epochs"]:g} epochs: final '
               f'{pct(adam20["final_test_accuracy"])}, best '
               f'{pct(adam20["best_test_accuracy"])}):*')
    if title:
      rows.append([title] + [''] * 6)
    for name in names:
      lap = files.run(name)
      cfg = lap['config']
      pruned = f'{100 * (1 - cfg["density"]):.0f}%'
      # Runs recorded before the flag existed used the paper's floor, 0.8.
      floor = cfg.get('first_layer_min_density', 0.8)
      if floor > 0:
        pruned += f' (first layer {100 * floor:.0f}%)'
      adam = files.run(_dense_reference(lap), 'adam')
      rows.append([DATA[lap['dataset']['name']], pruned,
                   f'{100 * lap["initial_zero_fraction_reconnected"]:.1f}%',
                   cfg['seed'], final_best(lap),
                   pct(adam['final_test_accuracy']), signed(gap(lap, adam))])
  return table(['data', 'pruned', 'zeros at init', 'seed',
                'LaPerm final (best)', 'dense Adam final', 'gap'], rows)


# --- weight-agnostic networks ---------------------------------------------------
def shared(files: Files) -> str:
  rows = []
  for name in ('f1_mnist5k', 'f1_fashion', 'f2_mnist5k', 'f2_fashion'):
    res = files.run(name)
    cfg = res['config']
    model = {'f1': 'F1 (784→10)', 'f2': 'F2 (784-128-64-10)'}[cfg['model']]
    if name.endswith('fashion'):
      model = model.split(' ')[0]
    values = (f'{{0, {cfg["shared_value"]:g}}}, '
              f'{100 * res["initial_zero_fraction_reconnected"]:.1f}% zeros')
    paper = (f'{PAPER[cfg["model"]]:.2f}' if res['dataset']['name'] ==
             'mnist5k' else '—')
    chance = 100 / 10  # ten balanced classes
    rows.append([model, DATA[res['dataset']['name']], values,
                 f'{cfg["total_steps"]:,}', cfg['k_steps'],
                 pct(res['initial_test_accuracy']), final_best(res),
                 f'{chance:g}', paper])
  return table(['model', 'data', 'values', 'steps', 'k', 'θ0 accuracy',
                'LaPerm final (best)', 'chance', 'paper (MNIST)'], rows)


# --- how to choose k ------------------------------------------------------------
def _sweep(files: Files, name: str) -> dict:
  return {row['k']: row for row in files.json(name, 'ksweep.json')['rows']}


def ksweep(files: Files) -> str:
  mnist = _sweep(files, 'ksweep_lenet300_mnist5k')
  fashion = _sweep(files, 'ksweep_lenet300_fashion')
  p_m = presets.PRESETS['cpu_lenet300_mnist5k']
  p_f = presets.PRESETS['cpu_lenet300_fashion']
  spe_m, spe_f = mnist['1ep']['k_steps'], fashion['1ep']['k_steps']

  def cell(sweep, k):
    return final_best(sweep[k]) if k in sweep else '—'

  labels = {'adam': 'Adam', '1ep': f'1 epoch ({spe_m} / {spe_f})',
            '5ep': f'5 epochs ({mnist["5ep"]["k_steps"]} / '
                   f'{fashion["5ep"]["k_steps"]})'}
  ints = sorted({int(k) for k in [*mnist, *fashion] if k.isdigit()})
  order = ['adam'] + [str(k) for k in ints] + ['1ep', '5ep']
  rows = [[labels.get(k, k), cell(mnist, k), cell(fashion, k)] for k in order]
  return table(['k (steps)', f'mnist5k, {p_m["epochs"]:g} epochs ({spe_m} '
                'steps/epoch): final (best)',
                f'Fashion-MNIST, {p_f["epochs"]:g} epochs ({spe_f} '
                'steps/epoch): final (best)'], rows)


def ksweep_f1(files: Files) -> str:
  sweep = files.json('ksweep_f1_mnist5k', 'ksweep.json')['rows']
  header = ['k'] + ['Adam (free values)' if r['k'] == 'adam' else r['k']
                    for r in sweep]
  return table(header, [['final (best)'] + [final_best(r) for r in sweep]])


# --- what a sync does -----------------------------------------------------------
def syncs(files: Files) -> str:
  rows = []
  for name in ('syncs_lenet300_fashion_k100', 'syncs_lenet300_mnist5k_sparse0.5',
               'syncs_f1_fashion'):
    s = files.json(name, 'syncs.json')
    cfg, records = s['config'], s['records']
    model = {'lenet300': 'LeNet', 'f1': 'F1'}[cfg['model']]
    data = {'mnist5k': 'mnist5k', 'fashion_mnist': 'Fashion'}[cfg['dataset']]
    init = {'default': 'dense',
            'sparse': f'{100 * (1 - cfg["density"]):.0f}% sparse',
            'shared': f'{{0, {cfg["shared_value"]:g}}}'}[cfg['init']]
    label = f'{model} {data}, {init}, k {cfg["k_steps"]}, {cfg["epochs"]:g} epochs'
    if s['total_created']:
      first, last = records[0], records[-1]
      connections = (f'{first["created"]:,} at the first sync → '
                     f'{last["created"]:,} at the last (of '
                     f'{last["nonzero"]:,} non-zero); '
                     f'{s["total_created"]:,} in total')
    else:
      connections = '—'
    rows.append([label, s['n_syncs'],
                 f'{pct(s["mean_acc_before"])} → {pct(s["mean_acc_after"])} '
                 f'({signed(s["mean_after_minus_before_pt"])} pt)',
                 f'{100 * s["fraction_syncs_after_better"]:.0f}%',
                 f'{100 * s["first_changed_fraction"]:.1f}% → '
                 f'{100 * s["last_changed_fraction"]:.1f}%', connections])
  return table(['run', 'syncs', 'mean acc. before → after',
                'syncs that helped', 'weights moved per sync (first → last)',
                'connections created = removed'], rows)


# --- rank transplant ------------------------------------------------------------
def transplant(files: Files) -> str:
  rows = []
  for name in ('transplant_lenet300_fashion', 'transplant_conv7_mnist5k'):
    t = files.json(name, 'transplant.json')
    cfg, acc = t['config'], t['accuracy']
    rho = t['mean_spearman_theta_T_vs_theta_0_per_layer']
    rho_text = (', '.join(f'{r:.2f}' for r in rho) if len(rho) <= 3 else
                f'{min(rho):.2f}–{max(rho):.3f} ({len(rho)} leaves)')
    rows.append([f'{MODEL[cfg["model"]]} / {DATA[cfg["dataset"]]} '
                 f'({cfg["epochs"]:g})', pct(acc['theta_T']),
                 pct(acc['transplant']), pct(acc['theta_0']),
                 f'{pct(acc["random_permutation_mean"])} ± '
                 f'{pct(t["random_permutation_std"])}', rho_text])
  return table(['model / data (Adam epochs)', 'θT (Adam)',
                'θ0 values in θT\'s ranks', 'θ0', 'random permutation of θ0',
                'Spearman(θT, θ0) per layer'], rows)


# --- weight profiles ------------------------------------------------------------
def profiles(files: Files) -> str:
  rows = []
  for name in ('profiles_lenet300_fashion', 'profiles_conv7_mnist5k'):
    p = files.json(name, 'profiles.json')
    cfg = p['config']
    gaps = list(p['mean_rms_gap_standardized_sorted'].values())
    cells = [f'{g:.3f}' for g in gaps]
    best = min(range(len(gaps)), key=gaps.__getitem__)
    cells[best] = f'**{cells[best]}**'
    layer = re.findall(r"\['([^']+)'\]", p['layer'])[0]
    model = {'lenet300': 'LeNet', 'conv7': 'Conv7'}[cfg['model']]
    rows.append([f'{model} `{layer}` on {DATA[cfg["dataset"]]} '
                 f'({cfg["epochs"]:g})', *cells,
                 f'{p["mean_std_ratio_trained_over_init"]:.2f}'])
  return table(['layer (Adam epochs)', 'gap to its own θ0',
                'to matched Gaussian', 'to matched uniform',
                'std(θT)/std(θ0)'], rows)


# --- the summary ---------------------------------------------------------------
def gpu_conv7_row() -> list[str]:
  """The paper-length Conv7 run on an H200, from benchmarks/results."""
  from benchmarks import gpu_report  # pylint: disable=import-outside-toplevel
  for directory in gpu_report.default_directories():
    eq = (gpu_report.load(directory).get('conv7_fashion') or {}).get(
        'at_equal_epochs')
    if eq:
      met = 'yes' if eq['laperm_minus_adam_pt'] >= -0.5 else 'no'
      return [f'Conv7 on Fashion-MNIST, the paper\'s {eq["epochs"]:g} epochs on '
              'a GPU (H200, *On a GPU*), LaPerm within 0.5 pt of Adam',
              f'{signed(eq["laperm_minus_adam_pt"])} pt ({pct(eq["laperm"])}% '
              f'vs {pct(eq["adam"])}%, one seed)', met]
  raise FileNotFoundError('no GPU Conv7 run under benchmarks/results')


def summary(files: Files) -> str:
  def g(name, opt='laperm', ref=None):
    lap = files.run(name, opt) if opt else files.run(name)
    adam = files.run(ref or name, 'adam')
    return signed(gap(lap, adam))

  best_adam20 = files.run('lenet300_fashion_20ep_seed1', 'adam')
  s50_20 = files.run('lenet300_fashion_sparse0.5_20ep_seed1')
  f1m, f1f = files.run('f1_mnist5k'), files.run('f1_fashion')
  f2m, f2f = files.run('f2_mnist5k'), files.run('f2_fashion')
  sp = lambda name, ref: g(name, None, ref)
  rows = [
      ['LeNet-300-100, LaPerm within 0.5 pt of Adam at equal epochs',
       f'Fashion 10 epochs {g("lenet300_fashion_seed1")} / '
       f'{g("lenet300_fashion_seed2")} pt (seeds 1 / 2), 20 epochs '
       f'{g("lenet300_fashion_20ep_seed1")} pt; mnist5k '
       f'{g("lenet300_mnist5k_seed1")} / {g("lenet300_mnist5k_seed2")} pt '
       '(seeds 1 / 2)', 'yes'],
      ['Conv7, LaPerm within 0.5 pt of Adam',
       f'mnist5k (15 epochs) {g("conv7_mnist5k_seed1")} pt; Fashion-MNIST 4 '
       f'epochs {g("conv7_fashion_4ep_seed1")} pt (2 epochs: '
       f'{g("conv7_fashion_seed1")} pt)', 'yes (at 4 epochs on Fashion)'],
      gpu_conv7_row(),
      ['Sparse 50% pruned LaPerm within 1.5 pt of dense Adam',
       f'mnist5k {sp("lenet300_mnist5k_sparse0.5_seed1", "lenet300_mnist5k_seed1")} pt; '
       f'Fashion 10 epochs {sp("lenet300_fashion_sparse0.5_seed1", "lenet300_fashion_seed1")}'
       f' / {sp("lenet300_fashion_sparse0.5_seed2", "lenet300_fashion_seed2")} pt, '
       f'20 epochs {sp("lenet300_fashion_sparse0.5_20ep_seed1", "lenet300_fashion_20ep_seed1")}'
       " pt (vs Adam's final; "
       f'{signed(100 * (s50_20["final_test_accuracy"] - best_adam20["best_test_accuracy"]))}'
       " vs Adam's best)",
       "mnist5k yes; Fashion only at 20 epochs against Adam's final"],
      ['Sparse 70% pruned LaPerm within 1.5 pt of dense Adam',
       f'mnist5k {sp("lenet300_mnist5k_sparse0.3_seed1", "lenet300_mnist5k_seed1")} pt; '
       f'Fashion {sp("lenet300_fashion_sparse0.3_seed1", "lenet300_fashion_seed1")} / '
       f'{sp("lenet300_fashion_sparse0.3_seed2", "lenet300_fashion_seed2")} pt '
       f'(20 epochs {sp("lenet300_fashion_sparse0.3_20ep_seed1", "lenet300_fashion_20ep_seed1")})',
       'no'],
      [f'F1 {{0, 0.08}} far above chance; paper {PAPER["f1"]:.2f}% (MNIST)',
       f'mnist5k {pct(f1m["final_test_accuracy"])}%, Fashion '
       f'{pct(f1f["final_test_accuracy"])}% (chance 10%)',
       f'above chance; {signed(100 * f1m["final_test_accuracy"] - PAPER["f1"], 1)}'
       ' pt from the paper on 15× less data'],
      [f'F2 {{0, 0.03}} far above chance; paper {PAPER["f2"]:.2f}% (MNIST)',
       f'mnist5k {pct(f2m["final_test_accuracy"])}%, Fashion '
       f'{pct(f2f["final_test_accuracy"])}%', 'above chance; far below the paper'],
  ]
  return table(['claim / target', 'result', 'met?'], rows)


TABLES = {'summary': summary, 'dense': dense, 'sparse': sparse,
          'shared': shared, 'ksweep': ksweep, 'ksweep_f1': ksweep_f1,
          'syncs': syncs, 'transplant': transplant, 'profiles': profiles}
# The Vision Transformer section: one line per table of experiments/vit_tables.py
# (called late: the two modules import each other).
TABLES.update({name: (lambda files, name=name: vit_tables.TABLES[name](files))
               for name in ('vit_seeds', 'vit_ksweep', 'vit_layouts',
                            'vit_sync_moves', 'vit_sync_accuracy')})
TABLES.update(sparse_tables.TABLES)  # sparse LaPerm vs sparse training

_BLOCK = re.compile(r'(<!-- table: (\w+) -->\n)(.*?)(\n<!-- /table -->)', re.DOTALL)


def render(text: str, files: Files) -> str:
  """``text`` with every marked table regenerated."""
  names = [m.group(2) for m in _BLOCK.finditer(text)]
  missing = sorted(set(TABLES) - set(names))
  if missing:
    raise ValueError(f'RESULTS.md lacks the markers of tables {missing}')
  return _BLOCK.sub(lambda m: m.group(1) + TABLES[m.group(2)](files) +
                    m.group(4), text)


def differences(text: str, files: Files) -> list[str]:
  """A unified diff per table whose text differs from its files."""
  out = []
  for m in _BLOCK.finditer(text):
    want = TABLES[m.group(2)](files)
    if m.group(3) != want:
      out.append(f'table {m.group(2)!r}:\n' + '\n'.join(difflib.unified_diff(
          m.group(3).splitlines(), want.splitlines(), 'RESULTS.md',
          'generated', lineterm='')))
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m experiments.tables',
                                   description=__doc__.splitlines()[0])
  parser.add_argument('--check', action='store_true',
                      help='compare only; exit 1 when a table differs')
  parser.add_argument('--results-md', default=RESULTS_MD)
  parser.add_argument('--results-dir', default=RESULTS_DIR)
  args = parser.parse_args(argv)
  with open(args.results_md, encoding='utf-8') as f:
    text = f.read()
  files = Files(args.results_dir)
  if args.check:
    diffs = differences(text, files)
    print('\n\n'.join(diffs) if diffs else 'every table matches its files')
    return 1 if diffs else 0
  new = render(text, files)
  with open(args.results_md, 'w', encoding='utf-8') as f:
    f.write(new)
  print(f'wrote {args.results_md}' + ('' if new != text else ' (unchanged)'))
  return 0


if __name__ == '__main__':
  sys.exit(main())
