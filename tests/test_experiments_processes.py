"""`--num-processes N --devices-per-process D`: the train CLI on several local
JAX processes equals one process with N*D devices and the same mesh.

The full launches (1 x 4 devices, 2 x 2, and 2 x 2 resumed) are heavy and run
with ``-m slow``; the default suite launches the CLI on 2 processes once (a
process killed mid-run), checks the layout errors and what processes other
than the first write, and tests/test_multiprocess.py proves the library's
bit-identity across processes.
"""

import json
import os
import pathlib
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

pytest.importorskip('mlxtend', reason='needs the experiments extra')
pytest.importorskip('sklearn', reason='the digits dataset')
ocp = pytest.importorskip('orbax.checkpoint')

from experiments import processes  # pylint: disable=wrong-import-position
from experiments import train  # pylint: disable=wrong-import-position

ROOT = pathlib.Path(__file__).parents[1]
# Syncs after steps 3, 6, 9, 12; evaluations at 6 and 12; checkpoints at 4,
# 8 and 12 (the last two kept). Step 8 is mid-period and mid-interval.
RUN = ['--dataset', 'digits', '--model', 'lenet300', '--batch-size', '32',
       '--k', '3', '--max-steps', '12', '--eval-every', '6',
       '--optimizer', 'laperm', '--no-progress', '--no-compile-cache',
       '--checkpoint-every', '4', '--mesh', 'data=2,model=2']
LAUNCH_TIMEOUT_S = 240
# Every figure of results.json but the timings and where it ran.
NOT_COMPARED = ('mesh', 'provenance', 'wall_time_s', 'train_time_s',
                'compile_time_s', 'steps_per_second')


