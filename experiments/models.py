"""The paper's models in Flax Linen (see ../shared/docs/paper-notes.md, section 3).

Every model is called as ``model.apply(variables, x, train=...)`` on images
(N, H, W, C) already scaled; dense models flatten them. Layers carry explicit,
zero-padded names (``conv01``, ``dense1``, ``bn03`` ...) so that the sorted
pytree order equals the layer order and batch-norm leaves are recognisable by
name. Initialisers follow the Keras configurations of the official code:
``he_uniform`` = U(+-sqrt(6 / fan_in)) for kernels; where the paper's model has
he_uniform *biases* (Conv7, Conv2/4/13) a bias of length n uses fan_in = n, as
Keras does for 1-D shapes. Batch norm: momentum 0.99, epsilon 1e-3.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments import vit

he_uniform = nn.initializers.variance_scaling(2.0, 'fan_in', 'uniform')
zeros = nn.initializers.zeros


def he_uniform_bias(key, shape, dtype=jnp.float32):
  """Keras he_uniform on a 1-D shape: fan_in is the length itself."""
  limit = jnp.sqrt(6.0 / shape[0])
  return jax.random.uniform(key, shape, dtype, -limit, limit)


def batch_norm(train: bool, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.99,
                      epsilon=1e-3, name=name)


class MLP(nn.Module):
  """Dense ReLU layers then a linear head: LeNet-300-100, F1, F2."""
  hidden: Sequence[int]
  num_classes: int = 10
  use_bias: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, use_bias=self.use_bias,
                           kernel_init=he_uniform, bias_init=zeros,
                           name=f'dense{i + 1}')(x))
    return nn.Dense(self.num_classes, use_bias=self.use_bias,
                    kernel_init=he_uniform, bias_init=zeros,
                    name=f'dense{len(self.hidden) + 1}')(x)


class Conv7(nn.Module):
  """The MNIST Conv7 of the official code (no batch norm), 325,578 params."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    def conv(features, size, name, strides=1, padding='VALID'):
      return nn.Conv(features, (size, size), strides=strides, padding=padding,
                     kernel_init=he_uniform, bias_init=he_uniform_bias,
                     name=name)
    drop = lambda h: nn.Dropout(0.4, deterministic=not train)(h)
    x = nn.relu(conv(32, 3, 'conv1')(x))
    x = nn.relu(conv(32, 3, 'conv2')(x))
    x = drop(nn.relu(conv(32, 5, 'conv3', 2, 'SAME')(x)))
    x = nn.relu(conv(64, 3, 'conv4')(x))
    x = nn.relu(conv(64, 3, 'conv5')(x))
    x = drop(nn.relu(conv(64, 5, 'conv6', 2, 'SAME')(x)))
    x = nn.relu(conv(128, 4, 'conv7')(x))
    x = drop(x.reshape(x.shape[0], -1))
    return nn.Dense(self.num_classes, kernel_init=he_uniform,
                    bias_init=he_uniform_bias, name='dense8')(x)


