"""A leaf as rows of weight vectors, and back; sharded leaves included.

A leaf is transposed so that its vector axes come last (in the order given)
and reshaped to ``(num_vectors, vector_length)``; :func:`from_rows` undoes
that exactly. When a vector axis is sharded over ``Explicit`` mesh axes, the
leaf is first resharded so that every vector lives on one device (those mesh
axes move to the first non-vector axis where it divides evenly, else they are
gathered), sorted there under ``shard_map``, and put back on its own
sharding. Leaves sharded over their output axis sort in place, with no
collective. Under ``Auto`` meshes the compiler partitions the sort; the row
kernels are written so that it can keep rows on their devices (the scatter's
rows are batching dimensions, row blocks are strided), so an
output-axis-sharded kernel syncs with no collective there too.
"""

from collections.abc import Callable, Hashable, Sequence
import functools
import math

import jax
import jax.numpy as jnp
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
  so that flattening ``x`` into rows keeps every row on one device.

  Args:
    x: an array or tracer.
    axes: the normalised vector axes of ``x``.

  Returns:
    The new sharding, or None when ``x``'s sharding already is that one (an
    output-axis-sharded kernel, an unsharded leaf, an Auto mesh).

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
  names: tuple[str, ...] = ()
  if sharding is not None and len(sharding.spec) >= 1:
    explicit = _explicit_names(sharding)
    names = tuple(n for n in _names(sharding.spec[0]) if n in explicit)
  if sharding is None or not names:
    return fn(*rows)
  row_spec = P(_entry(names), None)
  target = NamedSharding(sharding.mesh, row_spec)
  placed = [r if _named_sharding(r) == target else
            jax.sharding.reshard(r, target) for r in rows]
  return jax.shard_map(
      fn, mesh=sharding.mesh, in_specs=(row_spec,) * len(placed),
      out_specs=P(_entry(names)), check_vma=False)(*placed)


def to_sort_sharding(x: jax.Array, target: NamedSharding | None) -> jax.Array:
  """Reshards ``x`` to ``target`` (from :func:`sort_sharding`), if any."""
  if target is None:
    return x
  return jax.sharding.reshard(x, target)


def restore_sharding(result: jax.Array, like: jax.Array,
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


def _transpose_order(ndim: int, axes: tuple[int, ...]) -> list[int]:
  batch = [a for a in range(ndim) if a not in axes]
  return batch + list(axes)


def to_rows(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """Reshapes ``x`` to ``(num_vectors, vector_length)``; ``axes`` form a row."""
  order = _transpose_order(x.ndim, axes)
  vector_length = math.prod(x.shape[a] for a in axes)
  num_vectors = math.prod(x.shape[a] for a in order[:x.ndim - len(axes)])
  return jnp.transpose(x, order).reshape(num_vectors, vector_length)


def from_rows(rows: jax.Array, axes: tuple[int, ...], shape) -> jax.Array:
  """Inverse of ``to_rows``: rows back to an array of ``shape``."""
  shape = tuple(shape)
  order = _transpose_order(len(shape), axes)
  transposed = rows.reshape(tuple(shape[a] for a in order))
  inverse = [0] * len(order)
  for position, axis in enumerate(order):
    inverse[axis] = position
  return jnp.transpose(transposed, inverse)


def on_rows(fn: Callable[..., jax.Array], leaf, axes: tuple[int, ...],
            *others, rows_out: bool = True, trace_key: Hashable = None
            ) -> jax.Array:
  """Applies ``fn`` to the rows of ``leaf`` (and of ``others``, same shape).

  The one place where leaves meet the row kernels: a sharded leaf is laid out
  so that no vector axis is sharded, and a leaf-shaped result (``rows_out``)
  is put back on ``leaf``'s shape and sharding; otherwise ``fn``'s output is
  returned as it is.

  Called outside ``jit`` (on arrays, not tracers), the whole computation is
  one compiled program, kept for the next leaf of the same shape, dtype and
  sharding (op by op, each of its operations would compile on its own). It is
  kept per ``(fn, axes, rows_out, trace_key)``: ``fn`` must be the same
  object at every call (a module-level function), and ``trace_key`` must
  hold whatever else the trace reads (a variant chosen by the environment).
  """
  if any(isinstance(x, jax.core.Tracer) for x in (leaf, *others)):
    return _traced_on_rows(fn, axes, rows_out, leaf, *others)
  leaf = jnp.asarray(leaf)
  out = _compiled_on_rows(fn, axes, rows_out, trace_key)(
      leaf, *map(jnp.asarray, others))
  return restore_sharding(out, leaf, None) if rows_out else out


@functools.cache
def _compiled_on_rows(fn: Callable[..., jax.Array], axes: tuple[int, ...],
                      rows_out: bool, trace_key: Hashable
                      ) -> Callable[..., jax.Array]:
  del trace_key  # a key of the cache only
  return jax.jit(functools.partial(_traced_on_rows, fn, axes, rows_out))


def _traced_on_rows(fn: Callable[..., jax.Array], axes: tuple[int, ...],
                    rows_out: bool, leaf, *others) -> jax.Array:
  leaf = jnp.asarray(leaf)
  target = sort_sharding(leaf, axes)
  rows = [to_rows(to_sort_sharding(jnp.asarray(x), target), axes)
          for x in (leaf, *others)]
  out = map_rows(fn, *rows)
  if not rows_out:
    return out
  return restore_sharding(from_rows(out, axes, jnp.shape(leaf)), leaf, target)
