"""Markdown tables from the committed GPU result files (no hand-typed numbers).

Run ``python -m benchmarks.gpu_report [--training] [RESULT_DIR ...]``; by
default every ``benchmarks/results/gpu-*`` directory, newest run first.
BENCHMARKS.md's GPU section is its output, RESULTS.md's GPU section the
output of ``--training``, each between ``gpu_report`` markers;
``tests/test_gpu_report.py`` checks that they still agree with the files.
"""

from __future__ import annotations

import glob
import json
import os
import sys

RESULTS = os.path.join(os.path.dirname(__file__), 'results')
FLOOR = 'floor: int32 sort'
AUTO = 'reconnect_rows[auto]'


def load(directory: str) -> dict:
  """gpu.json, corrected by provenance.json where a run recorded a fact wrong.

  The raw files stay as the device wrote them; provenance.json says what
  was wrong and why.
  """
  with open(os.path.join(directory, 'gpu.json'), encoding='utf-8') as f:
    report = json.load(f)
  path = os.path.join(directory, 'provenance.json')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      provenance = json.load(f)
    report['machine']['commit'] = provenance.get(
        'commit', report['machine']['commit'])
    report['provenance'] = provenance
  junit = os.path.join(directory, 'pytest.xml')
  if not (report.get('tests') or {}).get('available') and os.path.exists(
      junit):
    from benchmarks import gpu
    report['tests'] = dict(gpu.junit_summary(junit), command=None)
  return report


def header(name: str, report: dict) -> str:
  machine = report['machine']
  return (f'Run `{name}`: {machine["nvidia_smi"]}, jax {machine["jax"]} '
          f'({machine["backend"]}), commit `{machine["commit"][:7]}`.')


NON_MINOR = 'keyed_cosort, non-minor axis (kernel layout)'


def reconnect_table(report: dict) -> str:
  rec = report['reconnect']
  variants = [f'reconnect_rows[{v}]' for v in rec['variants']]
  # The GPU default's sorts along the kernels' non-minor axis (no
  # transposes): a column when the run timed them.
  no_transposes = [NON_MINOR] if any(
      NON_MINOR in m['paired_ratio_to_floor']
      for m in rec['models'].values()) else []
  columns = variants + ['laperm_jax.reconnect (kernel layout)'] + (
      no_transposes) + ['jnp.argsort float + scatter',
                        'original formulation (JAX)']
  short = {c: c.replace('reconnect_rows', '').replace(
      'laperm_jax.reconnect (kernel layout)', 'public reconnect').replace(
          NON_MINOR, 'public, no transposes').replace(
          'jnp.argsort float + scatter', 'argsort+scatter').replace(
              'original formulation (JAX)', 'original') for c in columns}
  lines = ['| model | weights | floor ms | ' +
           ' | '.join(short[c] for c in columns) +
           ' | original / auto | bit-identical |',
           '|---|---:|---:|' + '---:|' * len(columns) + '---:|---|']
  for name, m in rec['models'].items():
    cells = [f'{m["paired_ratio_to_floor"][c]:.2f}'
             if c in m['paired_ratio_to_floor'] else '-' for c in columns]
    same = all(m['bit_identical_to_auto'].values())
    lines.append(f'| {name} | {m["weights"]:,} | '
                 f'{m["ms"][FLOOR]["min"]:.3f} | ' + ' | '.join(cells) +
                 f' | {m["original_over_auto"]:.2f} | {same} |')
  choice = rec.get('choice')
  if choice:
    per = ', '.join(f'{v} {s["geomean"]:.2f} (worst {s["worst"]:.2f})'
                    for v, s in choice['per_variant'].items())
    lines.append('')
    lines.append(f'Chosen: **{choice["chosen"]}** ({choice["rule"]}): {per}.')
  return '\n'.join(lines)


# laperm with the inner update passed through the cond
# (benchmarks/train_step.py's THROUGH_COND): a column when the run timed it.
THROUGH_COND = 'laperm non-sync, updates through the cond'


