"""Fixed LaPerm cases whose outputs are hashed, to compare across processes.

``test_properties.py`` computes :func:`digest` in the test process and in a
fresh one (``python tests/determinism_checks.py``); the hashes must agree.
"""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import laperm_jax

CASES = (
    # (shape, dtype, vector_axes, density, tie levels or None)
    ((6, 5), jnp.float32, None, 1.0, None),
    ((6, 5), jnp.float32, None, 0.3, None),
    ((4, 3, 5), jnp.bfloat16, (2, 0), 1.0, 3),
    ((9,), jnp.float16, None, 0.5, 2),
)


def case_params(seed, shape, dtype, density, levels):
  rng = np.random.default_rng(seed)
  if levels is None:
    values = rng.standard_normal(shape)
  else:
    values = rng.integers(-levels, levels + 1, shape) * 0.5
  values = np.where(rng.random(shape) < density, values, 0.0)
  return jnp.asarray(values, dtype)


def run_case(index, seed=0, steps=3):
  shape, dtype, axes, density, levels = CASES[index]
  params = {'w': case_params(seed, shape, dtype, density, levels)}
  tx = laperm_jax.laperm(optax.adam(0.3), 1, mask=True, vector_axes=axes)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for step in range(steps):
    grads = {'w': case_params(seed + 100 + step, shape, dtype, 1.0, levels)}
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def digest() -> str:
  hasher = hashlib.sha256()
  for index in range(len(CASES)):
    params, state = run_case(index)
    for leaf in jax.tree.leaves((params, state)):
      array = np.asarray(leaf)
      hasher.update(str((array.dtype, array.shape)).encode())
      hasher.update(array.tobytes())
  return hasher.hexdigest()


if __name__ == '__main__':
  print('DIGEST', digest())
