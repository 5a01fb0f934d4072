"""A small Vision Transformer in Flax Linen, and its weight-vector layouts.

The model: non-overlapping square patches flattened and embedded by a Dense
``patch_embed``, a learned position embedding ``pos_embed`` (a Flax ``Embed``
indexed by patch position), ``depth`` pre-LayerNorm blocks (LayerNorm ->
multi-head self-attention -> residual; LayerNorm -> Dense -> GELU -> Dense ->
residual), a final LayerNorm, mean pooling over patches and a linear
``head``. Mean pooling rather than a class token: a class token is one
``(width,)`` vector that LaPerm would either leave free (rank 1) or freeze
(length-1 vectors), neither of which says anything about reconnection.

Parameter names are the Flax defaults LaPerm reads (README layout table):
``block1/attention/{query,key,value}/kernel (in, heads, head_dim)``,
``block1/attention/out/kernel (heads, head_dim, out)``,
``pos_embed/embedding (patches, width)`` and Dense ``kernel (in, out)``.

``LAYOUTS`` names the weight-vector choices compared on the validation split:
each maps params to a ``vector_axes`` tree for ``laperm_jax.laperm`` (None =
the library's defaults). ``default`` reconnects q/k/v per head;
``per_output_unit`` is the paper's choice, one output unit's incoming weights
on every leaf; each other layout changes one kind of leaf of
``per_output_unit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import laperm_jax

Params = Any
Layout = Callable[[Params], Params]


def patchify(x: jax.Array, patch: int) -> jax.Array:
  """(N, H, W, C) images -> (N, patches, patch * patch * C), row-major."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(
      n, (h // patch) * (w // patch), patch * patch * c)


class Block(nn.Module):
  """Pre-LayerNorm transformer block: attention and MLP, each residual."""
  heads: int
  mlp_width: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.LayerNorm(name='ln1')(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads,
                                            name='attention')(y)
    y = nn.LayerNorm(name='ln2')(x)
    y = nn.gelu(nn.Dense(self.mlp_width, name='mlp1')(y))
    return x + nn.Dense(x.shape[-1], name='mlp2')(y)


class ViT(nn.Module):
  """Patch embedding, position embedding, pre-LN blocks, mean pool, head.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = ViT(patch=7, width=16, depth=1, heads=2, mlp_width=32)
    >>> x = jnp.zeros((2, 28, 28, 1))
    >>> variables = model.init(jax.random.key(0), x)
    >>> model.apply(variables, x).shape
    (2, 10)
  """
  patch: int
  width: int
  depth: int
  heads: int
  mlp_width: int
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # no dropout, no batch norm
    x = nn.Dense(self.width, name='patch_embed')(patchify(x, self.patch))
    positions = jnp.arange(x.shape[1])
    x = x + nn.Embed(x.shape[1], self.width, name='pos_embed')(positions)
    for i in range(self.depth):
      x = Block(self.heads, self.mlp_width, name=f'block{i + 1}')(x)
    x = nn.LayerNorm(name='ln_final')(x).mean(axis=1)
    return nn.Dense(self.num_classes, name='head')(x)


# --- layouts ----------------------------------------------------------------
def layer_kind(name: str) -> str:
  """The kind of layer a ViT leaf belongs to, from its '/'-joined path.

  One of ``qkv``, ``attention_out``, ``mlp``, ``patch_embed``, ``pos_embed``,
  ``head``, or ``other`` (norms).

  Example:
    >>> layer_kind('block1/attention/query/kernel')
    'qkv'
    >>> layer_kind('block1/attention/out/kernel')
    'attention_out'
  """
  names = name.split('/')
  if any(n in ('query', 'key', 'value') for n in names):
    return 'qkv'
  if 'attention' in names:
    return 'attention_out'
  for kind in ('mlp', 'patch_embed', 'pos_embed', 'head'):
    if any(n.startswith(kind) for n in names):
      return kind
  return 'other'


def path_name(path) -> str:
  """A tree path as a '/'-joined string of its keys."""
  return jax.tree_util.keystr(path, simple=True, separator='/')


# The paper's weight vectors on every leaf: one output unit's incoming
# weights, which for q/k/v (in, heads, head_dim) is the fan-in axis 0.
_PER_OUTPUT_UNIT = {('qkv', 'kernel'): (0,)}


def _override(axes_by_kind: dict[tuple[str, str], tuple[int, ...]]) -> Layout:
  """A layout: the listed (kind, leaf name) pairs get their axes, every other
  leaf its vectors under ``per_output_unit``."""
  chosen = {**_PER_OUTPUT_UNIT, **axes_by_kind}

  def layout(params: Params) -> Params:
    def axes(path, leaf, default):
      del leaf
      key = (layer_kind(path_name(path)), getattr(path[-1], 'key', ''))
      return chosen.get(key, default)
    return jax.tree_util.tree_map_with_path(
        axes, params, laperm_jax.default_vector_axes(params),
        is_leaf=lambda x: x is None)
  return layout


# Every alternative to the default changes one kind of leaf of
# 'per_output_unit', the layout it is compared against.
LAYOUTS: dict[str, Layout | None] = {
    # The library's defaults: q/k/v (in, heads, head_dim) per head (axes
    # (0, 2)), attention out (heads, head_dim, out) per output unit (axes
    # 0, 1), embedding tables by row (one vector per position), Dense
    # kernels by column.
    'default': None,
    # The paper's vectors, one output unit's incoming weights, everywhere:
    # q/k/v per output unit across heads (axis 0, the fan-in).
    'per_output_unit': _override({}),
    # q/k/v: one vector per head_dim unit across heads, (in, heads): what
    # "all axes but the last" gives.
    'qkv_across_heads': _override({('qkv', 'kernel'): (0, 1)}),
    # attention out: one vector per head and output unit (the head's fan-in).
    'out_per_head': _override({('attention_out', 'kernel'): (1,)}),
    # attention out: one vector per input unit (a row, its fan-out).
    'out_by_row': _override({('attention_out', 'kernel'): (2,)}),
    # position embedding by column: one vector per feature across positions.
    'pos_by_column': _override({('pos_embed', 'embedding'): (0,)}),
    # patch embedding by row: one vector per pixel across features.
    'patch_by_row': _override({('patch_embed', 'kernel'): (1,)}),
}


def vector_axes(layout: str, params: Params) -> Params:
  """The axes of every leaf's weight vectors under a named layout.

  Example:
    >>> import jax.numpy as jnp
    >>> params = {'pos_embed': {'embedding': jnp.zeros((16, 8))}}
    >>> vector_axes('default', params)
    {'pos_embed': {'embedding': (1,)}}
    >>> vector_axes('pos_by_column', params)
    {'pos_embed': {'embedding': (0,)}}
    >>> query = {'query': {'kernel': jnp.zeros((8, 2, 4))}}
    >>> vector_axes('default', query), vector_axes('per_output_unit', query)
    ({'query': {'kernel': (0, 2)}}, {'query': {'kernel': (0,)}})
  """
  if layout not in LAYOUTS:
    raise ValueError(f'unknown layout {layout!r}; choose from '
                     f'{", ".join(LAYOUTS)}')
  chosen = LAYOUTS[layout]
  return (laperm_jax.default_vector_axes(params) if chosen is None
          else chosen(params))
