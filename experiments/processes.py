"""Several JAX processes on this machine, as on several hosts.

The parent side (:func:`run`, :func:`launch`) starts ``num_processes``
copies of a module with ``python -m``, each with its own fake CPU devices.
:func:`run` returns their standard outputs (for tests); :func:`launch` lets
process 0 write to this console (``python -m experiments.train
--num-processes N``). It is bounded: when any process fails, the others are
killed at once; when the whole launch overruns its time limit, all are
killed; on Linux, when the launcher itself is killed, so are they. Nothing
is left running.

The child side (:func:`add_arguments`, :func:`initialize`) reads the
process id, the process count and the coordinator address from the command
line and joins the job with ``jax.distributed.initialize``, collectives over
gloo (the CPU backend's cross-process implementation). With one process it
does not initialize anything: a plain process with all devices local.

Example:
  >>> import argparse
  >>> parser = argparse.ArgumentParser()
  >>> add_arguments(parser)
  >>> parser.parse_args(['--num-processes', '1']).process_id
  0
"""

import argparse
import contextlib
import ctypes
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).parents[1]
POLL_S = 0.05


class LaunchError(RuntimeError):
  """A launch failed: a process exited non-zero, or the launch overran.

  Attributes:
    returncodes: per process, its exit code (negative: killed by a signal).
  """

  def __init__(self, message: str, returncodes: list[int]):
    super().__init__(message)
    self.returncodes = returncodes


def free_port() -> int:
  """A TCP port on localhost that was free a moment ago."""
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    return probe.getsockname()[1]


