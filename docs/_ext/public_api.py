"""The ``public-api`` directive: documents every name in a package's ``__all__``.

``.. public-api:: laperm_jax`` expands to a summary table and one autodoc entry per public name,
addressed as ``laperm_jax.NAME``. Nothing depends on the module a name is defined in, so the page
follows ``__all__`` when names are added or internal modules are renamed. A public name without a
docstring is reported as a warning (an error under ``-W``).
"""

import importlib
import inspect
import typing

from docutils import nodes
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)


def _entry(package: str, name: str, obj) -> list[str]:
  if obj is typing.Any or typing.get_origin(obj) is not None:  # a type alias
    kind = 'autodata'
  elif inspect.isclass(obj):
    kind = 'autoclass'
  elif callable(obj):
    kind = 'autofunction'
  else:
    kind = 'autodata'
  return [f'.. {kind}:: {package}.{name}', '']


class PublicApi(SphinxDirective):
  """Summary table plus autodoc entries for ``package.__all__``."""

  required_arguments = 1
  has_content = False

  def run(self) -> list[nodes.Node]:
    package = self.arguments[0]
    module = importlib.import_module(package)
    names = list(getattr(module, '__all__', ()))
    if not names:
      logger.warning('%s has no __all__: no public API to document', package,
                     location=self.get_location())
      return []
    lines = [f'.. currentmodule:: {package}', '', '.. autosummary::', '']
    lines += [f'   {name}' for name in names]
    lines.append('')
    for name in names:
      obj = getattr(module, name)
      if not inspect.getdoc(obj):
        logger.warning('public name %s.%s has no docstring', package, name,
                       location=self.get_location())
      lines += _entry(package, name, obj)
    return self.parse_text_to_nodes('\n'.join(lines))


def setup(app):
  app.add_directive('public-api', PublicApi)
  return {'parallel_read_safe': True, 'parallel_write_safe': True}
