"""JAX's persistent compilation cache for the experiments CLI.

On by default in ``python -m experiments.train`` (and the other CLIs that
call :func:`enable`), so that a second run of a configuration loads its
programs instead of compiling them. The cache lives in the user's cache
directory, ``$XDG_CACHE_HOME/laperm_jax/jax`` (``~/.cache/laperm_jax/jax``
when ``XDG_CACHE_HOME`` is unset). ``--no-compile-cache``, or the environment
variable ``LAPERM_JAX_COMPILE_CACHE=0`` (which the test suite sets), turns it
off. Results do not depend on it: a cached program is the compiled program.
"""

from __future__ import annotations

import os

import jax

ENV_SWITCH = 'LAPERM_JAX_COMPILE_CACHE'


def default_directory() -> str:
  """The cache directory: ``$XDG_CACHE_HOME/laperm_jax/jax``.

  >>> import os
  >>> default_directory().endswith(os.path.join('laperm_jax', 'jax'))
  True
  """
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'laperm_jax', 'jax')


def disabled_by_environment() -> bool:
  """Whether ``LAPERM_JAX_COMPILE_CACHE`` is set to 0, off, false or no."""
  return os.environ.get(ENV_SWITCH, '').strip().lower() in ('0', 'off',
                                                            'false', 'no')


def enable(directory: str | None = None) -> str | None:
  """Turns the persistent cache on (every program, however fast it compiles).

  Returns the directory used, or None when the environment turns it off.
  """
  if disabled_by_environment():
    return None
  directory = directory or default_directory()
  os.makedirs(directory, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return directory