def child_env(devices_per_process: int) -> dict[str, str]:
  """This process's environment, with ``devices_per_process`` CPU devices.

  The repository root comes first on ``PYTHONPATH``, so that children import
  this checkout's packages whether or not ``laperm_jax`` is installed.
  """
  env = dict(os.environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  flags.append(f'--xla_force_host_platform_device_count={devices_per_process}')
  env['XLA_FLAGS'] = ' '.join(flags)
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = os.pathsep.join(
      [str(ROOT)] + [p for p in [env.get('PYTHONPATH')] if p])
  env.pop('LAPERM_JAX_RECONNECT_VARIANT', None)
  return env


# Looked up here, not in the forked child (where another thread's lock could
# be held): the child only makes the call.
_PRCTL = (ctypes.CDLL(None, use_errno=True).prctl
          if sys.platform.startswith('linux') else None)


def _die_with_parent() -> None:
  """Run in each child before it starts: it is killed when the parent dies.

  Linux only (``prctl(PR_SET_PDEATHSIG)``): a launcher killed by a signal
  runs no ``finally``, and its children would live on.
  """
  if _PRCTL is not None:
    _PRCTL(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _tail(path: pathlib.Path, chars: int = 3000) -> str:
  return path.read_text(errors='replace')[-chars:]


def stop(processes: list[subprocess.Popen]) -> list[int]:
  """Kills those still running; returns every exit code."""
  for process in processes:
    if process.poll() is None:
      process.kill()
  return [process.wait() for process in processes]


def _report(what: str, returncodes: list[int],
            logs: list[pathlib.Path]) -> str:
  parts = [what]
  for index, (code, log) in enumerate(zip(returncodes, logs)):
    parts.append(f'--- process {index} (exit code {code}):\n{_tail(log)}')
  return '\n'.join(parts)


def _wait_all(processes: list[subprocess.Popen], logs: list[pathlib.Path],
              timeout_s: float | None) -> None:
  """Waits for every process to succeed; kills all at the first failure.

  ``timeout_s=None``: no time limit for the whole launch.
  """
  deadline = None if timeout_s is None else time.monotonic() + timeout_s
  while True:
    codes = [process.poll() for process in processes]
    failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
    if failed:
      first = failed[0]
      returncodes = stop(processes)
      raise LaunchError(_report(
          f'process {first} exited with {codes[first]}; the others were '
          'stopped.', returncodes, logs), returncodes)
    if all(code == 0 for code in codes):
      return
    if deadline is not None and time.monotonic() > deadline:
      returncodes = stop(processes)
      raise LaunchError(_report(
          f'the launch overran its {timeout_s:.0f} s; every process was '
          'stopped.', returncodes, logs), returncodes)
    time.sleep(POLL_S)


def start(module: str, args: list[str], *, num_processes: int,
          devices_per_process: int, log_dir: pathlib.Path,
          interactive: bool = False, console: bool = False,
          warnings_as_errors: bool = True) -> list[subprocess.Popen]:
  """Starts ``python -m module`` as one job of several local processes.

  Each process gets ``args`` and its place in the job (``--process-id``,
  ``--num-processes``, ``--coordinator``). Its standard error goes to
  ``log_dir/process{i}.log``; its standard output to
  ``log_dir/process{i}.out``, or, when ``interactive``, to a pipe, as its
  standard input comes from one (text mode). With ``console``, process 0
  writes both to this process's standard output and error instead. With
  ``warnings_as_errors`` (as in the test suite) a deprecation fails early.
  Stop them with :func:`stop`.
  """
  coordinator = f'127.0.0.1:{free_port()}'
  env = child_env(devices_per_process)
  processes = []
  try:
    for index in range(num_processes):
      flags = ['-W', 'error'] if warnings_as_errors else []
      command = [sys.executable, *flags, '-m', module, *args,
                 '--process-id', str(index),
                 '--num-processes', str(num_processes),
                 '--coordinator', coordinator]
      with contextlib.ExitStack() as files:
        log = files.enter_context(open(log_dir / f'process{index}.log', 'w'))
        if console and index == 0:
          streams = {'stdin': subprocess.DEVNULL, 'stdout': None}
          log = None
        elif interactive:
          streams = {'stdin': subprocess.PIPE, 'stdout': subprocess.PIPE,
                     'text': True}
        else:
          streams = {'stdin': subprocess.DEVNULL,
                     'stdout': files.enter_context(
                         open(log_dir / f'process{index}.out', 'w'))}
        processes.append(subprocess.Popen(
            command, env=env, cwd=ROOT, stderr=log,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (see _PRCTL)
            **streams))
  except BaseException:
    stop(processes)
    raise
  return processes


def logs(log_dir: pathlib.Path, num_processes: int) -> list[pathlib.Path]:
  """The standard error files of :func:`start`, in process order."""
  return [log_dir / f'process{i}.log' for i in range(num_processes)]


def run(module: str, args: list[str], *, num_processes: int,
        devices_per_process: int, timeout_s: float) -> list[str]:
  """Runs ``python -m module`` as one job of several local processes.

  Args:
    module: the child module; it calls :func:`initialize` first.
    args: its arguments (the same for every process).
    num_processes: processes to start (1: no ``jax.distributed``).
    devices_per_process: fake CPU devices in each.
    timeout_s: the most seconds the whole launch may take.

  Returns:
    Each process's standard output, in process order.

  Raises:
    LaunchError: a process exited non-zero or the launch overran; every
      process has been stopped, and the message holds each one's log tail.
  """
  with tempfile.TemporaryDirectory() as directory:
    log_dir = pathlib.Path(directory)
    processes = start(module, args, num_processes=num_processes,
                      devices_per_process=devices_per_process,
                      log_dir=log_dir)
    try:
      _wait_all(processes, logs(log_dir, num_processes), timeout_s)
    finally:
      stop(processes)  # also on KeyboardInterrupt
    return [(log_dir / f'process{i}.out').read_text()
            for i in range(num_processes)]


def launch(module: str, args: list[str], *, num_processes: int,
           devices_per_process: int) -> None:
  """Runs ``python -m module`` as one job; process 0 writes to this console.

  The other processes' standard output and error go to log files, whose
  tails a failure reports. There is no time limit on the job, but a process
  that fails stops the others at once.

  Args:
    module: the child module; it calls :func:`initialize` first.
    args: its arguments (the same for every process).
    num_processes: processes to start.
    devices_per_process: fake CPU devices in each.

  Raises:
    LaunchError: a process exited non-zero; every process has been stopped.

  Example:
    >>> launch('json.tool', ['--help'], num_processes=1,
    ...        devices_per_process=1)  # doctest: +SKIP
  """
  with tempfile.TemporaryDirectory() as directory:
    log_dir = pathlib.Path(directory)
    processes = start(module, args, num_processes=num_processes,
                      devices_per_process=devices_per_process,
                      log_dir=log_dir, console=True,
                      warnings_as_errors=False)
    try:
      _wait_all(processes, logs(log_dir, num_processes), None)
    finally:
      stop(processes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The options :func:`run` passes to every child."""
  parser.add_argument('--process-id', type=int, default=0)
  parser.add_argument('--num-processes', type=int, default=1)
  parser.add_argument('--coordinator', default=None,
                      help='host:port of process 0 (several processes)')


def initialize(args: argparse.Namespace) -> None:
  """Joins the job described by ``args``; call before JAX uses a device."""
  import jax
  if args.num_processes == 1:
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(args.coordinator,
                             num_processes=args.num_processes,
                             process_id=args.process_id)
