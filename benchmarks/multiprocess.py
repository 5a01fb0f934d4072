"""A train step on 2 processes x 2 devices against 1 process x 4 devices.

Run ``python -m benchmarks.multiprocess [--rounds N] [--widths ...]``. Two
jobs hold the same global model, an MLP (LeNet-300-100 by default) on a
``(data, model)`` mesh of 4 CPU devices: the batch split over ``data``, every
kernel and bias over its output axis on ``model`` (each weight vector on one
device) and gathered for the forward pass. One job is a single process with 4
devices; the other is 2 processes with 2 devices each (``jax.distributed``,
gloo collectives over localhost), ``data`` across the processes and
``model`` within each, as on two hosts. Each job times a jitted, donated
train step of plain Adam, of ``laperm(adam)`` on a step that does not sync,
and of one that syncs (period 1).

The jobs run at the same time and take turns: the parent asks one job for a
round of steps, then the other (in alternating order), while the job not
asked waits idle, so that load from other processes on a shared machine
hits both sides of a pair alike. The 2-process time of a round is the
slower process's. Ratios are the paired median over rounds and the ratio of
minima (see ``benchmarks/timing.py``). The result file records the commit,
machine, date and command.
"""

import argparse
import contextlib
import datetime
import itertools
import json
import os
import pathlib
import queue
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks import timing
from experiments import processes as local_processes

JOBS = {'1 x 4': (1, 4), '2 x 2': (2, 2)}  # name: (processes, devices each)
CONTENDERS = ('adam', 'laperm non-sync', 'laperm sync')
READY_TIMEOUT_S = 900
ROUND_TIMEOUT_S = 300
ROOT = pathlib.Path(__file__).parents[1]


# ------------------------------------------------------------- the child --
def child_contenders(mesh, widths: list[int], batch: int) -> dict:
  """Per contender: a zero-argument callable doing one donated train step.

  Call it, and the callables, under ``jax.set_mesh(mesh)``.
  """
  import jax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P
  import numpy as np
  import optax

  import laperm_jax
  rng = np.random.default_rng(0)

  def global_array(value, spec):
    return jax.make_array_from_callback(
        value.shape, NamedSharding(mesh, spec), lambda index: value[index])

  def layer(fan_in, fan_out):
    limit = np.sqrt(6.0 / fan_in)
    kernel = rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)
    return {'kernel': global_array(kernel, P(None, 'model')),
            'bias': global_array(np.zeros(fan_out, np.float32), P('model'))}

  params = [layer(m, n) for m, n in itertools.pairwise(widths)]
  x = global_array(rng.standard_normal((batch, widths[0]), np.float32),
                   P('data'))
  y = global_array(rng.integers(0, widths[-1], batch).astype(np.int32),
                   P('data'))

  def loss(params, x, y):
    for index, dense in enumerate(params):
      x = (x @ jax.sharding.reshard(dense['kernel'], P())
           + jax.sharding.reshard(dense['bias'], P()))
      if index < len(params) - 1:
        x = jax.nn.relu(x)
    return optax.softmax_cross_entropy_with_integer_labels(x, y).mean()

  transforms = {
      'adam': optax.adam(1e-3),
      'laperm non-sync': laperm_jax.laperm(optax.adam(1e-3), 10**9),
      'laperm sync': laperm_jax.laperm(optax.adam(1e-3), 1),
  }
  return {name: one_step(tx, loss, jax.tree.map(lambda a: a.copy(), params),
                         x, y)
          for name, tx in transforms.items()}


