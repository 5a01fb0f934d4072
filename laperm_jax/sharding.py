"""Sharded leaves: lay out what a sort needs, then put it back.

A sync sorts along the vector axes of a leaf. When every weight vector lives
on one device (a kernel sharded over its output axis, the usual tensor-parallel
layout), the sort is local and needs no communication: nothing here changes
the layout, and the compiled sync contains no collective.

When a vector axis is sharded (fan-in / FSDP sharding, or a 2-D mesh that
shards both axes), the vectors are split across devices. Under an
``AxisType.Explicit`` mesh (the default of ``jax.make_mesh``) sorting along a
sharded axis is a type error, so the library reshards the leaf first: the
mesh axes on its vector axes are moved to its first non-vector (batch) axis
where that axis divides evenly (an all-to-all), and dropped otherwise (an
all-gather); the sort runs locally, and the result is resharded back to the
leaf's own sharding. The same layout is used for the pool leaf it is paired
with, so the pool keeps its param's sharding too.

Under ``AxisType.Auto`` meshes the sharding is not part of the type inside
``jit``; the compiler (GSPMD / Shardy) partitions the sort kernel and inserts
the collectives it needs by itself: results are the same, but even an
output-axis-sharded kernel may be gathered for a scatter-based kernel (the
co-sort variants of :mod:`laperm_jax.ranking` stay local). For concrete (not
traced) arrays the result is put back on the input's sharding. Arrays that
are not sharded are returned unchanged. Prefer Explicit meshes: there the
no-collective sync of output-axis-sharded kernels is guaranteed.
"""

from collections.abc import Callable, Sequence
import math

import jax
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def _names(entry) -> tuple[str, ...]:
  """Mesh axis names in one entry of a PartitionSpec."""
  if entry is None:
    return ()
  if isinstance(entry, str):
    return (entry,)
  return tuple(entry)


def _entry(names: Sequence[str]):
  if not names:
    return None
  return names[0] if len(names) == 1 else tuple(names)


def _named_sharding(x) -> NamedSharding | None:
  try:
    sharding = jax.typeof(x).sharding
  except (AttributeError, TypeError):
    return None
  return sharding if isinstance(sharding, NamedSharding) else None


def _explicit_names(sharding: NamedSharding) -> set[str]:
  mesh = sharding.mesh
  return {name for name, kind in zip(mesh.axis_names, mesh.axis_types)
          if kind == AxisType.Explicit}


def sort_sharding(x: jax.Array, axes: Sequence[int]) -> NamedSharding | None:
  """A sharding of ``x`` under which every weight vector is on one device.

  Only mesh axes of type ``Explicit`` are considered. All of them are
  gathered onto the first non-vector (batch) axis of ``x``, in order (those
  already there first), as far as that axis divides evenly; the rest are
  dropped (replicated). Vector axes and later batch axes end up unsharded,
  so that flattening ``x`` into rows is a plain block layout.

  Args:
    x: an array or tracer.
    axes: the normalised vector axes of ``x``.

  Returns:
    The new sharding, or None when ``x``'s layout already is that one (an
    output-axis-sharded kernel, an unsharded leaf, an Auto mesh).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from laperm_jax.sharding import sort_sharding
    >>> print(sort_sharding(jnp.zeros((4, 2)), (0,)))  # unsharded: no change
    None
  """
  sharding = _named_sharding(x)
  if sharding is None:
    return None
  explicit = _explicit_names(sharding)
  mesh_shape = dict(sharding.mesh.shape)
  spec = list(sharding.spec) + [None] * (x.ndim - len(sharding.spec))
  if not any(n in explicit for entry in spec for n in _names(entry)):
    return None
  batch_axes = [a for a in range(x.ndim) if a not in axes]
  new_spec = [_entry([n for n in _names(e) if n not in explicit])
              for e in spec]
  if batch_axes:
    first = batch_axes[0]
    candidates = [n for n in _names(spec[first]) if n in explicit] + [
        n for a, e in enumerate(spec) if a != first for n in _names(e)
        if n in explicit]
    kept = list(_names(new_spec[first]))
    for name in candidates:
      ways = math.prod(mesh_shape[n] for n in kept) * mesh_shape[name]
      if x.shape[first] % ways == 0:
        kept.append(name)
    new_spec[first] = _entry(kept)
  if new_spec == spec:
    return None
  return NamedSharding(sharding.mesh, P(*new_spec))


def map_rows(fn: Callable[..., jax.Array], *rows: jax.Array) -> jax.Array:
  """Calls ``fn`` on rows, one device's block at a time when they are sharded.

  Rows laid out by :func:`sort_sharding` are sharded (over Explicit mesh
  axes) along their first axis only, so every row lives on one device. Then
  ``fn`` runs under ``jax.shard_map`` on each device's rows: any row-wise
  kernel works, and the compiled code has no collective. ``fn`` must return
  one array whose first axis is the rows'. Other inputs go to ``fn`` as they
  are.
  """
  sharding = _named_sharding(rows[0])
  names = ()
  if sharding is not None and len(sharding.spec) >= 1:
    explicit = _explicit_names(sharding)
    names = tuple(n for n in _names(sharding.spec[0]) if n in explicit)
  if not names:
    return fn(*rows)
  row_spec = P(_entry(names), None)
  target = NamedSharding(sharding.mesh, row_spec)
  rows = [r if _named_sharding(r) == target else
          jax.sharding.reshard(r, target) for r in rows]
  return jax.shard_map(
      fn, mesh=sharding.mesh, in_specs=(row_spec,) * len(rows),
      out_specs=P(_entry(names)), check_vma=False)(*rows)


def to_sort_layout(x: jax.Array, target: NamedSharding | None) -> jax.Array:
  """Reshards ``x`` to ``target`` (from :func:`sort_sharding`), if any."""
  if target is None:
    return x
  return jax.sharding.reshard(x, target)


def restore_layout(result: jax.Array, like: jax.Array,
                   target: NamedSharding | None) -> jax.Array:
  """Puts ``result`` back on the sharding of ``like`` (the input leaf).

  Args:
    result: the computed leaf, same shape as ``like``.
    like: the leaf whose sharding the result should carry.
    target: what :func:`sort_sharding` returned for ``like``.

  Returns:
    ``result`` on ``like``'s sharding: resharded back when ``target`` moved
    it (Explicit meshes), or ``device_put`` for a concrete sharded ``like``
    whose result came back elsewhere (Auto meshes, outside ``jit``).
  """
  if target is not None:
    return jax.sharding.reshard(result, _named_sharding(like))
  if isinstance(like, jax.core.Tracer) or isinstance(result, jax.core.Tracer):
    return result
  sharding = getattr(like, 'sharding', None)
  if (isinstance(sharding, NamedSharding) and
      getattr(result, 'sharding', None) != sharding):
    return jax.device_put(result, sharding)
  return result
