"""Reconnect time per variant, against the sort floor and the baselines.

Run ``python -m benchmarks.reconnect [--rounds N] [--models NAME ...]
[--no-scaling] [--scaling-max N]``. Every model's kernels are reconnected
in one jitted call (default vector axes: one vector per output unit), and
timed side by side, in turns, with:

* ``floor: int32 sort``: one single-operand int32 sort of the same rows, the
  least work an exact argsort can do with XLA;
* ``reconnect_rows[<variant>]`` for every variant of
  :mod:`laperm_jax._ranking`, on the rows (``[auto]`` is the per-platform
  choice);
* ``laperm_jax.reconnect``: the public tree-level call on the kernels in their
  own layout, so including the transposes to rows and back;
* ``laperm_jax.reconnect, index scatter + contiguous blocks`` (CPU only):
  the same call with an explicit row-index scatter and contiguous row
  blocks (:mod:`benchmarks.alternatives`);
* ``packed, non-minor axis``: the packed sort run along the kernel's leading
  (non-minor) axis, with no transpose to rows;
* ``keyed_cosort, non-minor axis`` (GPU script only): the same for the GPU
  default's two sorts;
* ``jnp.argsort float + scatter``: the direct formulation (float argsort;
  not exact for subnormals on XLA:CPU);
* ``original formulation (JAX)``: rank = argsort(argsort(v)), then a per-row
  gather from the sorted pool, as the official TensorFlow code does it;
* ``original formulation (TF)``: the same in TensorFlow (``tf.function``),
  when TensorFlow is installed;
* ``NumPy``: stable argsort and ``put_along_axis``.

Every JAX contender's output is checked equal, bit for bit, to ``[auto]``
before timing.
"""

import argparse
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import alternatives
from benchmarks import kernels
from benchmarks import timing
import laperm_jax
from laperm_jax import _layouts
from laperm_jax import _ranking as ranking
from laperm_jax import _rows
from laperm_jax import _sort_keys as sort_keys

try:  # optional
  import tensorflow as tf
except ImportError:
  tf = None


def make_kernels(shapes, seed: int = 0):
  """Current weights and the pool (sorted initial weights) per kernel."""
  rng = np.random.default_rng(seed)
  current = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]
  initial = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]
  pool = laperm_jax.sorted_pool(initial, mask=lambda p: [True] * len(p))
  return current, pool


def rows_of(leaves):
  leaves = [getattr(x, 'values', x) for x in leaves]  # PoolLeaf or array
  return [_rows.to_rows(x, _layouts.normalize_vector_axes(None, x.ndim))
          for x in leaves]


INDEX_SCATTER = ('laperm_jax.reconnect, index scatter + contiguous blocks '
                 '(kernel layout)')

# ------------------------------------------------------------ contenders --
def floor(rows):
  # lax.sort's default (stable) sort: faster than the unstable one on
  # XLA:CPU, so it is the floor.
  return [jax.lax.sort(jax.lax.bitcast_convert_type(r, jnp.int32),
                       dimension=1) for r in rows]


def reconnect_rows(rows, pool_rows, variant):
  return [ranking.reconnect_rows(r, p, variant=variant)
          for r, p in zip(rows, pool_rows)]


def argsort_float_scatter(rows, pool_rows):
  out = []
  for r, p in zip(rows, pool_rows):
    order = jnp.argsort(r, axis=-1, stable=True)
    row_index = jnp.arange(r.shape[0])[:, None]
    out.append(jnp.zeros_like(p).at[row_index, order].set(
        p, unique_indices=True))
  return out


def original_jax(rows, pool_rows):
  out = []
  for r, p in zip(rows, pool_rows):
    rank = jnp.argsort(jnp.argsort(r, axis=-1), axis=-1)
    out.append(jnp.take_along_axis(p, rank, axis=-1))
  return out


