"""Keras-style random image augmentation, jitted (ImageDataGenerator subset).

A random affine map per image -- rotation, per-axis zoom, shift, optional
horizontal flip -- resampled bilinearly with 'nearest' filling (the Keras
default ``fill_mode``). Images are (N, H, W, C) floats.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Augmentation:
  rotation_deg: float = 0.0
  zoom: float = 0.0      # zoom factors drawn from [1 - zoom, 1 + zoom] per axis.
  shift: float = 0.0     # fraction of the height / width.
  hflip: bool = False

  @property
  def active(self) -> bool:
    return bool(self.rotation_deg or self.zoom or self.shift or self.hflip)


AUGMENTATIONS = {
    'none': Augmentation(),
    'mnist': Augmentation(rotation_deg=10, zoom=0.1, shift=0.1),   # Conv7
    'cifar': Augmentation(rotation_deg=15, shift=0.1, hflip=True),  # Conv2/4/13
    'cifar_shift': Augmentation(shift=0.1, hflip=True),            # ResNet50
}


def random_affine(key, images, aug: Augmentation):
  """Applies an independent random affine transform to every image."""
  if not aug.active:
    return images
  n, h, w, _ = images.shape
  k_rot, k_zoom, k_shift, k_flip = jax.random.split(key, 4)
  angle = jnp.deg2rad(aug.rotation_deg) * jax.random.uniform(
      k_rot, (n,), minval=-1.0, maxval=1.0)
  zoom = 1.0 + aug.zoom * jax.random.uniform(
      k_zoom, (n, 2), minval=-1.0, maxval=1.0)
  shift = aug.shift * jax.random.uniform(
      k_shift, (n, 2), minval=-1.0, maxval=1.0) * jnp.array([h, w])
  flip = (jax.random.bernoulli(k_flip, 0.5, (n,)) if aug.hflip
          else jnp.zeros((n,), bool))

  center = jnp.array([(h - 1) / 2.0, (w - 1) / 2.0])
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                            jnp.arange(w, dtype=jnp.float32), indexing='ij')
  grid = jnp.stack([rows - center[0], cols - center[1]])  # (2, H, W)

  def source_coords(angle, zoom, shift, flip):
    g = grid.at[1].set(jnp.where(flip, -grid[1], grid[1]))
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    r = zoom[0] * (cos * g[0] - sin * g[1])
    c = zoom[1] * (sin * g[0] + cos * g[1])
    return jnp.stack([r + center[0] + shift[0], c + center[1] + shift[1]])

  coords = jax.vmap(source_coords)(angle, zoom, shift, flip)  # (N, 2, H, W)

  def warp_channel(image2d, coord):
    return jax.scipy.ndimage.map_coordinates(
        image2d, [coord[0], coord[1]], order=1, mode='nearest')

  warp_image = jax.vmap(warp_channel, in_axes=(2, None), out_axes=2)
  return jax.vmap(warp_image)(images, coords)
