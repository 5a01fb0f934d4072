"""Suite-wide settings: a compilation cache of the session's own, hypothesis
profiles, and how xdist shares work.

The suite never writes to the user's compilation cache (nor reads it). It
keeps its own, in a fresh temporary directory that lives as long as the
session: the workers and every process the tests start share the programs
they compile (many CLI runs compile the same small models). A cached program
is the compiled program. A test that claims something about compiling itself
(that a fresh process computes the same bits) starts its processes with
``JAX_ENABLE_COMPILATION_CACHE=false``.

Property tests take their number of examples from a hypothesis profile:
'default' (10 examples) or 'thorough' (25, what CI runs), chosen by the
HYPOTHESIS_PROFILE environment variable.

Some modules run one expensive module fixture (a subprocess launch, a
training run) that all their tests read. pytest-xdist must send such a module
to a single worker, or each worker that gets one of its tests runs the
fixture again. The scheduler below keeps those modules whole and spreads
every other test on its own.
"""

import atexit
import os
import pathlib
import re
import shutil
import tempfile

import hypothesis
import pytest

os.environ['LAPERM_JAX_COMPILE_CACHE'] = '0'  # the CLI's user cache: off
SESSION_CACHE = 'LAPERM_JAX_TEST_SESSION_CACHE'


def use_a_session_compile_cache() -> None:
  """Points JAX at this session's cache, made by the first process (the
  xdist controller, whose environment the workers inherit)."""
  directory = os.environ.get(SESSION_CACHE)
  if directory is None or not os.path.isdir(directory):
    directory = tempfile.mkdtemp(prefix='laperm-jax-tests-')
    os.environ[SESSION_CACHE] = directory
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = directory
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'


use_a_session_compile_cache()

hypothesis.settings.register_profile('default', max_examples=10)
hypothesis.settings.register_profile('thorough', max_examples=25)
hypothesis.settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE',
                                                'default'))

def modules_sharing_a_fixture(directory: pathlib.Path) -> frozenset[str]:
  """The test modules of ``directory`` that define a module-scoped fixture."""
  pattern = re.compile(r"""fixture\(scope=['"]module['"]""")
  return frozenset(path.name for path in directory.glob('test_*.py')
                   if pattern.search(path.read_text()))


def modules_starting_processes(directory: pathlib.Path) -> frozenset[str]:
  """The test modules of ``directory`` that start other processes."""
  return frozenset(path.name for path in directory.glob('test_*.py')
                   if 'subprocess' in path.read_text())


SHARED_FIXTURE_MODULES = modules_sharing_a_fixture(pathlib.Path(__file__).parent)
# Their tests take the longest: they run first, so that no worker is left
# with one of them at the end while the others have finished.
HEAVY_MODULES = SHARED_FIXTURE_MODULES | modules_starting_processes(
    pathlib.Path(__file__).parent)


def pytest_collection_modifyitems(items):
  """The tests of :data:`HEAVY_MODULES` first, in their collected order."""
  items.sort(key=lambda item: item.nodeid.split('::', 1)[0].rsplit(
      '/', 1)[-1] not in HEAVY_MODULES)


def scope_of(nodeid: str) -> str:
  """The xdist work unit of a test: its module when the module shares a
  fixture, else the test itself.

  >>> scope_of('tests/test_sharding.py::test_a[x]')
  'tests/test_sharding.py'
  >>> scope_of('tests/test_transform.py::test_b')
  'tests/test_transform.py::test_b'
  """
  module = nodeid.split('::', 1)[0]
  if module.rsplit('/', 1)[-1] in SHARED_FIXTURE_MODULES:
    return module
  return nodeid


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  """Under ``--dist load`` (the default), schedules by :func:`scope_of`, in
  the collected order."""
  if config.getvalue('dist') != 'load':
    return None
  # Work units go out in the collected order (heavy modules first), not
  # sorted by their number of tests.
  if hasattr(config.option, 'loadscopereorder'):
    config.option.loadscopereorder = False
  from xdist.scheduler import LoadScopeScheduling  # pylint: disable=import-outside-toplevel

  class SharedFixtureScheduling(LoadScopeScheduling):

    def _split_scope(self, nodeid: str) -> str:
      return scope_of(nodeid)

  return SharedFixtureScheduling(config, log)
