"""Which axes of a leaf form one weight vector, and moving leaves to rows.

A *weight vector* is all incoming weights of one output unit. For a Flax or
Keras Dense kernel ``(in, out)`` that is a column (axis 0); for a Conv kernel
``(kh, kw, in, out)`` it is everything but the last axis; a 1-D leaf is one
vector. These are the defaults. Other layouts (Equinox's ``(out, in)``
Linear, or "the whole tensor is one vector") are chosen with ``vector_axes``.

To sort, a leaf is transposed so its vector axes come last (in the order
given) and reshaped to ``(num_vectors, vector_length)``; ``from_rows`` undoes
that exactly.
"""

from collections.abc import Sequence
import math

import jax
import jax.numpy as jnp

AxesSpec = int | Sequence[int] | None


def is_axes_spec(x) -> bool:
  """True for one leaf's axes spec: None, an int, or a tuple/list of ints."""
  if x is None or (isinstance(x, int) and not isinstance(x, bool)):
    return True
  return isinstance(x, (tuple, list)) and all(
      isinstance(a, int) and not isinstance(a, bool) for a in x)


def normalize_vector_axes(spec: AxesSpec, ndim: int, name: str = 'leaf'
                          ) -> tuple[int, ...]:
  """Resolves an axes spec against a leaf of rank ``ndim``.

  Args:
    spec: ``None`` (every axis but the last; a 1-D leaf is one vector), an int
      or a sequence of ints (negative values count from the end).
    ndim: the leaf's rank, at least 1.
    name: how the leaf is named in error messages (its tree path).

  Returns:
    A tuple of non-negative, distinct axes, in the order given.

  Example:
    >>> from laperm_jax.vectors import normalize_vector_axes
    >>> normalize_vector_axes(None, 4)
    (0, 1, 2)
    >>> normalize_vector_axes(-1, 2)
    (1,)
  """
  if ndim < 1:
    raise ValueError(
        f'{name}: a scalar leaf has no weight vector to reconnect; exclude it '
        'with `mask`.')
  if spec is None:
    return (0,) if ndim == 1 else tuple(range(ndim - 1))
  if not is_axes_spec(spec):
    raise TypeError(
        f'{name}: vector_axes must be None, an int or a tuple of ints, got '
        f'{spec!r}.')
  axes = (spec,) if isinstance(spec, int) else tuple(spec)
  if not axes:
    raise ValueError(f'{name}: vector_axes must name at least one axis.')
  for a in axes:
    if not -ndim <= a < ndim:
      raise ValueError(
          f'{name}: vector axis {a} is out of range for a leaf of rank {ndim}.')
  axes = tuple(a % ndim for a in axes)
  if len(set(axes)) != len(axes):
    raise ValueError(f'{name}: vector_axes {spec!r} repeats an axis.')
  return axes


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
