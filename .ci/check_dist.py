"""Checks what the built sdist and wheel in DIST_DIR contain.

The wheel must hold the ``laperm_jax`` package and its dist-info only (no ``experiments``, tests or
other top-level packages), with the licence file and PEP 639 licence metadata; the sdist must hold
the library, the licence and the metadata, and nothing from experiments/, benchmarks/, examples/,
docs/ or tests/. Usage: python .ci/check_dist.py DIST_DIR
"""

import email.parser
import pathlib
import re
import sys
import tarfile
import tomllib
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
VERSION = re.search(r"^__version__ = '([^']+)'",
                    (ROOT / 'laperm_jax' / '__init__.py').read_text(), re.MULTILINE)[1]
PACKAGE_FILES = sorted(p.relative_to(ROOT).as_posix()
                       for p in (ROOT / 'laperm_jax').rglob('*')
                       if p.is_file() and '__pycache__' not in p.parts)
REQUIRES_PYTHON = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['requires-python']


def check_metadata(text: str, where: str, errors: list[str]) -> None:
  meta = email.parser.Parser().parsestr(text)
  expected = {'Name': 'laperm_jax', 'Version': VERSION, 'License-Expression': 'MIT',
              'License-File': 'LICENSE', 'Requires-Python': REQUIRES_PYTHON}
  for key, value in expected.items():
    if meta.get(key) != value:
      errors.append(f'{where}: {key} is {meta.get(key)!r}, expected {value!r}')
  if not meta.get('Keywords') or not meta.get_all('Classifier'):
    errors.append(f'{where}: keywords or classifiers missing')
  if any(c.startswith('License ::') for c in meta.get_all('Classifier') or []):
    errors.append(f'{where}: a License classifier beside License-Expression (PEP 639)')
  requires = meta.get_all('Requires-Dist') or []
  if any(r.startswith('jaxlib') for r in requires):
    errors.append(f'{where}: jaxlib is listed; jax brings its own')


def check_wheel(path: pathlib.Path, errors: list[str]) -> None:
  dist_info = f'laperm_jax-{VERSION}.dist-info'
  with zipfile.ZipFile(path) as wheel:
    names = wheel.namelist()
    strays = [n for n in names
              if not n.startswith(('laperm_jax/', dist_info + '/'))]
    if strays:
      errors.append(f'{path.name}: files outside laperm_jax/ and {dist_info}/: {strays}')
    package = sorted(n for n in names if n.startswith('laperm_jax/'))
    if package != PACKAGE_FILES:
      errors.append(f'{path.name}: package files {package} != the checkout\'s {PACKAGE_FILES}')
    licence = f'{dist_info}/licenses/LICENSE'
    if licence not in names:
      errors.append(f'{path.name}: no {licence}')
    elif wheel.read(licence) != (ROOT / 'LICENSE').read_bytes():
      errors.append(f'{path.name}: {licence} differs from LICENSE')
    check_metadata(wheel.read(f'{dist_info}/METADATA').decode(), path.name, errors)


def check_sdist(path: pathlib.Path, errors: list[str]) -> None:
  top = f'laperm_jax-{VERSION}/'
  with tarfile.open(path) as sdist:
    names = [n[len(top):] for n in sdist.getnames() if n.startswith(top)]
    for required in ['LICENSE', 'README.md', 'CHANGELOG.md', 'pyproject.toml', 'PKG-INFO',
                     *PACKAGE_FILES]:
      if required not in names:
        errors.append(f'{path.name}: {required} missing')
    for name in names:
      if name.split('/')[0] in {'experiments', 'benchmarks', 'examples', 'docs', 'tests', '.ci'}:
        errors.append(f'{path.name}: {name} should not be in the sdist')
    check_metadata(sdist.extractfile(top + 'PKG-INFO').read().decode(), path.name, errors)


def main() -> None:
  dist = pathlib.Path(sys.argv[1])
  wheels, sdists = sorted(dist.glob('*.whl')), sorted(dist.glob('*.tar.gz'))
  if len(wheels) != 1 or len(sdists) != 1:
    sys.exit(f'{dist}: expected one wheel and one sdist, found {wheels + sdists}')
  errors: list[str] = []
  check_wheel(wheels[0], errors)
  check_sdist(sdists[0], errors)
  if errors:
    sys.exit('distribution check failed:\n  ' + '\n  '.join(errors))
  print(f'{wheels[0].name}: laperm_jax/ ({len(PACKAGE_FILES)} files) and its dist-info with '
        f'the licence only; {sdists[0].name}: library, licence, metadata')


if __name__ == '__main__':
  main()
