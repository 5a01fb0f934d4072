"""The Python examples on the docs pages (docs/**/*.md) run as written.

The pages include the README's examples; those run in ``test_readme.py``,
once. Here run the examples of the docs alone, each once per module: the
tests that check what an example built read its namespace.
"""

import pathlib
import re

import jax
import pytest

import laperm_jax
from tests import test_readme

DOCS = pathlib.Path(__file__).resolve().parents[1] / 'docs'
INCLUDE = re.compile(r'```\{include\} (\S+)\n((?::[\w-]+:.*\n)*)```')


def rendered_text(page: pathlib.Path) -> str:
  """A docs page with its MyST ``{include}`` blocks replaced by what they include."""
  def expand(match):
    options = dict(re.findall(r':([\w-]+): (.*)', match.group(2)))
    text = (page.parent / match.group(1)).read_text()
    if 'start-after' in options:
      text = text.split(options['start-after'], 1)[1]
    if 'end-before' in options:
      text = text.split(options['end-before'], 1)[0]
    return text
  return INCLUDE.sub(expand, page.read_text())


SNIPPETS = [(str(page.relative_to(DOCS)), index, code)
            for page in sorted(DOCS.rglob('*.md'))
            for index, code in enumerate(
                re.findall(r'```python\n(.*?)```', rendered_text(page), re.DOTALL))]
CODE = {(page, index): code for page, index, code in SNIPPETS}
DOCS_ONLY = [(page, index, code) for page, index, code in SNIPPETS
             if code not in test_readme.SNIPPETS]


@pytest.fixture(scope='module')
def namespaces():
  """``(page, index) -> namespace`` of that example, run on first use."""
  cache = {}

  def run(page, index):
    if (page, index) not in cache:
      cache[page, index] = test_readme.run(CODE[page, index],
                                           f'docs/{page} snippet {index}')
    return cache[page, index]
  return run


@pytest.mark.parametrize('page, index', [(p, i) for p, i, _ in DOCS_ONLY],
                         ids=[f'{p}:{i}' for p, i, _ in DOCS_ONLY])
def test_docs_snippet_runs(namespaces, page, index):
  namespaces(page, index)


def test_linen_example_trains_one_step_and_exports_exact_values(namespaces):
  found = [(p, i) for p, i, c in DOCS_ONLY
           if 'train_state.TrainState.create' in c]
  assert len(found) == 1, f'one docs example uses TrainState, found {found}'
  ns = namespaces(*found[0])
  state = ns['state']
  assert int(state.step) == 1
  assert int(state.opt_state.count) == 1
  pool = state.opt_state.pool
  assert all(jax.tree.leaves(laperm_jax.is_permutation_of_pool(ns['exact'], pool)))


def test_every_section_title_appears_once_per_page():
  for page in sorted(DOCS.rglob('*.md')):
    prose = re.sub(r'```.*?```', '', rendered_text(page), flags=re.DOTALL)
    titles = re.findall(r'^#+ .*$', prose, re.MULTILINE)
    repeated = sorted({t for t in titles if titles.count(t) > 1})
    assert not repeated, f'docs/{page.relative_to(DOCS)} repeats {repeated}'
