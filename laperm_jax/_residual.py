"""Residual carry: what a sync throws away is remembered by the next ranking.

``laperm(..., carry_residual=beta)``. The paper's sync ranks the candidate
``c = params + inner_updates`` and replaces it by the pool values in that
order, ``q = reconnect(c)``; the displacement ``c - q`` is lost. With values
in ``{0, w}`` that loss stops training: an entry holding 0 overtakes one
holding ``w`` only if the inner optimizer moves it by more than ``w`` within
one period of ``k`` steps, and Adam's normalised steps move both by about
the same amount, so after a few syncs nothing moves (experiments/RESULTS.md).

With a carry ``beta`` in (0, 1] each reconnected weight keeps a residual
``r`` (zero at init). A sync ranks ``key = c + r`` instead of ``c``, writes
``q = reconnect(key)`` as usual, and keeps ``r <- beta * (key - q)``. So the
ranking sees ``q + r``, a latent weight that follows the sum of the inner
updates across syncs (``beta = 1``) or an exponentially weighted sum of the
last ``1 / (1 - beta)`` periods, the way error feedback keeps what a
quantiser rounded off. A weight that keeps being pushed up accumulates until
it overtakes, however small each period's push. The params themselves are
unchanged: after every sync they are an exact per-vector permutation of the
initial values, and between syncs the inner optimizer works from them as
before. ``beta = 0`` is the paper's sync.

Cost: one more param-sized copy of the reconnected leaves in the state, read
and written only on sync steps.
"""

import jax
import jax.numpy as jnp
import numpy as np

from laperm_jax import _pool
from laperm_jax._typing import PyTree

Carry = float | jax.typing.ArrayLike
"""``beta``: a Python float, or a float scalar array (possibly a tracer)."""


def carry_or_none(carry_residual: float | jax.typing.ArrayLike | None
                  ) -> Carry | None:
  """The carry ``beta``, or None when it is off (None or 0: the paper's sync).

  A Python number must be in [0, 1] and comes back as a float. A scalar
  array (e.g. from ``optax.inject_hyperparams``) turns the carry on with a
  value that may change between calls; it is range-checked only when it is
  concrete (a tracer passes unchecked).

  Example:
    >>> from laperm_jax._residual import carry_or_none
    >>> carry_or_none(0) is None, carry_or_none(1)
    (True, 1.0)
  """
  if carry_residual is None:
    return None
  if isinstance(carry_residual, (bool, np.bool_)):
    raise TypeError('carry_residual must be a number in [0, 1], got '
                    f'{carry_residual!r}.')
  if isinstance(carry_residual, jax.core.Tracer):
    return carry_residual
  if isinstance(carry_residual, (np.ndarray, jax.Array)):
    if carry_residual.shape != () or not jnp.issubdtype(
        carry_residual.dtype, jnp.floating):
      raise TypeError('carry_residual must be a number in [0, 1] or a float '
                      f'scalar array, got {carry_residual!r}.')
    _check_range(float(carry_residual))
    return carry_residual
  if not isinstance(carry_residual, (int, float, np.integer, np.floating)):
    raise TypeError('carry_residual must be a number in [0, 1], got '
                    f'{carry_residual!r}.')
  value = _check_range(float(carry_residual))
  return value or None


def _check_range(value: float) -> float:
  if not 0.0 <= value <= 1.0:
    raise ValueError(f'carry_residual must be in [0, 1], got {value}: 0 is '
                     "the paper's sync, 1 keeps the whole residual.")
  return value


def init(pool: PyTree, params: PyTree) -> PyTree:
  """Zero residuals for the reconnected leaves, ``MaskedNode`` elsewhere."""
  return jax.tree.map(
      lambda entry, p: entry if _pool.is_masked(entry) else jnp.zeros_like(p),
      pool, params, is_leaf=_pool.is_pool_entry)


def ranking_key(candidate: jax.Array, residual: jax.Array) -> jax.Array:
  """``candidate + residual``, in the candidate's dtype."""
  return (candidate + residual).astype(jnp.result_type(candidate))


def carried(key: jax.Array, reconnected: jax.Array, residual: jax.Array,
            beta: Carry) -> jax.Array:
  """``beta * (key - reconnected)``, in the residual's dtype."""
  return jnp.asarray(beta * (key - reconnected)).astype(
      jnp.result_type(residual))
