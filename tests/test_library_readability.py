"""The library stays readable against the paper: short functions."""

import ast
import pathlib

import pytest

LIBRARY = pathlib.Path(__file__).resolve().parent.parent / 'laperm_jax'
MAX_BODY_LINES = 70


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
  """Lines of a function from its first statement after the docstring."""
  body = node.body
  if (isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
      and isinstance(body[0].value.value, str) and len(body) > 1):
    body = body[1:]
  return node.end_lineno - body[0].lineno + 1


def _functions(path: pathlib.Path):
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield node


@pytest.mark.parametrize('path', sorted(LIBRARY.glob('*.py')),
                         ids=lambda p: p.name)
def test_no_library_function_is_longer_than_70_lines(path):
  long = {f.name: _body_lines(f) for f in _functions(path)
          if _body_lines(f) > MAX_BODY_LINES}
  assert not long, f'{path.name}: functions over {MAX_BODY_LINES} lines: {long}'


def test_body_lines_skip_the_docstring():
  source = 'def f():\n  """Doc.\n\n  More.\n  """\n  a = 1\n  return a\n'
  (node,) = [n for n in ast.walk(ast.parse(source))
             if isinstance(n, ast.FunctionDef)]
  assert _body_lines(node) == 2
