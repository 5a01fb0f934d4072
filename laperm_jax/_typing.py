"""Type aliases of the public signatures, rendered by name in the API docs."""

from collections.abc import Callable
from typing import Any, TypeAlias

import jax

PyTree: TypeAlias = Any
"""A pytree of arrays (params, updates, optimizer states)."""

Mask: TypeAlias = PyTree | Callable[[PyTree], PyTree]
"""Which leaves are reconnected: a pytree prefix of params with a bool per
leaf or subtree (True = reconnected), or a callable of params returning one,
as in ``optax.masked``; None means the default."""

VectorAxes: TypeAlias = (int | tuple[int, ...] | PyTree |
                         Callable[[PyTree], PyTree])
"""Which axes of a leaf form one weight vector: an int or a tuple of ints for
every leaf, a pytree prefix of params with such values (None = the leaf's
default), or a callable of params returning one; None means the defaults."""

SyncPeriod: TypeAlias = int | jax.Array | Callable[[jax.Array],
                                                   jax.Array | int]
"""``k``: a positive int, an int32 scalar array, or a schedule (a callable
of the int32 count of previous update calls returning ``k``)."""
