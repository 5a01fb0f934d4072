"""The Python examples on the docs pages (docs/**/*.md) run as written."""

import pathlib
import re

import jax
import jax.numpy as jnp
import pytest

import laperm_jax

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


def _run(code, name):
  namespace = {}
  exec(compile(code, name, 'exec'), namespace)  # pylint: disable=exec-used
  return namespace


@pytest.mark.parametrize('page, index, code', SNIPPETS,
                         ids=[f'{p}:{i}' for p, i, _ in SNIPPETS])
def test_docs_snippet_runs(page, index, code):
  _run(code, f'docs/{page} snippet {index}')


def _snippet(needle):
  found = [(p, i, c) for p, i, c in SNIPPETS if needle in c]
  assert len(found) == 1, f'one docs example uses {needle}, found {len(found)}'
  return found[0]


def test_linen_example_trains_one_step_and_exports_exact_values():
  page, index, code = _snippet('train_state.TrainState.create')
  ns = _run(code, f'docs/{page} snippet {index}')
  state = ns['state']
  assert int(state.step) == 1
  assert int(state.opt_state.count) == 1
  pool = state.opt_state.pool
  assert all(jax.tree.leaves(laperm_jax.is_permutation_of_pool(ns['exact'], pool)))


def test_equinox_example_sorts_rows_of_out_in_weights():
  page, index, code = _snippet('eqx.partition')
  ns = _run(code, f'docs/{page} snippet {index}')
  state = ns['opt_state']
  assert int(state.count) == 1
  pools = [leaf for leaf in jax.tree.leaves(state.pool) if leaf.ndim >= 2]
  weights = [layer.weight for layer in ns['model'].layers
             if hasattr(layer, 'weight')]
  assert [p.shape for p in pools] == [w.shape for w in weights]  # (out, ...)
  for pool in pools:  # one vector per output unit: all axes but the first
    rows = pool.reshape(pool.shape[0], -1)
    assert bool(jnp.all(jnp.diff(rows, axis=-1) >= 0))
    assert not bool(jnp.all(jnp.diff(rows, axis=0) >= 0))


def test_every_section_title_appears_once_per_page():
  for page in sorted(DOCS.rglob('*.md')):
    prose = re.sub(r'```.*?```', '', rendered_text(page), flags=re.DOTALL)
    titles = re.findall(r'^#+ .*$', prose, re.MULTILINE)
    repeated = sorted({t for t in titles if titles.count(t) > 1})
    assert not repeated, f'docs/{page.relative_to(DOCS)} repeats {repeated}'
