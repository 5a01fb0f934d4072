"""RESULTS.md's tables are what the committed result files say."""

import json
import shutil

from experiments import tables


def test_every_results_md_table_matches_its_files():
  with open(tables.RESULTS_MD, encoding='utf-8') as f:
    text = f.read()
  diffs = tables.differences(text, tables.Files())
  assert not diffs, ('RESULTS.md disagrees with experiments/results; run '
                     '`python -m experiments.tables`:\n' + '\n'.join(diffs))


def test_the_check_fails_on_an_edited_number_or_file(tmp_path):
  with open(tables.RESULTS_MD, encoding='utf-8') as f:
    text = f.read()
  # A hand edit of one number in a table is caught ...
  row = next(line for line in text.splitlines()
             if line.startswith('| LeNet-300-100 | mnist5k | 20 | 20 | 0 '))
  cells = row.split(' | ')
  cells[5] = '99.99' + cells[5][5:]  # LaPerm's final accuracy of the row
  edited = text.replace(row, ' | '.join(cells), 1)
  assert edited != text
  assert [d.split(':')[0] for d in tables.differences(
      edited, tables.Files())] == ["table 'dense'"]
  # ... and so is a result file that no longer says what the table says.
  root = tmp_path / 'results'
  shutil.copytree(tables.RESULTS_DIR, root,
                  ignore=shutil.ignore_patterns('*.png'))
  path = root / 'f1_mnist5k' / 'results.json'
  res = json.loads(path.read_text())
  res['final_test_accuracy'] += 0.001
  path.write_text(json.dumps(res))
  changed = {d.split(':')[0] for d in tables.differences(
      text, tables.Files(str(root)))}
  assert changed == {"table 'shared'", "table 'summary'"}