def packed_non_minor(leaves, pool_leaves):
  """Packed sort along axis 0 of each kernel viewed as (vector_length, units)."""
  out = []
  for x, p in zip(leaves, pool_leaves):
    p = p.values  # a laperm_jax.PoolLeaf
    length = math.prod(x.shape[:-1])
    x2, p2 = x.reshape(length, -1), p.reshape(length, -1)
    with jax.enable_x64(True):
      key = sort_keys.total_order_key(x2).astype(jnp.uint64)
      positions = jax.lax.broadcasted_iota(jnp.uint64, x2.shape, 0)
      packed = (key << np.uint64(sort_keys.position_bits(length))) | positions
      packed = jax.lax.sort(packed, dimension=0)
      mask = np.uint64((1 << sort_keys.position_bits(length)) - 1)
      order = (packed & mask).astype(jnp.int32)
    unit = jax.lax.broadcasted_iota(jnp.int32, x2.shape, 1)
    placed = jnp.zeros_like(p2).at[order, unit].set(p2, unique_indices=True)
    out.append(placed.reshape(x.shape))
  return out


def keyed_cosort_non_minor(leaves, pool_leaves):
  """``keyed_cosort`` along axis 0 of each kernel viewed as (vector_length,
  units): the GPU default without the transposes to rows and back."""
  out = []
  for x, p in zip(leaves, pool_leaves):
    p = p.values  # a laperm_jax.PoolLeaf
    length = math.prod(x.shape[:-1])
    x2, p2 = x.reshape(length, -1), p.reshape(length, -1)
    with jax.enable_x64(x.dtype.itemsize == 8):
      key = sort_keys.total_order_key(x2)
      positions = jax.lax.broadcasted_iota(jnp.int32, x2.shape, 0)
      _, order = jax.lax.sort((key, positions), dimension=0, is_stable=True,
                              num_keys=1)
      _, placed = jax.lax.sort((order, p2), dimension=0, num_keys=1)
    out.append(placed.reshape(x.shape))
  return out


def numpy_reconnect(rows, pool_rows):
  out = []
  for r, p in zip(rows, pool_rows):
    order = np.argsort(r, axis=-1, kind='stable')
    placed = np.empty_like(p)
    np.put_along_axis(placed, order, p, axis=-1)
    out.append(placed)
  return out


def tf_original(rows, pool_rows):
  out = []
  for r, p in zip(rows, pool_rows):
    rank = tf.argsort(tf.argsort(r, axis=-1), axis=-1)
    out.append(tf.gather(p, rank, batch_dims=1))
  return out


# ------------------------------------------------------------------ runs --
def row_inputs(current, pool):
  """The kernels and their pool as rows, materialised (not timed later)."""
  rows = [jax.block_until_ready(r + 0) for r in rows_of(current)]
  pool_rows = [jax.block_until_ready(p + 0) for p in rows_of(pool)]
  return rows, pool_rows


def jitted_contenders(current, pool, rows, pool_rows,
                      layout_experiment: bool = True,
                      keyed_non_minor: bool = False):
  """label -> (jitted function, its arguments): the JAX contenders.

  ``layout_experiment`` adds the packed sort along the non-minor axis (slow
  on CPU); ``keyed_non_minor`` the GPU default's sorts along it (for GPUs,
  whose public path pays 0.2-0.3x the floor for the transposes).
  """
  jitted = {
      'floor: int32 sort': (jax.jit(floor), (rows,)),
  }
  for variant in ('auto',) + ranking.VARIANTS:
    jitted[f'reconnect_rows[{variant}]'] = (
        jax.jit(functools.partial(reconnect_rows, variant=variant)),
        (rows, pool_rows))
  jitted['laperm_jax.reconnect (kernel layout)'] = (
      jax.jit(lambda c, p: laperm_jax.reconnect(c, p)), (current, pool))
  if jax.default_backend() == 'cpu':
    jitted[INDEX_SCATTER] = (jax.jit(alternatives.reconnect), (current, pool))
  if layout_experiment:
    jitted['packed, non-minor axis (kernel layout)'] = (
        jax.jit(packed_non_minor), (current, pool))
  if keyed_non_minor:
    jitted['keyed_cosort, non-minor axis (kernel layout)'] = (
        jax.jit(keyed_cosort_non_minor), (current, pool))
  jitted['jnp.argsort float + scatter'] = (
      jax.jit(argsort_float_scatter), (rows, pool_rows))
  jitted['original formulation (JAX)'] = (
      jax.jit(original_jax), (rows, pool_rows))
  return jitted


