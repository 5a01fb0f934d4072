"""The sync period ``k``: a positive int, an int scalar array or a schedule."""

import jax
import jax.numpy as jnp
import numpy as np

from laperm_jax._typing import SyncPeriod


def check_sync_period(sync_period: SyncPeriod) -> None:
  """Raises unless a concrete sync period is a positive int.

  Tracers (``optax.inject_hyperparams``) and schedules pass unchecked: a
  schedule's values are checked by :func:`period_at`.

  Example:
    >>> from laperm_jax._sync_period import check_sync_period
    >>> check_sync_period(0)
    Traceback (most recent call last):
      ...
    ValueError: sync_period must be positive, got 0.
  """
  if callable(sync_period) or isinstance(sync_period, jax.core.Tracer):
    return
  if isinstance(sync_period, (bool, np.bool_)):
    raise TypeError(f'sync_period must be a positive int, got {sync_period!r}.')
  if isinstance(sync_period, (np.ndarray, jax.Array)):
    if sync_period.shape != () or not jnp.issubdtype(sync_period.dtype,
                                                     jnp.integer):
      raise TypeError('sync_period must be a positive int or an integer '
                      f'scalar array, got {sync_period!r}.')
    sync_period = int(sync_period)
  elif not isinstance(sync_period, (int, np.integer)):
    raise TypeError(
        'sync_period must be a positive int or a schedule (a callable of the '
        f'int32 step count), got {sync_period!r}.')
  if sync_period <= 0:
    raise ValueError(f'sync_period must be positive, got {sync_period}.')


def period_at(sync_period: SyncPeriod, count: jax.Array) -> jax.Array:
  """``k`` as an int32 scalar at update call ``count`` (schedules checked).

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax._sync_period import period_at
    >>> int(period_at(lambda count: 2 * count + 1, jnp.int32(3)))
    7
  """
  if callable(sync_period):
    period = sync_period(count)
    if not isinstance(period, jax.core.Tracer):
      try:
        check_sync_period(period)
      except (TypeError, ValueError) as e:
        where = ('' if isinstance(count, jax.core.Tracer) else
                 f' at count {int(count)}')
        raise type(e)(f'the sync_period schedule returned {period!r}{where}: '
                      f'{e}') from None
    return jnp.asarray(period, dtype=jnp.int32)
  return jnp.asarray(sync_period, dtype=jnp.int32)
