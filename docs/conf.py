"""Sphinx configuration for the laperm_jax documentation.

Build (from the repository root): ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.

Sphinx rather than mkdocs: autodoc + napoleon read the Google-style docstrings as they are, the
``>>>`` examples render as doctest blocks, and optax, flax and jax publish their API docs the same
way. MyST lets the Markdown files of the repository (README sections, RESULTS.md, BENCHMARKS.md,
CHANGELOG.md) be included rather than copied.
"""

import os
import sys

sys.path.insert(0, os.path.abspath('_ext'))

import laperm_jax  # pylint: disable=wrong-import-position

project = 'laperm_jax'
author = 'laperm_jax authors'
copyright = '2026, laperm_jax authors'  # pylint: disable=redefined-builtin
release = laperm_jax.__version__
version = release

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
    'myst_parser',
    'public_api',
]

source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
exclude_patterns = ['_build']
root_doc = 'index'

# Docstrings: Google style (Args / Returns / Raises / Example / References).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = False  # field types are in the class signature
autodoc_typehints = 'signature'
autodoc_typehints_format = 'short'
autodoc_member_order = 'bysource'
# Signatures name the aliases of laperm_jax._typing (exported by laperm_jax)
# rather than expanding them into pytree unions.
autodoc_type_aliases = {
    name: f'laperm_jax.{name}'
    for name in ('PyTree', 'Mask', 'VectorAxes', 'SyncPeriod')
}
autosummary_generate = False

# Every cross-reference must resolve: a broken :func:`...` to a laperm_jax name fails the
# build (with -W). References into other libraries cannot be checked offline (no intersphinx:
# CI has no network), so only those are exempt.
nitpicky = True
nitpick_ignore_regex = [
    (r'py:.*', r'(jax|jaxlib|optax|numpy|np|chex|flax|equinox)(\..*)?'),
    (r'py:.*', r'(typing|collections\.abc)\..*'),
    (r'py:.*', r'(Array|ArrayTree|GradientTransformation|GradientTransformationExtraArgs|'
               r'OptState|PyTree|Params|Any|Callable|Iterable|Mapping|ForwardRef|'
               r'TypeAliasForwardRef|Union|'
               r'Optional|Sequence|NamedTuple)'),
    (r'py:.*', r'(int|float|bool|complex|str|None|tuple|list|dict)'),
]

myst_heading_anchors = 3
myst_enable_extensions = ['colon_fence']

html_theme = 'furo'  # the look of optax's and flax's docs: light/dark, sidebar, search
html_title = f'laperm_jax {release}'
html_static_path = ['_static']
html_css_files = ['wide.css']  # a wider text column for the tables and code