def train_step_table(report: dict) -> str:
  ts = report.get('train_step') or {}
  through = any(THROUGH_COND in e['ratio_to_plain']['paired_median']
               for e in ts.values())
  lines = ['| model | params | batch | plain ms | non-sync / plain | ' +
           ('non-sync through the cond / plain | ' if through else '') + 'sync / '
           'plain | amortised at k | k | period: LaPerm / plain | period: '
           'non-sync / plain | param-sized copies in the non-sync step |',
           '|---|---:|---:|---:|---:|' + ('---:|' if through else '') +
           '---:|---:|---:|---:|---:|---:|']
  for name, e in ts.items():
    paired = e['ratio_to_plain']['paired_median']
    minima = e['ratio_to_plain']['minima']
    period = e.get('periods')
    copies = e.get('param_sized_copies_in_laperm_step')
    lines.append(
        f'| {name} | {e["params"]:,} | {e["batch"]} | '
        f'{e["step_ms"]["plain"]["min"]:.3f} | '
        f'{paired["laperm non-sync"]:.3f} ({minima["laperm non-sync"]:.3f}) | '
        + (f'{paired[THROUGH_COND]:.3f} ({minima[THROUGH_COND]:.3f}) | '
           if through and THROUGH_COND in paired else '- | ' if through
           else '') +
        f'{paired["laperm sync"]:.2f} ({minima["laperm sync"]:.2f}) | '
        f'{e["amortised_at_k"]["paired_median"]:.3f} '
        f'({e["amortised_at_k"]["minima"]:.3f}) | {e["k"]} | ' +
        (f'{period["ratio_to_plain_paired"]["laperm"]:.3f} '
         f'({period["ratio_to_plain_minima"]["laperm"]:.3f}) | '
         f'{period["ratio_to_plain_paired"]["laperm non-sync"]:.3f} '
         f'({period["ratio_to_plain_minima"]["laperm non-sync"]:.3f})'
         if period else '- | -') +
        f' | {"not counted" if copies is None else len(copies)} |')
  lines.append('')
  lines.append('Ratios: paired median over rounds (ratio of minima in '
               'parentheses).')
  return '\n'.join(lines)


def tests_line(report: dict) -> str:
  t = report.get('tests') or {}
  if not t.get('available'):
    return f'Tests: not run or no report ({t.get("status") or t.get("exit")}).'
  failed = ''.join(f'; failed: `{f["test"]}`' for f in t['failed'])
  command = f' (`python {t["command"]}`)' if t.get('command') else ''
  return (f'Tests on the GPU backend: {t["tests"]} run, {t["failures"]} '
          f'failed, {t["errors"]} errors, {t["skipped"]} skipped, '
          f'{t["time_s"]:.0f} s{command}{failed}.')


def conv7_table(report: dict) -> str:
  c = report.get('conv7_fashion') or {}
  runs = c.get('runs') or {}
  if not runs:
    return 'Conv7 on Fashion-MNIST: not run.'
  lines = ['| optimizer | epochs | final test accuracy | best (test-selected) '
           '| exact permutation | train s | wall s |',
           '|---|---:|---:|---:|---|---:|---:|']
  for opt, r in runs.items():
    lines.append(f'| {opt} | {r["epochs"]:g} | '
                 f'{100 * r["final_test_accuracy"]:.2f}% | '
                 f'{100 * r["best_test_accuracy"]:.2f}% | '
                 f'{r["exact_permutation"]} | {r["train_time_s"]:.0f} | '
                 f'{r["wall_time_s"]:.0f} |')
  eq = c.get('at_equal_epochs')
  if eq:
    lines.append('')
    lines.append(f'At equal epochs ({eq["epochs"]:g}): LaPerm '
                 f'{100 * eq["laperm"]:.2f}%, Adam {100 * eq["adam"]:.2f}%, '
                 f'difference {eq["laperm_minus_adam_pt"]:+.2f} pt.')
  return '\n'.join(lines)


def render(directories) -> str:
  out = []
  for directory in directories:
    name = os.path.basename(os.path.normpath(directory))
    report = load(directory)
    out.append(f'### {name}\n')
    out.append(header(name, report) + '\n')
    for key in ('commit_note', 'tests_note'):
      if key in report.get('provenance', {}):
        out.append(f'Note: {report["provenance"][key]}\n')
    if report.get('reconnect'):
      out.append('Reconnect, paired median ratio to the int32 floor:\n')
      out.append(reconnect_table(report) + '\n')
    if report.get('train_step'):
      out.append('Train step:\n')
      out.append(train_step_table(report) + '\n')
    out.append(tests_line(report) + '\n')
    if (report.get('conv7_fashion') or {}).get('runs'):
      out.append('Conv7 on Fashion-MNIST, preset `gpu_conv7_fashion`:\n')
      out.append(conv7_table(report) + '\n')
  return '\n'.join(out)


def render_training(directories) -> str:
  """The paper-length training runs only (RESULTS.md's GPU section)."""
  out = []
  for directory in directories:
    report = load(directory)
    if (report.get('conv7_fashion') or {}).get('runs'):
      name = os.path.basename(os.path.normpath(directory))
      out.append(header(name, report) + '\n')
      out.append(conv7_table(report) + '\n')
  return '\n'.join(out)


def default_directories() -> list[str]:
  """Every ``benchmarks/results/gpu-*`` directory, newest run first.

  A run's directory is named ``gpu-<device>-<date>[-runN]``, so reverse name
  order puts a later date, or a later run of the same day, first.
  """
  return sorted(glob.glob(os.path.join(RESULTS, 'gpu-*')), reverse=True)


BEGIN, END = '<!-- gpu_report:begin -->', '<!-- gpu_report:end -->'


def generated_block(markdown: str) -> str:
  """The text between the markers in a markdown file."""
  start = markdown.index(BEGIN) + len(BEGIN)
  return markdown[start:markdown.index(END)].strip()


if __name__ == '__main__':
  if sys.argv[1:2] == ['--training']:
    print(render_training(sys.argv[2:] or default_directories()))
  else:
    print(render(sys.argv[1:] or default_directories()))
