"""The Python examples on the docs pages (docs/**/*.md) run as written."""

import pathlib
import re

import jax
import jax.numpy as jnp
import pytest

import laperm_jax

DOCS = pathlib.Path(__file__).resolve().parents[1] / 'docs'
SNIPPETS = [(str(page.relative_to(DOCS)), index, code)
            for page in sorted(DOCS.rglob('*.md'))
            for index, code in enumerate(
                re.findall(r'```python\n(.*?)```', page.read_text(), re.S))]


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
  pools = [leaf for leaf in jax.tree.leaves(state.pool) if leaf.ndim == 2]
  weights = [layer.weight for layer in ns['model'].layers]
  assert [p.shape for p in pools] == [w.shape for w in weights]  # (out, in)
  for pool in pools:  # one vector per row (output unit): each row sorted
    assert bool(jnp.all(jnp.diff(pool, axis=-1) >= 0))
    assert not bool(jnp.all(jnp.diff(pool, axis=0) >= 0))