@jax.jit
def _same_bits(got, expected):
  return jnp.stack([jnp.array_equal(
      jax.lax.bitcast_convert_type(g, jnp.uint32),
      jax.lax.bitcast_convert_type(e, jnp.uint32))
                    for g, e in zip(got, expected)]).all()


def bit_identical_to_auto(jitted) -> dict[str, bool]:
  """Per contender (the floor aside), whether its output equals ``[auto]``'s
  bit for bit; compared on the device, one contender's output at a time."""
  fn, args = jitted['reconnect_rows[auto]']
  expected = fn(*args)
  to_rows = jax.jit(rows_of)
  checks = {}
  for label, (fn, args) in jitted.items():
    if label.startswith('floor'):
      continue
    got = fn(*args)
    if 'kernel layout' in label:
      got = to_rows(got)
    checks[label] = bool(_same_bits(got, expected))
    del got
  return checks


def contenders_for(shapes, check: bool = True):
  """name -> zero-argument callable, for one model's kernels."""
  current, pool = make_kernels(shapes)
  rows, pool_rows = row_inputs(current, pool)
  jitted = jitted_contenders(current, pool, rows, pool_rows)
  if check:
    wrong = [label for label, same in bit_identical_to_auto(jitted).items()
             if not same]
    assert not wrong, f'not bit-identical to reconnect_rows[auto]: {wrong}'
  contenders = {name: timing.blocking(fn, *args)
                for name, (fn, args) in jitted.items()}
  if tf is not None:
    tf_rows = [tf.constant(np.asarray(r)) for r in rows]
    tf_pool = [tf.constant(np.asarray(p)) for p in pool_rows]
    tf_fn = tf.function(tf_original)
    contenders['original formulation (TF)'] = lambda: [
        t.numpy() for t in tf_fn(tf_rows, tf_pool)]
  np_rows = [np.asarray(r) for r in rows]
  np_pool = [np.asarray(p) for p in pool_rows]
  contenders['NumPy argsort + put_along_axis'] = functools.partial(
      numpy_reconnect, np_rows, np_pool)
  return contenders


