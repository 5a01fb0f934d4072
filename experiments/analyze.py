"""Analyses: ``python -m experiments.analyze {profiles,syncs,ksweep,transplant}``.

Every analysis takes the same run flags as ``experiments.train`` (model,
dataset, epochs, preset ...) plus ``--out DIR`` and writes PNG plots, a JSON
file and a markdown table there.

* ``profiles``  -- trains Adam; overlays the sorted weight vectors of one layer
  at theta_T beside sorted theta_0 and sorted i.i.d. samples of matched mean
  and variance (Gaussian and uniform): the control a NeurIPS reviewer asked
  for. The table gives, per reference, the mean over vectors of the RMS gap
  between the sorted, standardised trained vector and the sorted, standardised
  reference, i.e. whether the trained profile is closer to its own theta_0
  than a generic i.i.d. sample of the same variance is.
* ``syncs``     -- trains LaPerm evaluating just before and just after every
  sync; per sync the fraction of reconnected weights that changed value
  (position) and, for sparse runs, connections created (0 -> w) and removed.
* ``ksweep``    -- LaPerm for several k (``--ks 1,5,20,100,1ep,5ep``) and the
  Adam baseline on the same pipeline.
* ``transplant``-- the rank-transplant test: train Adam to theta_T, give
  theta_0's values the rank order of theta_T within every weight vector
  (``reconnect(theta_T, sorted_pool(theta_0))``), evaluate; controls: theta_T,
  theta_0, and theta_0 randomly permuted within each vector (several seeds).
  Leaves outside the reconnection mask (biases unless the model reconnects
  them, batch norm) keep their trained values in every variant.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

from experiments import cli
from experiments import plots
from experiments import training
import laperm_jax


def flat_masked(tree, mask):
  return [(jax.tree_util.keystr(path), np.asarray(leaf)) for (path, leaf), f in
          zip(jax.tree_util.tree_flatten_with_path(tree)[0],
              jax.tree.leaves(mask)) if f]


def markdown_table(header, rows) -> str:
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join('---' for _ in header) + '|']
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


def write_md(path, title, body) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    f.write(f'# {title}\n\n{body}')


def standardized_sorted(rows: np.ndarray) -> np.ndarray:
  rows = np.sort(rows, axis=0)
  std = rows.std(axis=0, keepdims=True)
  return (rows - rows.mean(axis=0, keepdims=True)) / np.where(std > 0, std, 1)


# --- profiles ---------------------------------------------------------------
def run_profiles(args, dataset) -> dict:
  cfg = cli.config_from_args(args, optimizer='adam')
  result = training.run(cfg, progress=not args.no_progress,
                        pipeline=cli.make_pipeline(cfg, dataset))
  layers0 = dict(flat_masked(result.params0, result.mask))
  layers_t = dict(flat_masked(result.params_final, result.mask))
  matches = [n for n in layers0 if (args.layer is None or args.layer in n)
             and layers0[n].ndim >= 2]  # kernels only: a bias is one vector.
  if not matches:
    cli.fail(f'no reconnected layer matches {args.layer!r}; have '
             f'{", ".join(layers0)}')
  name = matches[0]
  theta0 = training.vector_rows(layers0[name])
  theta_t = training.vector_rows(layers_t[name])
  rng = np.random.default_rng(args.seed)
  mean, std = theta_t.mean(axis=0), theta_t.std(axis=0)
  gauss = rng.normal(mean, std, size=theta_t.shape)
  half = np.sqrt(3.0) * std
  unif = rng.uniform(mean - half, mean + half, size=theta_t.shape)
  panels = {
      'Adam theta_T (trained)': np.sort(theta_t, axis=0),
      'theta_0 (init)': np.sort(theta0, axis=0),
      'i.i.d. Gaussian, matched mean/var': np.sort(gauss, axis=0),
      'i.i.d. uniform, matched mean/var': np.sort(unif, axis=0),
  }
  plots.profiles(panels, os.path.join(args.out, 'profiles.png'),
                 f'{args.model} {name}: sorted weight vectors')
  z_t = standardized_sorted(theta_t)
  gaps = {}
  for label, ref in (('theta_0 of the same vectors', theta0),
                     ('i.i.d. Gaussian, matched', gauss),
                     ('i.i.d. uniform, matched', unif)):
    gaps[label] = float(np.mean(np.sqrt(np.mean(
        (z_t - standardized_sorted(ref)) ** 2, axis=0))))
  std_ratio = float(np.mean(std / theta0.std(axis=0)))
  out = dict(layer=name, vector_length=theta_t.shape[0],
             n_vectors=theta_t.shape[1],
             mean_rms_gap_standardized_sorted=gaps,
             mean_std_ratio_trained_over_init=std_ratio,
             adam_final_test_accuracy=result.results['final_test_accuracy'],
             config=result.results['config'])
  rows = [[k, f'{v:.4f}'] for k, v in gaps.items()]
  write_md(os.path.join(args.out, 'profiles.md'),
           f'Weight profiles: {args.model} on {args.dataset}, layer {name}',
           markdown_table(['reference (standardised, sorted)',
                           'mean RMS gap to trained vectors'], rows) +
           f'\nstd(theta_T) / std(theta_0), mean over vectors: '
           f'{std_ratio:.3f}\n')
  return out


# --- syncs --------------------------------------------------------------------
def run_syncs(args, dataset) -> dict:
  cfg = cli.config_from_args(args, optimizer='laperm', track_syncs=True)
  result = training.run(cfg, progress=not args.no_progress,
                        pipeline=cli.make_pipeline(cfg, dataset))
  records = result.sync_records
  plots.syncs(records, os.path.join(args.out, 'syncs.png'),
              f'{args.model} on {args.dataset}, k={cfg.k}, init={cfg.init}')
  before = np.array([r['acc_before'] for r in records])
  after = np.array([r['acc_after'] for r in records])
  out = dict(
      n_syncs=len(records),
      mean_acc_before=float(before.mean()), mean_acc_after=float(after.mean()),
      mean_after_minus_before_pt=float(100 * (after - before).mean()),
      fraction_syncs_after_better=float(np.mean(after > before)),
      first_changed_fraction=records[0]['changed_fraction'],
      last_changed_fraction=records[-1]['changed_fraction'],
      total_created=int(sum(r['created'] for r in records)),
      total_removed=int(sum(r['removed'] for r in records)),
      final_test_accuracy=result.results['final_test_accuracy'],
      records=records, config=result.results['config'])
  show = records if len(records) <= 12 else (
      records[:4] + records[len(records) // 2 - 2:len(records) // 2 + 2] +
      records[-4:])
  rows = [[r['step'], cli.pct(r['acc_before']), cli.pct(r['acc_after']),
           f'{100 * r["changed_fraction"]:.2f}', r['created'], r['removed']]
          for r in show]
  write_md(os.path.join(args.out, 'syncs.md'),
           f'Syncs: {args.model} on {args.dataset}, init={cfg.init}',
           markdown_table(['step', 'acc before (%)', 'acc after (%)',
                           'weights moved (%)', 'created', 'removed'], rows) +
           f'\nmean after - before: {out["mean_after_minus_before_pt"]:+.2f} '
           f'pt over {len(records)} syncs; after > before in '
           f'{100 * out["fraction_syncs_after_better"]:.0f}% of syncs.\n')
  return out


# --- k sweep ------------------------------------------------------------------
def run_ksweep(args, dataset) -> dict:
  rows = []
  for k in ['adam'] + args.ks.split(','):
    opt = 'adam' if k == 'adam' else 'laperm'
    cfg = cli.config_from_args(args, optimizer=opt,
                               k=None if k == 'adam' else k)
    pipeline = cli.make_pipeline(cfg, dataset)
    result = training.run(cfg, progress=not args.no_progress,
                          pipeline=pipeline).results
    rows.append(dict(optimizer=opt, k=k, k_steps=result['config']['k_steps'],
                     final_test_accuracy=result['final_test_accuracy'],
                     best_test_accuracy=result['best_test_accuracy'],
                     train_time_s=result['train_time_s'],
                     exact_permutation=result['exact_permutation']))
    print(f'k={k}: final {cli.pct(rows[-1]["final_test_accuracy"])}%',
          flush=True)
  plots.k_sweep(rows, os.path.join(args.out, 'ksweep.png'),
                f'{args.model} on {args.dataset}, {args.epochs:g} epochs')
  table = [[r['k'], r['k_steps'], cli.pct(r['final_test_accuracy']),
            cli.pct(r['best_test_accuracy']), f'{r["train_time_s"]:.0f}']
           for r in rows]
  write_md(os.path.join(args.out, 'ksweep.md'),
           f'k sweep: {args.model} on {args.dataset}',
           markdown_table(['k', 'k (steps)', 'final (%)', 'best post-sync (%)',
                           'train time (s)'], table))
  return dict(rows=rows)


# --- rank transplant ------------------------------------------------------------
def run_transplant(args, dataset) -> dict:
  cfg = cli.config_from_args(args, optimizer='adam')
  result = training.run(cfg, progress=not args.no_progress,
                        pipeline=cli.make_pipeline(cfg, dataset))
  pool = laperm_jax.sorted_pool(result.params0, mask=result.mask)
  theta_t, theta0 = result.params_final, result.params0
  transplanted = laperm_jax.reconnect(theta_t, pool)
  # theta_0's own layout, with the trained biases (only masked leaves differ).
  init_layout = jax.tree.map(lambda t, z, f: z if f else t, theta_t, theta0,
                             result.mask)
  evaluate = lambda p: result.evaluate(p, result.batch_stats)[0]
  accs = dict(theta_T=evaluate(theta_t), transplant=evaluate(transplanted),
              theta_0=evaluate(init_layout))
  random_accs = []
  for r in range(args.random_perms):
    noise = jax.tree.map(
        lambda x, key: jax.random.uniform(key, np.shape(x)), theta_t,
        jax.tree.unflatten(jax.tree.structure(theta_t), list(jax.random.split(
            jax.random.key(1000 + r), len(jax.tree.leaves(theta_t))))))
    random_accs.append(evaluate(laperm_jax.reconnect(noise, pool)))
  accs['random_permutation_mean'] = float(np.mean(random_accs))
  # Rank agreement: Spearman correlation of theta_T and theta_0 per vector.
  rank_corr = []
  for (_, a), (_, b) in zip(flat_masked(theta_t, result.mask),
                            flat_masked(theta0, result.mask)):
    ra = np.argsort(np.argsort(training.vector_rows(a), axis=0), axis=0)
    rb = np.argsort(np.argsort(training.vector_rows(b), axis=0), axis=0)
    rank_corr.append(float(np.mean([np.corrcoef(ra[:, j], rb[:, j])[0, 1]
                                    for j in range(ra.shape[1])])))
  out = dict(accuracy=accs, random_permutation_accuracies=random_accs,
             random_permutation_std=float(np.std(random_accs)),
             chance=1.0 / dataset.num_classes,
             mean_spearman_theta_T_vs_theta_0_per_layer=rank_corr,
             config=result.results['config'])
  plots.bars({'Adam theta_T': accs['theta_T'],
              'theta_0 values,\ntheta_T ranks': accs['transplant'],
              'theta_0': accs['theta_0'],
              'theta_0 randomly\npermuted': accs['random_permutation_mean']},
             os.path.join(args.out, 'transplant.png'),
             f'rank transplant: {args.model} on {args.dataset}')
  rows = [['Adam theta_T', cli.pct(accs['theta_T'])],
          ['theta_0 values in theta_T rank order (transplant)',
           cli.pct(accs['transplant'])],
          ['theta_0 (untrained layout, trained biases)',
           cli.pct(accs['theta_0'])],
          [f'theta_0 randomly permuted per vector ({args.random_perms} seeds)',
           f'{cli.pct(accs["random_permutation_mean"])} +- '
           f'{100 * out["random_permutation_std"]:.2f}']]
  write_md(os.path.join(args.out, 'transplant.md'),
           f'Rank transplant: {args.model} on {args.dataset}',
           markdown_table(['weights', 'test accuracy (%)'], rows) +
           '\nmean per-vector Spearman(theta_T, theta_0) per layer: ' +
           ', '.join(f'{c:.3f}' for c in rank_corr) + '\n')
  return out


ANALYSES = {'profiles': run_profiles, 'syncs': run_syncs,
            'ksweep': run_ksweep, 'transplant': run_transplant}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m experiments.analyze',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('analysis', choices=tuple(ANALYSES))
  cli.add_run_args(parser)
  parser.add_argument('--out', default=None,
                      help='output directory (default runs/<analysis>)')
  parser.add_argument('--layer', default=None,
                      help='profiles: substring of the layer path '
                      '(default: the first kernel)')
  parser.add_argument('--ks', default='1,5,20,100,1ep,5ep',
                      help='ksweep: comma-separated k values')
  parser.add_argument('--random-perms', type=int, default=5,
                      help='transplant: random-permutation control seeds')
  return parser


def main(argv=None) -> int:
  parser = build_parser()
  args = cli.parse(parser, argv)
  args.out = args.out or os.path.join('runs', args.analysis)
  os.makedirs(args.out, exist_ok=True)
  cfg = cli.config_from_args(args)
  dataset = cli.load_dataset(cfg)
  out = ANALYSES[args.analysis](args, dataset)
  cli.write_json(os.path.join(args.out, f'{args.analysis}.json'), out)
  with open(os.path.join(args.out, f'{args.analysis}.md'),
            encoding='utf-8') as f:
    print(f.read())
  return 0


if __name__ == '__main__':
  sys.exit(main())
