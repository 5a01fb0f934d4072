"""Train-step overhead of LaPerm, its compile time and its memory.

Run ``python -m benchmarks.train_step [--rounds N] [--models ...]
[--periods ...]``. For LeNet-300-100
(batch 128) and Conv7 (batch 50, dropout left out), on synthetic data, a
full jitted train step (forward, backward, optimizer, ``apply_updates``;
params and optimizer state donated, then not donated) is timed side by side
for:

* ``plain``: Adam alone;
* ``plain, updates materialised``: Adam with its update written and read
  back before ``apply_updates``;
* ``plain + an unchanged param-sized state``: Adam whose state also holds
  an array that every step returns unchanged (LaPerm's pool is one);
* ``laperm non-sync, updates through the cond``: ``laperm`` with the inner
  update passed through the ``lax.cond`` (``benchmarks/alternatives.py``);
* ``laperm non-sync``: ``laperm(adam, k)`` on a step that does not sync;
* ``laperm sync``: the same on a step that syncs (k = 1).

The amortised cost at period k is ``((k - 1) * non_sync + sync) / k``,
with each step's time taken as its ratio to plain, estimated two ways:
paired medians and minima (the minimum over many rounds is the least
disturbed by other load). A LeNet step lasts about a millisecond, shorter
than the scheduling jitter of a shared machine, so LeNet is also timed by
whole periods: k steps in one jitted ``fori_loop``, LaPerm with period k (so
exactly one sync per call), LaPerm without sync and the updates-through-the-cond structure,
against k plain steps. Then: compile time (lower + compile) of each step,
bytes of the states, XLA's memory analysis, and the param-sized copies in
the compiled step (there should be none outside the sync branch).
"""

import argparse
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import alternatives
from benchmarks import timing
import laperm_jax


# ---------------------------------------------------------------- models --
def he_uniform(key, shape):
  fan_in = int(np.prod(shape[:-1]))
  limit = np.sqrt(6.0 / fan_in)
  return jax.random.uniform(key, shape, jnp.float32, -limit, limit)


def lenet_init(key):
  sizes = [784, 300, 100, 10]
  keys = jax.random.split(key, len(sizes) - 1)
  return {f'dense{i}': {'kernel': he_uniform(k, (m, n)),
                        'bias': jnp.zeros(n, jnp.float32)}
          for i, (k, m, n) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}


def lenet_apply(params, x):
  x = x.reshape(x.shape[0], -1)
  for i in range(3):
    x = x @ params[f'dense{i}']['kernel'] + params[f'dense{i}']['bias']
    if i < 2:
      x = jax.nn.relu(x)
  return x


CONV7 = [  # (kh, kw, in, out, stride, padding)
    (3, 3, 1, 32, 1, 'VALID'), (3, 3, 32, 32, 1, 'VALID'),
    (5, 5, 32, 32, 2, 'SAME'), (3, 3, 32, 64, 1, 'VALID'),
    (3, 3, 64, 64, 1, 'VALID'), (5, 5, 64, 64, 2, 'SAME'),
    (4, 4, 64, 128, 1, 'VALID')]


def conv7_init(key):
  keys = jax.random.split(key, len(CONV7) + 1)
  params = {f'conv{i}': {'kernel': he_uniform(k, spec[:4]),
                         'bias': jnp.zeros(spec[3], jnp.float32)}
            for i, (k, spec) in enumerate(zip(keys, CONV7))}
  params['dense'] = {'kernel': he_uniform(keys[-1], (128, 10)),
                     'bias': jnp.zeros(10, jnp.float32)}
  return params