def cli(args, timeout_s=LAUNCH_TIMEOUT_S):
  """Runs ``python -m experiments.train args``; children die with it."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', 'experiments.train', *args],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout_s, check=False)


def figures(out):
  results = json.loads((out / 'results.json').read_text())
  return {k: v for k, v in results.items() if k not in NOT_COMPARED}


def final_state(out):
  """Every array of the step-12 checkpoint (params, pool, Adam, counters)."""
  path = out / 'checkpoints' / '12' / 'state'
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as checkpointer:
    saved = checkpointer.metadata(path)
    target = jax.tree.map(  # written on 4 devices, read on this one
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        getattr(saved, 'item_metadata', saved))
    tree = checkpointer.restore(path, target)
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}




@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """1 process x 4 devices, 2 processes x 2 devices, and the latter resumed
  on 2 processes from its step-8 checkpoint."""
  root = tmp_path_factory.mktemp('processes')
  outs = {}
  for name, layout in (('one', ['--num-processes', '1']),
                       ('two', ['--num-processes', '2'])):
    outs[name] = root / name
    proc = cli(RUN + layout + ['--devices-per-process',
                               '4' if name == 'one' else '2',
                               '--out', str(outs[name])])
    assert proc.returncode == 0, proc.stderr[-3000:]
  outs['resumed'] = root / 'resumed'
  shutil.copytree(outs['two'] / 'checkpoints', outs['resumed'] / 'checkpoints')
  shutil.rmtree(outs['resumed'] / 'checkpoints' / '12')
  proc = cli(RUN + ['--num-processes', '2', '--devices-per-process', '2',
                    '--resume', '--out', str(outs['resumed'])])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'resuming from step 8' in proc.stderr, proc.stderr[-3000:]
  return outs


@pytest.mark.slow
def test_two_processes_match_one_process_with_as_many_devices(runs):
  one, two = (json.loads((runs[n] / 'results.json').read_text())
              for n in ('one', 'two'))
  assert one['mesh']['processes'] == 1 and two['mesh']['processes'] == 2
  assert one['mesh']['devices'] == two['mesh']['devices'] == 4
  assert figures(runs['two']) == figures(runs['one'])
  assert [h['step'] for h in two['history']] == [6, 12]
  ref, got = final_state(runs['one']), final_state(runs['two'])
  assert sorted(ref) == sorted(got)
  for key, value in ref.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_processes_but_the_first_write_and_print_nothing(tmp_path, monkeypatch,
                                                         capsys):
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  # The writes and prints of train.main do not depend on the optimizer or
  # the model: the cheapest run there is.
  assert train.main(['--preset', 'tiny_digits', '--model', 'f1',
                     '--max-steps', '2', '--optimizer', 'adam',
                     '--no-progress', '--no-compile-cache',
                     '--out', str(tmp_path)]) == 0
  assert not list(tmp_path.iterdir())
  assert capsys.readouterr().out == ''


@pytest.mark.slow
def test_resume_across_processes_is_bit_identical(runs):
  assert figures(runs['resumed'])['history'] == figures(runs['two'])['history']
  ref, got = final_state(runs['two']), final_state(runs['resumed'])
  for key, value in ref.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.parametrize('flags, message', [
    (['--mesh', 'data=8'], "--mesh 'data=8' needs 8 devices; 4 available"),
    (['--mesh', 'data=2'], "uses 2 devices; on 2 processes it must use all 4"),
    (['--mesh', 'data=4', '--batch-size', '30'],
     '--batch-size 30 must be a multiple of the data axis (4)'),
    (['--mesh', 'none'], '--mesh none trains on one device'),
])
def test_layout_that_does_not_fit_fails_before_any_process_starts(
    flags, message, monkeypatch, capsys):
  def started(*args, **kwargs):
    raise AssertionError('a process was started')
  monkeypatch.setattr(processes, 'start', started)
  with pytest.raises(SystemExit) as exit_info:
    train.main(['--preset', 'tiny_digits', '--num-processes', '2',
                '--devices-per-process', '2', *flags])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and message in err, err


def _children(pid):
  path = pathlib.Path(f'/proc/{pid}/task/{pid}/children')
  return [int(c) for c in path.read_text().split()] if path.exists() else []


def _process_id_of(pid):
  args = pathlib.Path(f'/proc/{pid}/cmdline').read_bytes().split(b'\0')
  return int(args[args.index(b'--process-id') + 1])


def _read_lines(stream):
  """A queue of the lines of ``stream`` as they come (None at its end)."""
  lines = queue.Queue()

  def read():
    for line in stream:
      lines.put(line)
    lines.put(None)
  threading.Thread(target=read, daemon=True).start()
  return lines


def _wait_for(lines, text, timeout_s):
  """Waits for a line of ``lines`` (a :func:`_read_lines` queue) that
  contains ``text``."""
  deadline, seen = time.monotonic() + timeout_s, []
  while not seen or text not in seen[-1]:
    line = lines.get(timeout=max(deadline - time.monotonic(), 0))
    assert line is not None, ''.join(seen)[-3000:]
    seen.append(line)


def _text(lines):
  """Everything left in ``lines`` (a :func:`_read_lines` queue), to its end."""
  return ''.join(iter(lambda: lines.get(timeout=30), None))


# Heavy (a two-process CLI run, killed): the launcher's own fail-fast runs in
# the default suite (test_multiprocess.py).
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='/proc')
def test_killed_process_ends_the_run_with_a_clear_error(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  with subprocess.Popen(
      [sys.executable, '-m', 'experiments.train', *RUN[:-4], '--max-steps',
       '100000', '--epochs', '1000', '--num-processes', '2', '--out', str(tmp_path)],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) as launcher:
    out, errors = _read_lines(launcher.stdout), _read_lines(launcher.stderr)
    try:
      # Process 0 prints its mesh once jax.distributed has joined both: the
      # processes are past it and on to the data and the compilation.
      _wait_for(out, 'training on all 2 devices', timeout_s=120)
      children = _children(launcher.pid)
      assert len(children) == 2, children
      victim = next(c for c in children if _process_id_of(c) == 1)
      os.kill(victim, signal.SIGKILL)
      launcher.wait(timeout=30)
    finally:
      if launcher.poll() is None:
        launcher.kill()
      err = _text(errors)
      _text(out)  # both pipes read to their end before they close
  assert launcher.returncode == 1, err[-3000:]
  assert 'error: process 1 exited with -9; the others were stopped.' in err
  assert not any(pathlib.Path(f'/proc/{c}').exists() for c in children)
