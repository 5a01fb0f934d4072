"""``--mesh data=D[,model=M]``: the train CLI on several devices.

The batch of every step is split over ``data``; every kernel (Dense
``(in, out)``, Conv ``(h, w, in, out)``) is split over its output (last) axis
on ``model`` when that axis divides evenly, and so are its LaPerm pool and Adam
moments. A weight vector runs along the other axes, so each one lives whole on
one device and the sync sorts locally. Biases and batch-norm parameters follow
the same rule (as in ``examples/sharded_training.py``); a leaf whose last axis
does not divide (a final Dense of 10 outputs on ``model=4``), scalars,
counters and the data set are replicated. The compiled programs return every
leaf in this layout (``experiments.steps.OutputShardings``).

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

Without ``--mesh`` the CLI trains on every device (:func:`default_spec`):
the batch over ``data = gcd(batch size, device count)`` devices and the
kernels over the rest, ``model = device count // data`` (a batch of 32 on 8
TPU cores: ``data=8``; a batch of 50: ``data=2,model=4``); ``--mesh none``
keeps one device. On several processes (``--num-processes``,
``--distributed``) the mesh spans every device of every process, and each
process supplies only its own rows of each batch
(:meth:`MeshPlan.batch_indices`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.experimental import multihost_utils
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

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


def check_fit(spec: str, batch_size: int | None, num_devices: int,
              num_processes: int = 1) -> dict[str, int]:
  """The axis sizes of ``spec``, or ``MeshError`` when they do not fit.

  On one process the mesh takes the first devices; on several it must span
  all of them (each process holds its share of every array).

  >>> check_fit('data=2,model=2', batch_size=8, num_devices=4, num_processes=2)
  {'data': 2, 'model': 2}
  >>> check_fit('data=3', batch_size=8, num_devices=4)
  Traceback (most recent call last):
  ...
  experiments.mesh.MeshError: --batch-size 8 must be a multiple of the data axis (3)
  """
  sizes = parse(spec)
  n = sizes['data'] * sizes['model']
  if n > num_devices:
    raise MeshError(f'--mesh {spec!r} needs {n} devices; {num_devices} '
                    f'available')
  if num_processes > 1 and n != num_devices:
    raise MeshError(f'--mesh {spec!r} uses {n} devices; on {num_processes} '
                    f'processes it must use all {num_devices}')
  if batch_size is not None and batch_size % sizes['data']:
    raise MeshError(f'--batch-size {batch_size} must be a multiple of the '
                    f'data axis ({sizes["data"]})')
  return sizes


def default_spec(batch_size: int, num_devices: int) -> str | None:
  """The mesh of a run without ``--mesh``: every device, None on one.

  The batch goes over ``data = gcd(batch_size, num_devices)`` devices and
  the kernels over the rest, ``model = num_devices // data``, so that every
  device trains whatever the batch size. On several processes the same rule
  spans every device of every process.

  >>> default_spec(32, 8), default_spec(50, 8), default_spec(7, 4)
  ('data=8', 'data=2,model=4', 'model=4')
  >>> default_spec(50, 1) is None
  True
  """
  if num_devices == 1:
    return None
  data = math.gcd(batch_size, num_devices)
  model = num_devices // data
  sizes = dict(data=data, model=model)
  return ','.join(f'{name}={size}' for name, size in sizes.items()
                  if size > 1)


def global_array(value: Any, sharding: NamedSharding) -> jax.Array:
  """``value`` (the same on every process) as one array laid out by
  ``sharding``; each process supplies only the shards it holds."""
  host = np.asarray(value)
  return jax.make_array_from_callback(host.shape, sharding,
                                      lambda index: host[index])


class MeshPlan:
  """The mesh and the sharding rules of one run.

  Attributes:
    spec: the ``--mesh`` value.
    sizes: ``{'data': D, 'model': M}``.
    chosen: ``'flag'`` (``--mesh``) or ``'default'`` (every device).
    mesh: the ``jax.sharding.Mesh``.
  """

  def __init__(self, spec: str, batch_size: int | None = None,
               chosen: str = 'flag'):
    self.spec, self.chosen = spec, chosen
    self.sizes = check_fit(spec, batch_size, jax.device_count(),
                           jax.process_count())
    n = self.sizes['data'] * self.sizes['model']
    self.mesh = jax.make_mesh((self.sizes['data'], self.sizes['model']), AXES,
                              axis_types=(AxisType.Auto,) * 2,
                              devices=jax.devices()[:n])
    self.replicated = NamedSharding(self.mesh, P())
    self.batch = NamedSharding(self.mesh, P('data'))

  def describe(self) -> dict:
    return dict(spec=self.spec, shape=dict(self.sizes),
                devices=self.sizes['data'] * self.sizes['model'],
                platform=jax.default_backend(), chosen=self.chosen,
                processes=jax.process_count())

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
      setattr(pipe, name, global_array(getattr(pipe, name), self.replicated))
    params = jax.tree.map(global_array, params, self.shardings(params))
    batch_stats = jax.tree.map(global_array, batch_stats,
                               self.shardings(batch_stats))
    out = self.shardings(jax.eval_shape(tx.init, params))
    opt_state = jax.jit(tx.init, out_shardings=out)(params)
    return params, batch_stats, opt_state

  def batch_indices(self, indices: np.ndarray) -> jax.Array:
    """The rows of a chunk's batches, ``(steps, batch)``, split over
    ``data``: each process supplies only the rows of its own devices."""
    return global_array(indices, NamedSharding(self.mesh, P(None, 'data')))

  def steps(self, values: np.ndarray) -> jax.Array:
    """Step numbers (or one step's rows), replicated over the mesh."""
    return global_array(values, self.replicated)

  def to_host(self, tree: Any) -> Any:
    """Every leaf whole, as NumPy, on every process (gathered across
    processes where no process holds it whole)."""
    def gather(leaf):
      if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable and (
          not leaf.is_fully_replicated):
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
      return np.asarray(leaf)
    return jax.tree.map(gather, tree)

  def shard_batch(self, x):
    return jax.lax.with_sharding_constraint(x, self.batch)

  def constrain(self, tree):
    return jax.lax.with_sharding_constraint(tree, self.shardings(tree))
