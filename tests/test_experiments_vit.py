"""The Vision Transformer: its layout, its weight-vector layouts, a tiny run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip('mlxtend', reason='needs the experiments extra')

from experiments import cli  # pylint: disable=wrong-import-position
from experiments import models  # pylint: disable=wrong-import-position
from experiments import sync_moves  # pylint: disable=wrong-import-position
from experiments import train  # pylint: disable=wrong-import-position
from experiments import training  # pylint: disable=wrong-import-position
from experiments import vit  # pylint: disable=wrong-import-position
from experiments import vit_layouts  # pylint: disable=wrong-import-position
import laperm_jax  # pylint: disable=wrong-import-position


def vit_params(name='vit'):
  model = models.MODELS[name].build(10)
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False))
  return variables['params']


def by_name(tree):
  return {vit.path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: isinstance(x, tuple))[0]}


def test_vit_has_the_flax_attention_and_embedding_layouts():
  shapes = {k: v.shape for k, v in by_name(vit_params()).items()}
  assert shapes['block1/attention/query/kernel'] == (32, 4, 8)
  assert shapes['block1/attention/query/bias'] == (4, 8)
  assert shapes['block1/attention/out/kernel'] == (4, 8, 32)
  assert shapes['pos_embed/embedding'] == (16, 32)
  assert shapes['patch_embed/kernel'] == (49, 32)
  assert 'block2/mlp2/kernel' in shapes and 'block3/ln1/scale' not in shapes


def test_vit_reconnects_kernels_and_embeddings_not_biases_or_norms():
  params = vit_params()
  mask = by_name(models.reconnect_mask(params, permute_biases=False))
  for name, flag in mask.items():
    leaf = name.split('/')[-1]
    assert flag == (leaf in ('kernel', 'embedding')), name


def test_layer_kinds_cover_every_reconnected_vit_leaf():
  params = vit_params()
  mask = by_name(models.reconnect_mask(params, permute_biases=False))
  kinds = {vit.layer_kind(name) for name, flag in mask.items() if flag}
  assert kinds == {'qkv', 'attention_out', 'mlp', 'patch_embed', 'pos_embed',
                   'head'}


@pytest.mark.parametrize('layout, changed', [
    ('qkv_across_heads', {'query', 'key', 'value'}),
    ('out_per_head', {'out'}), ('out_by_row', {'out'}),
    ('pos_by_column', {'pos_embed'}), ('patch_by_row', {'patch_embed'})])
def test_each_layout_changes_only_its_layers(layout, changed):
  params = vit_params()
  paper = by_name(vit.vector_axes('per_output_unit', params))
  chosen = by_name(vit.vector_axes(layout, params))
  differ = {name for name in paper if paper[name] != chosen[name]}
  assert differ and all(name.split('/')[-2] in changed for name in differ)
  assert all(name.endswith(('kernel', 'embedding')) for name in differ)


def test_default_layout_is_the_library_default():
  assert vit.vector_axes('default', vit_params()) == (
      laperm_jax.default_vector_axes(vit_params()))
  with pytest.raises(ValueError, match='unknown layout'):
    vit.vector_axes('by_magic', vit_params())


def test_per_output_unit_differs_from_the_default_only_at_qkv():
  params = vit_params()
  default = by_name(vit.vector_axes('default', params))
  paper = by_name(vit.vector_axes('per_output_unit', params))
  differ = {name for name in default if default[name] != paper[name]}
  assert differ == {f'block{b}/attention/{n}/kernel'
                    for b in (1, 2) for n in ('query', 'key', 'value')}
  assert all(default[name] == (0, 2) and paper[name] == (0,)
             for name in differ)


def test_exact_permutation_check_uses_the_layouts_vectors():
  theta0 = {'pos_embed': {'embedding': np.arange(12.).reshape(3, 4)}}
  mask = {'pos_embed': {'embedding': True}}
  rows_permuted = {'pos_embed': {'embedding': theta0['pos_embed'][
      'embedding'][:, [3, 1, 0, 2]]}}
  columns_permuted = {'pos_embed': {'embedding': theta0['pos_embed'][
      'embedding'][[2, 0, 1], :]}}
  check = training.exact_permutation_check
  assert check(rows_permuted, theta0, mask, 'default')
  assert not check(columns_permuted, theta0, mask, 'default')
  assert check(columns_permuted, theta0, mask, 'pos_by_column')
  assert not check(rows_permuted, theta0, mask, 'pos_by_column')


def test_moved_fraction_by_kind_weights_leaves_by_size():
  moved = {'block1/attention/query/kernel': [2, 10],
           'block1/attention/key/kernel': [0, 30],
           'head/kernel': [5, 5]}
  assert sync_moves.fraction_by_kind(moved, vit.layer_kind) == {
      'qkv': 0.05, 'head': 1.0}


@pytest.fixture(scope='module')
def tiny_run():
  args = cli.parse(train.build_parser(),
                   ['--preset', 'tiny_vit_digits', '--track-syncs',
                    '--layout', 'per_output_unit'])
  cfg = cli.config_from_args(args, optimizer='laperm')
  return training.run(cfg, progress=False)


def test_tiny_vit_preset_trains_and_stays_a_permutation(tiny_run):
  res = tiny_run.results
  assert res['exact_permutation'] and res['exact_permutation_library']
  assert res['final_test_accuracy'] > res['initial_test_accuracy'] + 0.1
  first, last = res['history'][0], res['history'][-1]
  assert last['train_loss'] < first['train_loss']


def test_tiny_vit_sync_records_moves_per_reconnected_leaf(tiny_run):
  records = tiny_run.sync_records
  config = tiny_run.results['config']
  assert len(records) == config['total_steps'] // config['k_steps']
  reconnected = {name for name, flag in by_name(tiny_run.mask).items() if flag}
  for record in records:
    moved = record['moved_by_leaf']
    assert set(moved) == reconnected
    total = sum(size for _, size in moved.values())
    assert sum(n for n, _ in moved.values()) / total == pytest.approx(
        record['changed_fraction'])


@pytest.mark.slow  # two ViT compiles; the tiny run above takes --layout
def test_layouts_command_writes_one_row_per_layout(tmp_path):
  out = tmp_path / 'layouts'
  assert vit_layouts.main(['--preset', 'tiny_vit_digits', '--max-steps', '5',
                           '--layouts', 'per_output_unit,pos_by_column',
                           '--no-progress', '--out', str(out)]) == 0
  rows = json.loads((out / 'layouts.json').read_text())['rows']
  assert [r['layout'] for r in rows] == ['per_output_unit', 'pos_by_column']
  assert all(r['exact_permutation'] for r in rows)
