"""The README's Python snippets run as written and check their own results.

Each snippet runs once per module: the tests that check what a snippet built
read its namespace.
"""

import pathlib
import re
import shlex

import jax
import jax.numpy as jnp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
SNIPPETS = re.findall(r'```python\n(.*?)```', README.read_text(), re.DOTALL)


def test_readme_has_snippets():
  assert len(SNIPPETS) >= 2


def run(code: str, name: str) -> dict:
  """Runs ``code`` as a script named ``name``; returns its namespace."""
  namespace: dict = {}
  exec(compile(code, name, 'exec'), namespace)  # pylint: disable=exec-used
  return namespace


@pytest.fixture(scope='module')
def namespaces():
  """``index -> namespace`` of that README snippet, run on first use."""
  cache = {}

  def run_snippet(index):
    if index not in cache:
      cache[index] = run(SNIPPETS[index], f'README.md snippet {index}')
    return cache[index]
  return run_snippet


@pytest.mark.parametrize('index', range(len(SNIPPETS)))
def test_readme_snippet_runs_and_checks_its_result(namespaces, index):
  snippet = SNIPPETS[index]
  # A snippet that only runs proves little: each asserts what it shows.
  assert re.search(r'^assert ', snippet, re.MULTILINE), f'snippet {index} checks nothing'
  namespaces(index)


def test_equinox_example_sorts_rows_of_out_in_weights(namespaces):
  found = [i for i, code in enumerate(SNIPPETS) if 'eqx.partition' in code]
  assert len(found) == 1, f'one README example uses eqx.partition: {found}'
  ns = namespaces(found[0])
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


def commands(text: str) -> list[str]:
  """Executable lines of a shell script: no comments, blank or set-up lines."""
  out = []
  for line in text.splitlines():
    line = line.split(' #', 1)[0].strip()
    if not line or line.startswith('#'):
      continue
    if shlex.split(line)[0] in ('set', 'cd'):
      continue
    out.append(line)
  return out


def test_ci_runs_exactly_the_readme_test_command():
  bash = re.findall(r'```bash\n(.*?)```', README.read_text(), re.DOTALL)[0]
  readme_test = [c for c in commands(bash) if 'pytest' in c]
  assert len(readme_test) == 1, readme_test
  # A whole executable line of .ci/run (not a comment, not a substring).
  assert readme_test[0] in commands((ROOT / '.ci' / 'run').read_text())


def test_readme_docs_command_matches_ci():
  ci = (README.parent / '.ci' / 'run').read_text()
  docs_command = [line for line in README.read_text().splitlines()
                  if 'pip install -e ".[docs]"' in line]
  assert docs_command
  command = docs_command[0].split('. .venv/bin/activate && ', 1)[1]
  assert command in ci