def run_models(models, rounds: int) -> str:
  report = []
  for name in models:
    shapes = kernels.MODELS[name]()
    size = sum(math.prod(s) for s in shapes)
    big = size > 2_000_000
    stats = timing.interleaved(contenders_for(shapes),
                               rounds=max(5, rounds // 3) if big else rounds,
                               warmup=1)
    report.append(timing.table(
        stats, 'floor: int32 sort',
        f'{name}: {len(shapes)} kernels, {size:,} weights'))
    report.append(targets(stats))
    print(report[-2], report[-1], sep='\n', flush=True)
  return '\n'.join(report)


def targets(stats) -> str:
  """The issue's targets, as paired median ratios (and ratios of minima)."""
  floor_name, auto = 'floor: int32 sort', 'reconnect_rows[auto]'

  def both(name, reference):
    return (f'{timing.paired_ratio(stats, name, reference):.2f} (minima: '
            f'{stats[name]["min"] / stats[reference]["min"]:.2f})')

  lines = ['', 'targets (paired median ratio, ratio of minima):',
           f'  auto / floor = {both(auto, floor_name)}; target <= 1.3',
           '  laperm_jax.reconnect (kernel layout, with transposes) / floor = '
           f'{both("laperm_jax.reconnect (kernel layout)", floor_name)}',
           *([f'  index scatter + contiguous blocks / floor = '
              f'{both(INDEX_SCATTER, floor_name)}']
             if INDEX_SCATTER in stats else []),
           f'  original JAX / auto = '
           f'{both("original formulation (JAX)", auto)}; target >= 4']
  if 'original formulation (TF)' in stats:
    lines.append(f'  original TF / auto = '
                 f'{both("original formulation (TF)", auto)}; target >= 2')
  return '\n'.join(lines)


# --------------------------------------------------------------- scaling --
def scaling(max_size: int, rounds: int, path: str) -> str:
  """Reconnect time vs number of weights (rows of 1000), with a PNG plot."""
  sizes = [s for s in (10**4, 3 * 10**4, 10**5, 3 * 10**5, 10**6,
                       3 * 10**6, 10**7, 3 * 10**7, 10**8) if s <= max_size]
  names = ('floor: int32 sort', 'reconnect_rows[auto]',
           'original formulation (JAX)')
  results = {name: [] for name in names}
  lines = ['\n### Scaling: rows of 1000 weights\n',
           '| weights | ' + ' | '.join(f'{n} min ms' for n in names) +
           ' | auto / floor, paired median | auto / floor, minima |',
           '|---:|' + '---:|' * (len(names) + 2)]
  for size in sizes:
    shape = (size // 1000, 1000)
    rng = np.random.default_rng(size)
    rows = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    pool_rows = jnp.sort(jnp.asarray(rng.standard_normal(shape), jnp.float32))
    fns = {
        names[0]: timing.blocking(jax.jit(floor), [rows]),
        names[1]: timing.blocking(
            jax.jit(functools.partial(reconnect_rows, variant=None)), [rows],
            [pool_rows]),
    }
    if size <= 10**7:  # the original formulation takes a minute beyond
      fns[names[2]] = timing.blocking(jax.jit(original_jax), [rows],
                                      [pool_rows])
    stats = timing.interleaved(fns, rounds=rounds if size <= 10**6 else 3,
                               warmup=1)
    for name in names:
      results[name].append(stats[name]['min'] if name in stats else np.nan)
    lines.append(
        f'| {size:.0e} | ' +
        ' | '.join(f'{stats[n]["min"] * 1e3:.2f}' if n in stats else '-'
                   for n in names) +
        f' | {timing.paired_ratio(stats, names[1], names[0]):.2f}'
        f' | {stats[names[1]]["min"] / stats[names[0]]["min"]:.2f} |')
    print(lines[-1], flush=True)
  plot_scaling(sizes, results, path)
  lines.append(f'\nPlot: `{path}`.')
  return '\n'.join(lines)


def plot_scaling(sizes, results, path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for name, times in results.items():
    ax.loglog(sizes, np.array(times) * 1e3, 'o-', label=name)
  floor_times = np.array(results['floor: int32 sort'])
  middle = len(sizes) // 2
  n = np.array(sizes, float)
  reference = n * np.log2(n)
  reference *= floor_times[middle] * 1e3 / reference[middle]
  ax.loglog(sizes, reference, 'k--', label='N log N (through the floor)')
  ax.set_xlabel('weights reconnected (rows of 1000)')
  ax.set_ylabel('time per reconnect, ms (minimum over rounds)')
  ax.set_title(f'Reconnect scaling, {jax.default_backend()}')
  ax.legend(fontsize=8)
  ax.grid(True, which='both', alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=15)
  parser.add_argument('--models', nargs='*', default=list(kernels.MODELS))
  parser.add_argument('--no-scaling', action='store_true')
  parser.add_argument('--scaling-max', type=int, default=10**8)
  parser.add_argument('--plot', default='benchmarks/scaling.png')
  args = parser.parse_args()
  print(f'machine: {timing.machine()}')
  print(f'TensorFlow: {tf.__version__ if tf is not None else "not installed"}')
  run_models(args.models, args.rounds)
  if not args.no_scaling:
    print(scaling(args.scaling_max, args.rounds, args.plot))


if __name__ == '__main__':
  main()
