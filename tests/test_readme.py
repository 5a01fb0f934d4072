"""The README's Python snippets run as written and check their own results."""

import pathlib
import re
import shlex

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
SNIPPETS = re.findall(r'```python\n(.*?)```', README.read_text(), re.DOTALL)


def test_readme_has_snippets():
  assert len(SNIPPETS) >= 2


@pytest.mark.parametrize('index', range(len(SNIPPETS)))
def test_readme_snippet_runs_and_checks_its_result(index):
  snippet = SNIPPETS[index]
  # A snippet that only runs proves little: each asserts what it shows.
  assert re.search(r'^assert ', snippet, re.MULTILINE), f'snippet {index} checks nothing'
  exec(compile(snippet, f'README.md snippet {index}', 'exec'), {})


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
