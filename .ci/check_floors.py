"""Checks that the dependency floors are stated once and really installed.

Every dependency of pyproject.toml (runtime, test and experiments extras) must have a ">=" floor
equal to its "==" pin in .ci/floors.txt, and every pin must be a dependency. With --installed, the
installed versions must equal the pins (pip honoured the constraints file).
"""

import importlib.metadata
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXTRAS = ('test', 'experiments')
# Installed with jax, not declared: pinned so that jax finds its own jaxlib.
PINNED_ONLY = {'jaxlib'}


def canonical(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def declared_floors() -> dict[str, str]:
  project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
  requirements = list(project['dependencies'])
  for extra in EXTRAS:
    requirements += project['optional-dependencies'][extra]
  floors = {}
  for requirement in requirements:
    match = re.fullmatch(r'([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)', requirement)
    if not match:
      sys.exit(f'pyproject.toml: {requirement!r} is not of the form "name>=floor"')
    name, floor = canonical(match[1]), match[2]
    if floors.setdefault(name, floor) != floor:
      sys.exit(f'pyproject.toml: {name} has two floors, {floors[name]} and {floor}')
  return floors


def pins() -> dict[str, str]:
  pinned = {}
  for line in (ROOT / '.ci' / 'floors.txt').read_text().splitlines():
    line = line.split('#')[0].strip()
    if line:
      name, version = line.split('==')
      pinned[canonical(name)] = version.strip()
  return pinned


def main() -> None:
  floors, pinned = declared_floors(), pins()
  errors = []
  for name, floor in sorted(floors.items()):
    if pinned.get(name) != floor:
      errors.append(f'{name}: pyproject floor {floor}, .ci/floors.txt pin {pinned.get(name)}')
  for name in sorted(set(pinned) - set(floors) - PINNED_ONLY):
    errors.append(f'{name}: pinned in .ci/floors.txt but not a dependency in pyproject.toml')
  if '--installed' in sys.argv:
    for name, version in sorted(pinned.items()):
      try:
        installed = importlib.metadata.version(name)
      except importlib.metadata.PackageNotFoundError:
        installed = None
      if installed != version:
        errors.append(f'{name}: installed {installed}, pinned {version}')
  if errors:
    sys.exit('dependency floors out of step:\n  ' + '\n  '.join(errors))
  print(f'floors consistent: {len(pinned)} pins' +
        (', all installed at exactly the pin' if '--installed' in sys.argv else ''))


if __name__ == '__main__':
  main()
