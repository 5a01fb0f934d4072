"""The paper's models: parameter counts, layouts and reconnection masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import augment
from experiments import models

EXPECTED = {  # paper-notes.md, section 3
    'lenet300': (266_610, (28, 28, 1)),
    'f1': (7_840, (28, 28, 1)),
    'f2': (109_184, (28, 28, 1)),
    'conv7': (325_578, (28, 28, 1)),
    'conv2': (4_302_922, (32, 32, 3)),
    'conv4': (2_427_722, (32, 32, 3)),
    'conv13': (14_991_946, (32, 32, 3)),
    'resnet50': (760_266, (32, 32, 3)),
}


def shapes(name):
  model = models.MODELS[name].build(10)
  shape = EXPECTED[name][1]
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1,) + shape), train=False))


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_parameter_counts(name):
  assert models.count_params(shapes(name)['params']) == EXPECTED[name][0]


def test_conv7_reconnects_biases_and_bn_is_never_reconnected():
  conv7 = shapes('conv7')['params']
  mask = models.reconnect_mask(conv7, models.MODELS['conv7'].permute_biases)
  assert all(jax.tree.leaves(mask))
  conv2 = shapes('conv2')['params']
  mask = models.reconnect_mask(conv2, permute_biases=True)
  for path, flag in jax.tree_util.tree_flatten_with_path(mask)[0]:
    assert flag == (not models.is_batch_norm_path(path))


def test_he_uniform_bias_range():
  b = models.he_uniform_bias(jax.random.key(0), (32,))
  assert float(jnp.max(jnp.abs(b))) <= np.sqrt(6 / 32)


def test_augmentation_keeps_shape_and_is_identity_when_off():
  x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
  assert augment.random_affine(jax.random.key(1), x,
                               augment.AUGMENTATIONS['none']) is x
  y = augment.random_affine(jax.random.key(1), x,
                            augment.AUGMENTATIONS['mnist'])
  assert y.shape == x.shape and not np.allclose(y, x)
  flip_only = augment.Augmentation(hflip=True)
  z = augment.random_affine(jax.random.key(2), x, flip_only)
  for i in range(4):  # every image is either itself or its mirror.
    assert (np.allclose(z[i], x[i], atol=1e-5) or
            np.allclose(z[i], x[i, :, ::-1], atol=1e-5))
