"""An independent NumPy reference of LaPerm, written from the paper.

It follows the official code's formulation (rank = argsort(argsort(vector)),
then a gather from the sorted pool), not the library's scatter, and loops in
Python over vectors, so that it shares no code with ``laperm_jax``.
"""

import numpy as np


def vector_rows(x: np.ndarray, axes) -> np.ndarray:
  """Moves ``axes`` (in that order) last and flattens them: one row a vector."""
  x = np.asarray(x)
  axes = [a % x.ndim for a in axes]
  moved = np.moveaxis(x, axes, list(range(x.ndim - len(axes), x.ndim)))
  length = int(np.prod([x.shape[a] for a in axes]))
  return moved.reshape(-1, length)


def from_vector_rows(rows: np.ndarray, axes, shape) -> np.ndarray:
  axes = [a % len(shape) for a in axes]
  batch = [a for a in range(len(shape)) if a not in axes]
  moved_shape = [shape[a] for a in batch] + [shape[a] for a in axes]
  moved = rows.reshape(moved_shape)
  return np.moveaxis(moved, list(range(len(shape) - len(axes), len(shape))),
                     axes)


def default_axes(ndim: int):
  return (0,) if ndim == 1 else tuple(range(ndim - 1))


def _ranking_keys(v: np.ndarray) -> np.ndarray:
  # float64 holds every f16/bf16/f32 value exactly and keeps their order;
  # -0.0 == 0.0 and NaNs sort last in NumPy, as the paper's sort does.
  return np.asarray(v, dtype=np.float64)


def pool_of(x: np.ndarray, axes=None) -> np.ndarray:
  """Each weight vector sorted ascending, in x's layout."""
  axes = default_axes(np.ndim(x)) if axes is None else axes
  rows = vector_rows(x, axes)
  order = [np.argsort(_ranking_keys(r), kind='stable') for r in rows]
  sorted_rows = np.stack([r[o] for r, o in zip(rows, order)]) if len(rows) \
      else rows
  return from_vector_rows(sorted_rows, axes, np.shape(x))


def reconnect(current: np.ndarray, pool: np.ndarray, axes=None) -> np.ndarray:
  """The paper's sync: rank = argsort(argsort(v)); new = sorted_pool[rank]."""
  axes = default_axes(np.ndim(current)) if axes is None else axes
  rows = vector_rows(current, axes)
  pool_rows = vector_rows(pool, axes)
  out = np.empty_like(pool_rows)
  for i, (v, p) in enumerate(zip(rows, pool_rows)):
    rank = np.argsort(np.argsort(_ranking_keys(v), kind='stable'),
                      kind='stable')
    out[i] = p[rank]
  return from_vector_rows(out, axes, np.shape(current))


class SGD:
  def __init__(self, lr):
    self.lr = np.float32(lr)

  def init(self, params):
    return None

  def update(self, grads, state):
    return {k: (-self.lr * g).astype(np.float32) for k, g in grads.items()}, state


class Adam:
  """optax.adam's arithmetic, in float32."""

  def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8):
    self.lr, self.b1, self.b2, self.eps = map(np.float32, (lr, b1, b2, eps))

  def init(self, params):
    zeros = {k: np.zeros_like(v) for k, v in params.items()}
    return (0, zeros, dict(zeros))

  def update(self, grads, state):
    t, mu, nu = state
    t += 1
    one = np.float32(1)
    mu = {k: (self.b1 * mu[k] + (one - self.b1) * g).astype(np.float32)
          for k, g in grads.items()}
    nu = {k: (self.b2 * nu[k] + (one - self.b2) * g * g).astype(np.float32)
          for k, g in grads.items()}
    c1 = one - self.b1 ** np.float32(t)
    c2 = one - self.b2 ** np.float32(t)
    updates = {k: (-self.lr * (mu[k] / c1) / (np.sqrt(nu[k] / c2) + self.eps)
                   ).astype(np.float32) for k in grads}
    return updates, (t, mu, nu)


def trajectory(params, grads_seq, inner, k, reconnected, carry_residual=0.0):
  """Params after each step of LaPerm(inner) with constant period k.

  ``params`` and gradients are flat dicts of float32 arrays; ``reconnected``
  names the keys with a pool (default vector axes). Syncs follow the paper:
  on 1-based steps k, 2k, ...; the weights land on
  ``p + (reconnect(p + u) - p)`` as ``optax.apply_updates`` computes it.
  With ``carry_residual`` = beta > 0 a sync ranks candidate + residual and
  keeps residual = beta * (ranked - reconnected) (error feedback).
  Returns a list of (params, synced) per step.
  """
  params = {key: np.asarray(v, np.float32) for key, v in params.items()}
  pools = {key: pool_of(params[key]) for key in reconnected}
  state = inner.init(params)
  residual = {key: np.zeros_like(params[key]) for key in reconnected}
  beta = np.float32(carry_residual)
  out = []
  for step, grads in enumerate(grads_seq, start=1):
    updates, state = inner.update(grads, state)
    synced = step % k == 0
    if synced:
      for key in reconnected:
        candidate = (params[key] + updates[key]).astype(np.float32)
        if carry_residual:
          candidate = (candidate + residual[key]).astype(np.float32)
        target = reconnect(candidate, pools[key])
        if carry_residual:
          residual[key] = (beta * (candidate - target)).astype(np.float32)
        updates[key] = (target - params[key]).astype(np.float32)
    params = {key: (params[key] + updates[key]).astype(np.float32)
              for key in params}
    out.append((params, synced))
  return out
