"""Interleaved timing: contenders take turns, statistics over rounds."""

from collections.abc import Callable
import os
import platform
import statistics
import time

import jax


def machine() -> str:
  """One line describing where the numbers come from."""
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      names = [l.split(':', 1)[1].strip() for l in f if 'model name' in l]
    cpu = names[0] if names else cpu
  except OSError:
    pass
  return (f'{cpu}, {os.cpu_count()} cores, jax {jax.__version__} '
          f'({jax.default_backend()}), python {platform.python_version()}')


def interleaved(contenders: dict[str, Callable[[], object]], rounds: int,
                warmup: int = 2) -> dict[str, dict[str, float]]:
  """Times each zero-argument callable ``rounds`` times, in turns.

  Each callable must block until its result is ready. Returns, per name,
  ``min`` and ``median`` seconds and the raw ``samples`` (one per round, in
  round order, so that ratios can be paired round by round).
  """
  for _ in range(warmup):
    for fn in contenders.values():
      fn()
  samples = {name: [] for name in contenders}
  for _ in range(rounds):
    for name, fn in contenders.items():
      start = time.perf_counter()
      fn()
      samples[name].append(time.perf_counter() - start)
  return {name: {'min': min(s), 'median': statistics.median(s), 'samples': s}
          for name, s in samples.items()}


def paired_ratio(stats, name: str, reference: str) -> float:
  """Median over rounds of ``time[name] / time[reference]`` in that round.

  Contenders run back to back within a round, so a burst of load from other
  processes tends to hit both sides of a pair: the paired median is the
  steadiest ratio on a shared machine.
  """
  return statistics.median(
      a / b for a, b in zip(stats[name]['samples'],
                            stats[reference]['samples']))


def blocking(fn: Callable, *args) -> Callable[[], object]:
  """A zero-argument callable running ``fn(*args)`` to completion."""
  return lambda: jax.block_until_ready(fn(*args))


def table(stats: dict[str, dict[str, float]], reference: str,
          title: str) -> str:
  """Markdown table of min/median ms, min ratio and paired median ratio."""
  ref = stats[reference]
  lines = [f'\n### {title}\n',
           f'| contender | min ms | median ms | min / min of {reference} '
           f'| paired median ratio to {reference} |',
           '|---|---:|---:|---:|---:|']
  for name, s in stats.items():
    lines.append(f'| {name} | {s["min"] * 1e3:.3f} | {s["median"] * 1e3:.3f} '
                 f'| {s["min"] / ref["min"]:.2f} '
                 f'| {paired_ratio(stats, name, reference):.2f} |')
  return '\n'.join(lines)
