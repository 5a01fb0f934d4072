"""Suite-wide settings: no user compilation cache, hypothesis profiles, and
how xdist shares work.

The suite never writes to the user's compilation cache (nor reads it).

Property tests take their number of examples from a hypothesis profile:
'default' (10 examples) or 'thorough' (25, what CI runs), chosen by the
HYPOTHESIS_PROFILE environment variable.

Some modules run one expensive module fixture (a subprocess launch, a
training run) that all their tests read. pytest-xdist must send such a module
to a single worker, or each worker that gets one of its tests runs the
fixture again. The scheduler below keeps those modules whole and spreads
every other test on its own.
"""

import os
import pathlib
import re

import hypothesis
import pytest

os.environ['LAPERM_JAX_COMPILE_CACHE'] = '0'

hypothesis.settings.register_profile('default', max_examples=10)
hypothesis.settings.register_profile('thorough', max_examples=25)
hypothesis.settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE',
                                                'default'))

def modules_sharing_a_fixture(directory: pathlib.Path) -> frozenset[str]:
  """The test modules of ``directory`` that define a module-scoped fixture."""
  pattern = re.compile(r"""fixture\(scope=['"]module['"]""")
  return frozenset(path.name for path in directory.glob('test_*.py')
                   if pattern.search(path.read_text()))


SHARED_FIXTURE_MODULES = modules_sharing_a_fixture(pathlib.Path(__file__).parent)


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
  """Under ``--dist load`` (the default), schedules by :func:`scope_of`."""
  if config.getvalue('dist') != 'load':
    return None
  from xdist.scheduler import LoadScopeScheduling  # pylint: disable=import-outside-toplevel

  class SharedFixtureScheduling(LoadScopeScheduling):

    def _split_scope(self, nodeid: str) -> str:
      return scope_of(nodeid)

  return SharedFixtureScheduling(config, log)
