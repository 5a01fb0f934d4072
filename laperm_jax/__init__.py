"""laperm_jax: LaPerm (Train-by-Reconnect) as an Optax gradient transformation.

Example:
  >>> import jax, jax.numpy as jnp, optax, laperm_jax
  >>> params = {'kernel': jax.random.normal(jax.random.key(0), (4, 3))}
  >>> tx = laperm_jax.laperm(optax.adam(1e-3), sync_period=250)
  >>> state = tx.init(params)
  >>> isinstance(state, laperm_jax.LaPermState)
  True
"""

from laperm_jax.initializers import shared_value_init
from laperm_jax.initializers import sparse_init
from laperm_jax.masks import default_mask
from laperm_jax.reconnection import is_permutation_of_pool
from laperm_jax.reconnection import reconnect
from laperm_jax.reconnection import sorted_pool
from laperm_jax.restore import check_state
from laperm_jax.transform import LaPermState
from laperm_jax.transform import laperm

__version__ = '0.1.0'

__all__ = (
    'LaPermState',
    'check_state',
    'default_mask',
    'is_permutation_of_pool',
    'laperm',
    'reconnect',
    'shared_value_init',
    'sorted_pool',
    'sparse_init',
)
