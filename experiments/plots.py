"""PNG plots of runs and analyses (matplotlib, Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position


def save(fig: plt.Figure, path, title: str = '', axes: plt.Axes | None = None
         ) -> None:
  """Titles ``fig`` (or its single ``axes``), writes it to ``path`` and
  closes it: the ending of every plot here."""
  if title:
    if axes is not None:
      axes.set_title(title)
    else:
      fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def curves(runs: dict, path, title: str = '') -> None:
  """Test accuracy and train loss against epochs for labelled results dicts.

  Post-sync evaluations are drawn as filled markers, others as hollow ones.
  """
  fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
  for label, results in runs.items():
    hist = results['history']
    epochs = np.array([h['epoch'] for h in hist])
    acc = np.array([h['test_accuracy'] for h in hist])
    line, = ax_acc.plot(epochs, 100 * acc, label=label)
    synced = np.array([h['after_sync'] for h in hist])
    ax_acc.plot(epochs[synced], 100 * acc[synced], 'o', ms=3,
                color=line.get_color())
    ax_acc.plot(epochs[~synced], 100 * acc[~synced], 'o', ms=3, mfc='none',
                color=line.get_color())
    losses = [(h['epoch'], h['train_loss']) for h in hist
              if h['train_loss'] is not None]
    if losses:
      ax_loss.plot(*zip(*losses), label=label, color=line.get_color())
  ax_acc.set(xlabel='epoch', ylabel='test accuracy (%)',
             title='test accuracy (filled: right after a sync)')
  ax_loss.set(xlabel='epoch', ylabel='train cross-entropy', yscale='log',
              title='train loss (mean since previous evaluation)')
  for ax in (ax_acc, ax_loss):
    ax.grid(alpha=0.3)
    ax.legend()
  save(fig, path, title)


def syncs(records: list, path, title: str = '') -> None:
  """Accuracy just before / after each sync; weights moved; connections."""
  steps = [r['step'] for r in records]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  axes[0].plot(steps, [100 * r['acc_before'] for r in records], '.-',
               label='just before sync')
  axes[0].plot(steps, [100 * r['acc_after'] for r in records], '.-',
               label='just after sync')
  axes[0].set(xlabel='step', ylabel='test accuracy (%)')
  axes[1].plot(steps, [100 * r['changed_fraction'] for r in records], '.-')
  axes[1].set(xlabel='step', ylabel='% of weights changed since last sync',
              yscale='log')
  axes[2].plot(steps, [r['created'] for r in records], '.-',
               label='created (0 -> w)')
  axes[2].plot(steps, [r['removed'] for r in records], '.-',
               label='removed (w -> 0)')
  axes[2].set(xlabel='step', ylabel='connections per sync')
  for ax in axes:
    ax.grid(alpha=0.3)
  axes[0].legend()
  axes[2].legend()
  save(fig, path, title)


def profiles(panels: dict, path, title: str = '', max_lines: int = 60) -> None:
  """Sorted weight vectors overlaid, one panel per label.

  ``panels`` maps a label to a (vector length, n vectors) array whose columns
  are already sorted.
  """
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8),
                           sharey=True)
  axes = np.atleast_1d(axes)
  for ax, (label, rows) in zip(axes, panels.items()):
    n = rows.shape[0]
    x = np.arange(n) / max(n - 1, 1)
    for j in range(min(rows.shape[1], max_lines)):
      ax.plot(x, rows[:, j], lw=0.6, alpha=0.5)
    ax.set(title=label, xlabel='rank / (n - 1)')
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('weight value')
  save(fig, path, title)


def k_sweep(rows: list, path, title: str = '') -> None:
  """Final and best accuracy against k (log scale), Adam as a line."""
  fig, ax = plt.subplots(figsize=(6, 4))
  lap = [r for r in rows if r['optimizer'] == 'laperm']
  ks = [r['k_steps'] for r in lap]
  ax.plot(ks, [100 * r['final_test_accuracy'] for r in lap], 'o-',
          label='LaPerm final')
  ax.plot(ks, [100 * r['best_test_accuracy'] for r in lap], 's--',
          label='LaPerm best (post-sync)')
  for r in rows:
    if r['optimizer'] == 'adam':
      ax.axhline(100 * r['final_test_accuracy'], color='k', ls=':',
                 label='Adam final')
  ax.set(xscale='log', xlabel='k (steps between syncs)',
         ylabel='test accuracy (%)')
  ax.grid(alpha=0.3)
  ax.legend()
  save(fig, path, title, axes=ax)


def bars(values: dict, path, title: str = '', ylabel='test accuracy (%)'):
  fig, ax = plt.subplots(figsize=(1.6 * len(values) + 2, 4))
  ax.bar(range(len(values)), [100 * v for v in values.values()])
  ax.set_xticks(range(len(values)))
  ax.set_xticklabels(list(values), rotation=20, ha='right')
  for i, v in enumerate(values.values()):
    ax.text(i, 100 * v, f'{100 * v:.2f}', ha='center', va='bottom')
  ax.set(ylabel=ylabel)
  save(fig, path, title, axes=ax)