def conv7_apply(params, x):
  for i, (*_, stride, padding) in enumerate(CONV7):
    x = jax.lax.conv_general_dilated(
        x, params[f'conv{i}']['kernel'], (stride, stride), padding,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    x = jax.nn.relu(x + params[f'conv{i}']['bias'])
  x = x.reshape(x.shape[0], -1)
  return x @ params['dense']['kernel'] + params['dense']['bias']


MODELS = {
    'LeNet-300-100': (lenet_init, lenet_apply, 128),
    'Conv7': (conv7_init, conv7_apply, 50),
}


# ----------------------------------------------------------------- steps --
def make_step(apply, tx):
  def loss(params, x, y):
    logits = apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(params, opt_state, x, y):
    grads = jax.grad(loss)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return step


def materialized(inner: optax.GradientTransformation
                 ) -> optax.GradientTransformation:
  """``inner`` whose updates are materialised before ``apply_updates``.

  An optimisation barrier keeps XLA from fusing the update into the add of
  ``apply_updates``: the update is written and read back, which is what a
  ``lax.cond`` returning updates costs (a conditional's outputs are
  buffers). Timed next to plain and LaPerm non-sync steps, it measures how
  much of the non-sync overhead is that materialisation.
  """
  def update_fn(updates, state, params=None):
    updates, state = inner.update(updates, state, params)
    return jax.lax.optimization_barrier(updates), state
  return optax.GradientTransformation(inner.init, update_fn)


def with_unchanged_copy(inner: optax.GradientTransformation
                        ) -> optax.GradientTransformation:
  """``inner`` whose state also holds a copy of the params, never changed.

  The cost of any optimizer state that comes back from a step unchanged, as
  LaPerm's pool does: without donation XLA copies such an output.
  """
  def init_fn(params):
    return inner.init(params), jax.tree.map(jnp.array, params)

  def update_fn(updates, state, params=None):
    updates, inner_state = inner.update(updates, state[0], params)
    return updates, (inner_state, state[1])
  return optax.GradientTransformation(init_fn, update_fn)


THROUGH_COND = 'laperm non-sync, updates through the cond'


def optimizers():
  adam = optax.adam(1e-3, eps=1e-7)
  return {
      'plain': adam,
      'plain, updates materialised': materialized(adam),
      'plain + an unchanged param-sized state': with_unchanged_copy(adam),
      THROUGH_COND: alternatives.updates_through_cond(adam, sync_period=2**30),
      'laperm non-sync': laperm_jax.laperm(adam, sync_period=2**30),
      'laperm sync': laperm_jax.laperm(adam, sync_period=1),
  }


class Runner:
  """Carries params and state (donated unless ``donate=False``) along."""

  def __init__(self, step, params, opt_state, x, y, donate: bool = True):
    self.step = jax.jit(step, donate_argnums=(0, 1) if donate else ())
    self.params, self.opt_state, self.x, self.y = params, opt_state, x, y

  def __call__(self):
    self.params, self.opt_state = self.step(self.params, self.opt_state,
                                            self.x, self.y)
    jax.block_until_ready(self.params)


def batch(batch_size, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.random((batch_size, 28, 28, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32)
  return x, y


def tree_bytes(tree) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(tree) if hasattr(x, 'nbytes'))


def param_sized_copies(hlo: str, params) -> list[str]:
  """``copy`` ops of the entry computation on arrays of a param's shape."""
  shapes = {','.join(map(str, p.shape)) for p in jax.tree.leaves(params)
            if p.ndim >= 1 and p.size > 100}
  entry = hlo[hlo.index('ENTRY'):]
  entry = entry[:entry.index('\n}')]
  copies = []
  for line in entry.splitlines():
    match = re.search(r'= \w+\[([\d,]*)\]\S* copy\(', line)
    if match and match.group(1) in shapes:
      copies.append(line.strip()[:120])
  return copies


def run_model(name: str, rounds: int, donate: bool = True) -> str:
  init, apply, batch_size = MODELS[name]
  x, y = batch(batch_size)
  txs = optimizers()
  runners = {}
  for label, tx in txs.items():
    params = init(jax.random.key(0))
    runners[label] = Runner(make_step(apply, tx), params, tx.init(params),
                            x, y, donate=donate)
  # A LeNet step takes milliseconds: many more rounds for steady minima.
  rounds = rounds * 10 if name == 'LeNet-300-100' else rounds
  stats = timing.interleaved(runners, rounds=rounds, warmup=3)
  lines = [timing.table(stats, 'plain', f'{name}: train step (batch '
                        f'{batch_size}, {rounds} rounds, params and state '
                        f'{"donated" if donate else "not donated"})')]
  estimates = {
      'paired medians': {label: timing.paired_ratio(stats, label, 'plain')
                         for label in stats},
      'minima': {label: stats[label]['min'] / stats['plain']['min']
                 for label in stats},
  }
  lines.append('\n| k | amortised / plain, paired medians | amortised / plain, '
               'minima |')
  lines.append('|---:|---:|---:|')
  for k in (20, 250, 1000):
    cells = []
    for ratios in estimates.values():
      amortised = ((k - 1) * ratios['laperm non-sync'] +
                   ratios['laperm sync']) / k
      cells.append(f'{amortised:.4f} ({(amortised - 1) * 100:+.2f}%)')
    lines.append(f'| {k} | ' + ' | '.join(cells) + ' |')
  for how, ratios in estimates.items():
    extra = ratios['laperm sync'] - ratios['laperm non-sync']
    lines.append(f'\n{how}: a sync costs {extra:.2f} plain steps more than a '
                 f'non-sync step; over k = 250 that is {extra / 250 * 100:.2f}%'
                 ' of a plain step.')
  lines.append(compile_and_memory(name, init, apply, txs, x, y, donate))
  return '\n'.join(lines)


def compile_and_memory(name, init, apply, txs, x, y, donate: bool = True,
                       repeats: int = 3) -> str:
  params = init(jax.random.key(0))
  lines = [f'\n{name}: lower and compile time (median of {repeats}), memory, '
           'copies\n',
           '| step | lower s | compile s | state bytes | XLA temp bytes '
           '| param-sized copies in entry |', '|---|---:|---:|---:|---:|---:|']
  for label, tx in txs.items():
    if label == 'laperm sync':
      continue
    state = tx.init(params)
    lower_times, compile_times = [], []
    for _ in range(repeats):
      step = make_step(apply, tx)  # a fresh function: no cache hit
      start = time.perf_counter()
      lowered = jax.jit(step, donate_argnums=(0, 1) if donate else ()
                        ).lower(params, state, x, y)
      lowered_at = time.perf_counter()
      compiled = lowered.compile()
      lower_times.append(lowered_at - start)
      compile_times.append(time.perf_counter() - lowered_at)
    memory = compiled.memory_analysis()
    copies = param_sized_copies(compiled.as_text(), params)
    lines.append(f'| {label} | {statistics.median(lower_times):.3f} | '
                 f'{statistics.median(compile_times):.3f} | '
                 f'{tree_bytes(state):,} | {memory.temp_size_in_bytes:,} | '
                 f'{len(copies)} |')
  laperm_state = txs['laperm non-sync'].init(params)
  lines.append(
      f'\nbytes: params {tree_bytes(params):,}; Adam state '
      f'{tree_bytes(txs["plain"].init(params)):,}; LaPerm state '
      f'{tree_bytes(laperm_state):,} = inner '
      f'{tree_bytes(laperm_state.inner_state):,} + pool '
      f'{tree_bytes(laperm_state.pool):,} + counters '
      f'{tree_bytes((laperm_state.count, laperm_state.steps_since_sync))}')
  return '\n'.join(lines)


def make_period(step, num_steps: int):
  """``num_steps`` train steps in one jitted call (a ``fori_loop``)."""
  def period(params, opt_state, x, y):
    def body(_, carry):
      return step(*carry, x, y)
    return jax.lax.fori_loop(0, num_steps, body, (params, opt_state))
  return period


def run_periods(name: str, rounds: int) -> str:
  """Whole sync periods: k steps per call, exactly one sync in LaPerm's.

  Timing k steps at once leaves per-call jitter out of the comparison, and
  with ``laperm(adam, k)`` every call of k consecutive steps holds exactly
  one sync, so the ratio to k plain steps *is* the amortised cost.
  """
  init, apply, batch_size = MODELS[name]
  x, y = batch(batch_size)
  adam = optax.adam(1e-3, eps=1e-7)
  lines = [f'\n### {name}: whole periods of k steps per call (batch '
           f'{batch_size})\n',
           '| k | rounds | plain ms / step (min) | LaPerm ms / step (min) '
           '| LaPerm / plain, paired median | LaPerm / plain, minima '
           '| non-sync / plain, paired median | non-sync / plain, minima '
           '| non-sync through the cond / plain, paired median '
           '| non-sync through the cond / plain, minima |',
           '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for k in (20, 250, 1000):
    txs = {'plain': adam, 'laperm': laperm_jax.laperm(adam, sync_period=k),
           'laperm non-sync': laperm_jax.laperm(adam, sync_period=2**30),
           THROUGH_COND: alternatives.updates_through_cond(
               adam, sync_period=2**30)}
    runners = {}
    for label, tx in txs.items():
      params = init(jax.random.key(0))
      runners[label] = Runner(make_period(make_step(apply, tx), k), params,
                              tx.init(params), x, y)
    k_rounds = max(5, rounds * 250 // (k * 4))
    stats = timing.interleaved(runners, rounds=k_rounds, warmup=1)
    ratio = timing.paired_ratio
    minima = {label: stats[label]['min'] / stats['plain']['min']
              for label in stats}
    lines.append(
        f'| {k} | {k_rounds} | {stats["plain"]["min"] / k * 1e3:.3f} | '
        f'{stats["laperm"]["min"] / k * 1e3:.3f} | '
        f'{ratio(stats, "laperm", "plain"):.4f} | {minima["laperm"]:.4f} | '
        f'{ratio(stats, "laperm non-sync", "plain"):.4f} | '
        f'{minima["laperm non-sync"]:.4f} | '
        f'{ratio(stats, THROUGH_COND, "plain"):.4f} | {minima[THROUGH_COND]:.4f} |')
    print(lines[-1], flush=True)
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=60)
  parser.add_argument('--models', nargs='*', default=list(MODELS))
  parser.add_argument('--periods', nargs='*', default=['LeNet-300-100'],
                      help='models timed by whole sync periods')
  parser.add_argument('--donate', choices=('yes', 'no', 'both'),
                      default='both',
                      help='donate params and state to the per-step jit')
  args = parser.parse_args()
  print(f'machine: {timing.machine()}')
  for name in args.periods:
    print(run_periods(name, args.rounds), flush=True)
  modes = {'yes': (True,), 'no': (False,), 'both': (True, False)}[args.donate]
  for name in args.models:
    for donate in modes:
      print(run_model(name, args.rounds, donate), flush=True)


if __name__ == '__main__':
  main()
