"""Where a result came from: code version, library versions, machine.

``collect()`` is recorded as ``provenance`` in every results.json:

* ``git``: the commit of the checkout and whether tracked files differed from
  it (``dirty``), or None outside a git checkout;
* ``versions``: Python, jax, jaxlib, optax, flax, numpy, laperm_jax;
* ``machine``: the backend and, on CPU, the CPU model, the cores this process
  may use, ``XLA_FLAGS`` and the target XLA compiled for: the LLVM CPU name
  and the instruction-set features it enabled (read from a compiled
  executable: ``--xla_cpu_max_isa`` lowers them); on an accelerator, the
  device kind and count.

LaPerm's sync turns last-bit differences of floating point into different
rank decisions, so a run is bit-identical only where ``machine`` is
(``experiments.reproduce`` compares them).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import re
import subprocess

import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('jax', 'jaxlib', 'optax', 'flax', 'numpy', 'laperm_jax')


def git_state(root: str = ROOT) -> dict | None:
  """{'commit': sha, 'dirty': bool} of the checkout at ``root``, or None."""
  def git(*args):
    return subprocess.run(['git', '-C', root, *args], capture_output=True,
                          text=True, check=True, timeout=30).stdout.strip()
  try:
    commit = git('rev-parse', 'HEAD')
    dirty = bool(git('status', '--porcelain', '--untracked-files=no'))
  except (OSError, subprocess.SubprocessError):
    return None
  return dict(commit=commit, dirty=dirty)


def versions() -> dict:
  out = dict(python=platform.python_version())
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def xla_cpu_target() -> dict | None:
  """The LLVM target XLA:CPU compiles for: {'cpu': name, 'features': [...]}.

  Read from a serialized executable of a tiny program (the target is stored
  with it); None when it cannot be read.
  """
  try:
    from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
    compiled = jax.jit(lambda x: x + 1).lower(jnp.ones(4)).compile()
    blob = xla_bridge.get_backend('cpu').serialize_executable(
        compiled.runtime_executable())
  except Exception:  # noqa: BLE001 (provenance is best effort, never fatal)
    return None
  features = max(re.findall(rb'(?:[+-][a-z0-9_.-]+,)+[+-][a-z0-9_.-]+', blob),
                 key=len, default=b'')
  enabled = sorted(f[1:].decode() for f in features.split(b',')
                   if f.startswith(b'+'))
  triple = re.search(rb'(x86_64|aarch64|arm64|powerpc64le|s390x)[a-z0-9_-]*'
                     rb'\x12([\x01-\x7f])', blob)
  cpu = None
  if triple:
    start = triple.end()
    cpu = blob[start:start + triple.group(2)[0]].decode(errors='replace')
  return dict(cpu=cpu, features=enabled) if enabled else None


@functools.cache
def machine() -> dict:
  backend = jax.default_backend()
  out = dict(backend=backend, platform=platform.machine())
  if backend == 'cpu':
    try:
      cores = len(os.sched_getaffinity(0))
    except AttributeError:
      cores = os.cpu_count()
    out.update(cpu_model=_cpu_model(), cores=cores,
               xla_flags=os.environ.get('XLA_FLAGS', ''),
               xla_target=xla_cpu_target())
  else:
    devices = jax.devices()
    out.update(device_kind=devices[0].device_kind, devices=len(devices),
               xla_flags=os.environ.get('XLA_FLAGS', ''))
  return out


def collect() -> dict:
  return dict(git=git_state(), versions=versions(), machine=machine())


def same_machine(recorded: dict | None, current: dict) -> tuple[bool | None,
                                                                 str]:
  """Whether two ``machine`` records can give the same bits, and why not.

  Compared: backend, CPU model and XLA's compile target (CPU name and
  features), or the accelerator kind. The number of cores is not compared
  (on these CPU runs it does not change the bits). None: nothing recorded.
  """
  if not recorded:
    return None, 'the result file records no machine (recorded before ' \
                 'provenance was kept)'
  keys = (('backend', 'cpu_model', 'xla_target') if current.get('backend') ==
          'cpu' else ('backend', 'device_kind'))
  differ = [k for k in keys if recorded.get(k) != current.get(k)]
  if not differ:
    return True, 'same machine'
  parts = []
  for k in differ:
    a, b = recorded.get(k), current.get(k)
    if k == 'xla_target' and a and b:
      only_a = sorted(set(a['features']) - set(b['features']))
      only_b = sorted(set(b['features']) - set(a['features']))
      parts.append(f'XLA target {a["cpu"]} -> {b["cpu"]} (features only '
                   f'recorded: {", ".join(only_a) or "none"}; only here: '
                   f'{", ".join(only_b) or "none"})')
    else:
      parts.append(f'{k} {a!r} -> {b!r}')
  return False, '; '.join(parts)
