"""``--mesh data=D[,model=M]``: the train CLI on several devices.

The batch of every step is split over ``data``; every kernel (Dense
``(in, out)``, Conv ``(h, w, in, out)``) is split over its output (last) axis
on ``model`` when that axis divides evenly, and so are its LaPerm pool and Adam
moments. A weight vector runs along the other axes, so each one lives whole on
one device and the sync sorts locally. Biases and batch-norm parameters follow
the same rule (as in ``examples/sharded_training.py``); scalars, counters and
the data set are replicated.

The mesh uses ``jax.sharding.AxisType.Auto``: the Flax models are unchanged
and the compiler inserts the collectives of the forward and backward passes
(gathering a kernel for the matmul, summing the gradient over ``data``); the
train step pins the carry back to these shardings with
``with_sharding_constraint`` so that they hold from step to step. The same
command runs on a TPU slice (``--mesh data=4,model=2`` on 8 chips) or on fake
CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``). Results
match the single-device run to float rounding (the gradient sum over ``data``
adds in another order); a sync puts both on the same pool values as long as
the ranks agree.
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ('data', 'model')


class MeshError(ValueError):
  """A bad --mesh value (one-line message)."""


def parse(spec: str) -> dict[str, int]:
  """'data=4,model=2' -> {'data': 4, 'model': 2}; missing axes are 1."""
  sizes = dict.fromkeys(AXES, 1)
  seen = set()
  for part in str(spec).split(','):
    name, sep, value = part.strip().partition('=')
    if not sep or name not in AXES or name in seen:
      raise MeshError(f'--mesh {spec!r}: use data=D and/or model=M, e.g. '
                      '"data=8" or "data=4,model=2"')
    try:
      sizes[name] = int(value)
    except ValueError:
      raise MeshError(f'--mesh {spec!r}: {name} needs an integer size') from None
    if sizes[name] < 1:
      raise MeshError(f'--mesh {spec!r}: sizes must be >= 1')
    seen.add(name)
  return sizes


class MeshPlan:
  """The mesh and the sharding rules of one run."""

  def __init__(self, spec: str, batch_size: int | None = None):
    self.spec = spec
    self.sizes = parse(spec)
    n = self.sizes['data'] * self.sizes['model']
    available = jax.device_count()
    if n > available:
      raise MeshError(f'--mesh {spec!r} needs {n} devices; {available} '
                      f'available ({jax.default_backend()})')
    if batch_size is not None and batch_size % self.sizes['data']:
      raise MeshError(f'--batch-size {batch_size} must be a multiple of the '
                      f'data axis ({self.sizes["data"]})')
    self.mesh = jax.make_mesh((self.sizes['data'], self.sizes['model']), AXES,
                              axis_types=(AxisType.Auto,) * 2,
                              devices=jax.devices()[:n])
    self.replicated = NamedSharding(self.mesh, P())
    self.batch = NamedSharding(self.mesh, P('data'))

  def describe(self) -> dict:
    return dict(spec=self.spec, shape=dict(self.sizes),
                devices=self.sizes['data'] * self.sizes['model'],
                platform=jax.default_backend())

  def sharding_of(self, leaf) -> NamedSharding:
    """The last (output) axis on ``model`` where it divides, else replicated."""
    shape = leaf.shape
    if len(shape) >= 1 and shape[-1] % self.sizes['model'] == 0:
      return NamedSharding(self.mesh, P(*([None] * (len(shape) - 1)), 'model'))
    return self.replicated

  def shardings(self, tree):
    return jax.tree.map(self.sharding_of, tree)

  def place(self, pipe, params, batch_stats, tx):
    """Puts the data, params and a fresh optimizer state on the mesh."""
    for name in ('x_train', 'y_train', 'pixel_mean', 'x_test', 'y_test',
                 'valid'):
      setattr(pipe, name, jax.device_put(getattr(pipe, name),
                                         self.replicated))
    params = jax.device_put(params, self.shardings(params))
    batch_stats = jax.device_put(batch_stats, self.shardings(batch_stats))
    out = self.shardings(jax.eval_shape(tx.init, params))
    opt_state = jax.jit(tx.init, out_shardings=out)(params)
    return params, batch_stats, opt_state

  def shard_batch(self, x):
    return jax.lax.with_sharding_constraint(x, self.batch)

  def constrain(self, tree):
    return jax.lax.with_sharding_constraint(tree, self.shardings(tree))
