"""The README's Python snippets run as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'
SNIPPETS = re.findall(r'```python\n(.*?)```', README.read_text(), re.S)


def test_readme_has_snippets():
  assert len(SNIPPETS) >= 2


@pytest.mark.parametrize('index', range(len(SNIPPETS)))
def test_readme_snippet_runs(index):
  exec(compile(SNIPPETS[index], f'README.md snippet {index}', 'exec'), {})


def test_readme_commands_match_ci():
  ci = (README.parent / '.ci' / 'run').read_text()
  test_command = [line for line in README.read_text().splitlines()
                  if 'pip install -e ".[test,experiments]"' in line]
  assert test_command and test_command[0].strip() in ci


def test_readme_docs_command_matches_ci():
  ci = (README.parent / '.ci' / 'run').read_text()
  docs_command = [line for line in README.read_text().splitlines()
                  if 'pip install -e ".[docs]"' in line]
  assert docs_command
  command = docs_command[0].split('. .venv/bin/activate && ', 1)[1]
  assert command in ci