def one_step(tx, loss, params, x, y):
  """A zero-argument callable: one train step on its own params and state."""
  import jax
  import optax
  carry = [params, jax.jit(tx.init)(params)]

  def train_step(params, state, x, y):
    grads = jax.grad(loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(train_step, donate_argnums=(0, 1))

  def run():
    carry[:] = step(*carry, x, y)
    return carry
  return run


def serve(args: argparse.Namespace) -> None:
  """The child: builds the steps, then times rounds when the parent asks."""
  local_processes.initialize(args)
  import jax
  from jax.experimental import multihost_utils
  from jax.sharding import AxisType
  mesh = jax.make_mesh((2, 2), ('data', 'model'),
                       axis_types=(AxisType.Explicit,) * 2)
  with jax.set_mesh(mesh):
    steps = child_contenders(mesh, args.widths, args.batch)
    for run in steps.values():  # compile and warm up
      for _ in range(2):
        jax.block_until_ready(run())
    print('ready', flush=True)
    for line in sys.stdin:
      name, count = line.rsplit(maxsplit=1)
      multihost_utils.sync_global_devices(line.strip())
      start = time.perf_counter()
      for _ in range(int(count)):
        out = steps[name]()
      jax.block_until_ready(out)
      print((time.perf_counter() - start) / int(count), flush=True)


# ------------------------------------------------------------ the parent --
class Job:
  """A running job of local processes, asked for rounds line by line."""

  def __init__(self, name: str, args: list[str], log_dir: pathlib.Path):
    num_processes, devices = JOBS[name]
    self.name = name
    self.log_dir = log_dir / name.replace(' ', '')
    self.log_dir.mkdir()
    self.processes = local_processes.start(
        'benchmarks.multiprocess', ['--child', *args],
        num_processes=num_processes, devices_per_process=devices,
        log_dir=self.log_dir, interactive=True)
    self.replies = [queue.Queue() for _ in self.processes]
    for process, replies in zip(self.processes, self.replies):
      threading.Thread(target=_forward_lines, args=(process.stdout, replies),
                       daemon=True).start()

  def _reply(self, index: int, deadline: float) -> str:
    while True:
      try:
        line = self.replies[index].get(
            timeout=max(deadline - time.monotonic(), 0.0))
      except queue.Empty:
        self._fail(f'process {index} gave no answer in time')
      if line is None:
        self._fail(f'process {index} exited')
      if not line.startswith('[Gloo]'):  # gloo's own messages
        return line

  def _fail(self, what: str):
    codes = local_processes.stop(self.processes)
    tails = [path.read_text(errors='replace')[-2000:] for path in
             local_processes.logs(self.log_dir, len(self.processes))]
    raise RuntimeError(f'job {self.name}: {what} (exit codes {codes}):\n'
                       + '\n'.join(tails))

  def wait_ready(self, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for index in range(len(self.processes)):
      if self._reply(index, deadline) != 'ready':
        self._fail(f'process {index} did not start')

  def ask(self, command: str, timeout_s: float) -> list[str]:
    for process in self.processes:
      process.stdin.write(command + '\n')
      process.stdin.flush()
    deadline = time.monotonic() + timeout_s
    return [self._reply(i, deadline) for i in range(len(self.processes))]

  def close(self) -> None:
    for process in self.processes:
      if process.poll() is None:
        process.stdin.close()  # the child's loop ends; it exits
    deadline = time.monotonic() + 60
    while (time.monotonic() < deadline and
           any(p.poll() is None for p in self.processes)):
      time.sleep(0.1)
    local_processes.stop(self.processes)


def _forward_lines(stream, replies: queue.Queue) -> None:
  for line in stream:
    replies.put(line.strip())
  replies.put(None)


def measure(args: argparse.Namespace) -> dict[str, list[float]]:
  """Seconds per step, per round, for every contender on both jobs."""
  child_args = ['--widths', *map(str, args.widths), '--batch', str(args.batch)]
  samples = {f'{c}, {j}': [] for c in CONTENDERS for j in JOBS}
  with (tempfile.TemporaryDirectory() as directory,
        contextlib.ExitStack() as jobs_open):
    jobs = {}
    for name in JOBS:
      jobs[name] = Job(name, child_args, pathlib.Path(directory))
      jobs_open.callback(jobs[name].close)
    for job in jobs.values():
      job.wait_ready(READY_TIMEOUT_S)
    for index in range(args.warmup + args.rounds):
      order = list(JOBS) if index % 2 == 0 else list(reversed(JOBS))
      for contender in CONTENDERS:
        for name in order:
          replies = jobs[name].ask(f'{contender} {args.steps}',
                                   ROUND_TIMEOUT_S)
          if index >= args.warmup:
            samples[f'{contender}, {name}'].append(max(map(float, replies)))
  return samples


def summarize(samples: dict[str, list[float]]) -> dict:
  """Min and median per contender; the ratios 2 x 2 / 1 x 4 and to Adam."""
  stats = {name: {'min': min(s), 'median': statistics.median(s),
                  'samples': s} for name, s in samples.items()}
  one, two = JOBS
  across = {c: {'paired_median': timing.paired_ratio(
                    stats, f'{c}, {two}', f'{c}, {one}'),
                'minima': stats[f'{c}, {two}']['min'] /
                          stats[f'{c}, {one}']['min']}
            for c in CONTENDERS}
  to_adam = {f'{c}, {j}': {'paired_median': timing.paired_ratio(
                               stats, f'{c}, {j}', f'adam, {j}'),
                           'minima': stats[f'{c}, {j}']['min'] /
                                     stats[f'adam, {j}']['min']}
             for c in CONTENDERS[1:] for j in JOBS}
  return {'stats': stats, f'{two} / {one}': across, 'to adam': to_adam}


def render(result: dict) -> str:
  """The Markdown tables of a result file."""
  one, two = JOBS
  stats, across = result['stats'], result[f'{two} / {one}']
  settings = result['settings']
  lines = [
      (f'{result["date"]}, commit `{result["commit"][:7]}`, '
       f'{result["machine"]}; MLP {"-".join(map(str, settings["widths"]))}, '
       f'batch {settings["batch"]}, {settings["rounds"]} rounds of '
       f'{settings["steps"]} steps; load average (1 min) '
       f'{result["load_average_before"][0]:.1f} before, '
       f'{result["load_average_after"][0]:.1f} after; '
       f'`{result["command"]}`'), '',
      (f'| step | {one}: min; median ms | {two}: min; median ms '
       f'| {two} / {one}: paired median; minima |'), '|---|---:|---:|---:|']
  for contender in CONTENDERS:
    cells = [f'{stats[f"{contender}, {job}"]["min"] * 1e3:.3f}; '
             f'{stats[f"{contender}, {job}"]["median"] * 1e3:.3f}'
             for job in JOBS]
    ratio = across[contender]
    lines.append(f'| {contender} | {cells[0]} | {cells[1]} | '
                 f'{ratio["paired_median"]:.2f}; {ratio["minima"]:.2f} |')
  lines += ['', ('| step, job | ratio to Adam in the same job: paired '
                  'median; minima |'), '|---|---:|']
  for name, ratio in result['to adam'].items():
    lines.append(f'| {name} | {ratio["paired_median"]:.2f}; '
                 f'{ratio["minima"]:.2f} |')
  return '\n'.join(lines)


def commit() -> str:
  """HEAD, with ``+dirty`` when the checkout has uncommitted changes."""
  def git(*command):
    return subprocess.run(['git', *command], capture_output=True, text=True,
                          cwd=ROOT, timeout=30, check=True).stdout.strip()
  return git('rev-parse', 'HEAD') + ('+dirty' if git('status', '--porcelain')
                                     else '')


def parse(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=30)
  parser.add_argument('--warmup', type=int, default=2,
                      help='rounds run first and not counted')
  parser.add_argument('--steps', type=int, default=20,
                      help='steps per contender per round')
  parser.add_argument('--widths', type=int, nargs='+',
                      default=[784, 300, 100, 10])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--out', type=pathlib.Path, default=None,
                      help='result file (default: benchmarks/results/'
                      'multiprocess-cpu-DATE/multiprocess.json)')
  parser.add_argument('--report', type=pathlib.Path, default=None,
                      help='print the tables of this result file and exit')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  local_processes.add_arguments(parser)
  return parser.parse_args(argv)


def main(argv=None) -> None:
  args = parse(argv)
  if args.child:
    serve(args)
    return
  if args.report is not None:
    print(render(json.loads(args.report.read_text())))
    return
  command = 'python -m benchmarks.multiprocess ' + shlex.join(
      sys.argv[1:] if argv is None else argv)
  date = datetime.datetime.now(datetime.UTC)
  result = {'command': command.strip(), 'commit': commit(),
            'machine': timing.machine(),
            'date': date.strftime('%Y-%m-%d %H:%M UTC'),
            'settings': {k: getattr(args, k) for k in
                         ('rounds', 'warmup', 'steps', 'widths', 'batch')},
            'load_average_before': os.getloadavg(),
            **summarize(measure(args))}
  result['load_average_after'] = os.getloadavg()
  out = args.out or (ROOT / 'benchmarks' / 'results' /
                     f'multiprocess-cpu-{date:%Y-%m-%d}' / 'multiprocess.json')
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1))
  print(render(result))
  print(f'\nwritten: {out}')


if __name__ == '__main__':
  main()