class VGGLike(nn.Module):
  """Conv2 / Conv4 / Conv13 for CIFAR-10: conv -> ReLU -> BN, dropout between.

  ``blocks`` lists, per block, the widths of its 3x3 'same' convs; a 2x2 max
  pool ends each block. Dropout 0.3 after the very first conv and 0.4 after
  every other non-final conv of a block; the head is as in paper-notes.md.
  """
  blocks: Sequence[Sequence[int]]
  head: str  # 'two_dense' (Conv2/4) or 'vgg' (Conv13).
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    index = 0
    for block in self.blocks:
      for j, width in enumerate(block):
        index += 1
        x = nn.Conv(width, (3, 3), padding='SAME', kernel_init=he_uniform,
                    bias_init=he_uniform_bias, name=f'conv{index:02d}')(x)
        x = batch_norm(train, f'bn{index:02d}')(nn.relu(x))
        if j < len(block) - 1:
          rate = 0.3 if index == 1 else 0.4
          x = nn.Dropout(rate, deterministic=not train)(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    dense = lambda n, name: nn.Dense(n, kernel_init=he_uniform,
                                     bias_init=he_uniform_bias, name=name)
    drop = lambda h: nn.Dropout(0.5, deterministic=not train)(h)
    if self.head == 'vgg':
      x = drop(x).reshape(x.shape[0], -1)
      x = batch_norm(train, 'bn_head1')(nn.relu(dense(512, 'dense1')(x)))
      return dense(self.num_classes, 'dense2')(drop(x))
    x = x.reshape(x.shape[0], -1)
    x = batch_norm(train, 'bn_head1')(drop(nn.relu(dense(256, 'dense1')(x))))
    x = drop(batch_norm(train, 'bn_head2')(nn.relu(dense(256, 'dense2')(x))))
    return dense(self.num_classes, 'dense3')(x)


class ResNetV1(nn.Module):
  """CIFAR ResNet v1 of depth 6n+2 (n=8: ResNet50, 0.76M params).

  Stem conv3x3 16 -> BN -> ReLU; three stages of n basic blocks with 16/32/64
  filters (conv-BN-ReLU-conv-BN, add, ReLU); the first block of stages 2 and 3
  strides 2 and projects its shortcut with a 1x1 stride-2 conv (no BN);
  global 8x8 average pool -> dense 10. he_uniform kernels, zero biases.
  """
  blocks_per_stage: int = 8
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    counter = iter(range(1, 1000))
    def conv(h, features, size=3, strides=1):
      i = next(counter)
      return nn.Conv(features, (size, size), strides=strides, padding='SAME',
                     kernel_init=he_uniform, bias_init=zeros,
                     name=f'conv{i:02d}')(h)
    bn_counter = iter(range(1, 1000))
    bn = lambda h: batch_norm(train, f'bn{next(bn_counter):02d}')(h)
    x = nn.relu(bn(conv(x, 16)))
    for stage, width in enumerate((16, 32, 64)):
      for block in range(self.blocks_per_stage):
        strides = 2 if stage > 0 and block == 0 else 1
        y = nn.relu(bn(conv(x, width, 3, strides)))
        y = bn(conv(y, width))
        if strides != 1:
          x = conv(x, width, 1, strides)
        x = nn.relu(x + y)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=he_uniform, bias_init=zeros,
                    name='dense')(x)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """How to build a model and which of its layers is the first."""
  build: Callable[[int], nn.Module]
  first_layer: str
  permute_biases: bool  # Whether the paper's run also reconnects biases.
  min_hw: int = 1  # Smallest input height/width the architecture accepts.
  description: str = ''


MODELS = {
    'lenet300': ModelSpec(lambda c: MLP((300, 100), c), 'dense1', False,
                          description='LeNet-300-100, 784-300-100-10 ReLU'),
    'f1': ModelSpec(lambda c: MLP((), c, use_bias=False), 'dense1', False,
                    description='784 -> 10, no bias'),
    'f2': ModelSpec(lambda c: MLP((128, 64), c, use_bias=False), 'dense1',
                    False, description='784-128-64-10 ReLU, no biases'),
    'conv7': ModelSpec(lambda c: Conv7(c), 'conv1', True, 28,
                       'MNIST Conv7, 325,578 params'),
    'conv2': ModelSpec(lambda c: VGGLike(((64, 64),), 'two_dense', c),
                       'conv01', False, 4, 'CIFAR Conv2, 4.30M params'),
    'conv4': ModelSpec(lambda c: VGGLike(((64, 64), (128, 128)), 'two_dense',
                                         c), 'conv01', False, 4,
                       'CIFAR Conv4, 2.43M params'),
    'conv13': ModelSpec(lambda c: VGGLike(
        ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
         (512, 512, 512)), 'vgg', c), 'conv01', False, 32,
                        'CIFAR Conv13 (VGG16 conv stack), 14.99M params'),
    'resnet50': ModelSpec(lambda c: ResNetV1(8, c), 'conv01', False, 8,
                          'CIFAR ResNet v1 n=8 (depth 50), 0.76M params'),
    'vit': ModelSpec(lambda c: vit.ViT(7, 32, 2, 4, 64, c), 'patch_embed',
                     False, 28, 'ViT: 7x7 patches, width 32, depth 2, 4 heads'),
    'vit_tiny': ModelSpec(lambda c: vit.ViT(4, 16, 1, 2, 32, c), 'patch_embed',
                          False, 8, 'ViT: 4x4 patches, width 16, depth 1'),
}


def is_batch_norm_path(path) -> bool:
  return any(getattr(k, 'key', '').startswith('bn') for k in path)


def reconnect_mask(params, permute_biases: bool):
  """True for kernels (rank >= 2), and for conv/dense biases if asked."""
  def flag(path, leaf):
    if is_batch_norm_path(path):
      return False
    if getattr(path[-1], 'key', '') == 'bias':  # attention biases are 2-D
      return bool(permute_biases)
    if jnp.ndim(leaf) >= 2:
      return True
    return bool(permute_biases and getattr(path[-1], 'key', '') == 'bias')
  return jax.tree_util.tree_map_with_path(flag, params)


def kernel_mask(params):
  """True for kernels (rank >= 2) outside batch norm: sparse / L2 targets."""
  return reconnect_mask(params, permute_biases=False)


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
