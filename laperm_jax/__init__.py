"""laperm_jax: LaPerm (Train-by-Reconnect) as an Optax gradient transformation.

Only the names exported here are public; the ``_``-prefixed modules are not.

Example:
  >>> import jax, jax.numpy as jnp, optax, laperm_jax
  >>> params = {'kernel': jax.random.normal(jax.random.key(0), (4, 3))}
  >>> tx = laperm_jax.laperm(optax.adam(1e-3), sync_period=250)
  >>> state = tx.init(params)
  >>> isinstance(state, laperm_jax.LaPermState)
  True
"""

from laperm_jax import _typing
from laperm_jax._initializers import shared_value_init
from laperm_jax._initializers import sparse_init
from laperm_jax._layouts import default_mask
from laperm_jax._layouts import default_vector_axes
from laperm_jax._pool import PoolLeaf
from laperm_jax._pool import is_permutation_of_pool
from laperm_jax._pool import reconnect
from laperm_jax._pool import sorted_pool
from laperm_jax._state_queries import check_state
from laperm_jax._state_queries import exact_params
from laperm_jax._state_queries import has_synced
from laperm_jax._states import LaPermState
from laperm_jax._states import SyncChanges
from laperm_jax._transform import laperm

PyTree = _typing.PyTree
"""A pytree of arrays (params, updates, optimizer states); ``typing.Any``."""

Mask = _typing.Mask
"""Which leaves are reconnected, as in ``optax.masked`` (True = reconnected),
given as a pytree prefix of params with a bool per leaf or subtree, or as a
callable of params returning one; None means :func:`default_mask`."""

VectorAxes = _typing.VectorAxes
"""The axes of a leaf that form one weight vector, given as an int or a tuple
of ints for every leaf, a pytree prefix of params with such values (None =
the leaf's default), or a callable of params returning one."""

SyncPeriod = _typing.SyncPeriod
"""The sync period ``k``, given as a positive int, an integer scalar array,
or a schedule (a callable of the int32 count of previous update calls
returning ``k``)."""

__version__ = '0.1.0'

__all__ = (
    'LaPermState',
    'Mask',
    'PoolLeaf',
    'PyTree',
    'SyncChanges',
    'SyncPeriod',
    'VectorAxes',
    'check_state',
    'default_mask',
    'default_vector_axes',
    'exact_params',
    'has_synced',
    'is_permutation_of_pool',
    'laperm',
    'reconnect',
    'shared_value_init',
    'sorted_pool',
    'sparse_init',
)
