"""Which weights a sync moves, per reconnected leaf and per kind of layer.

A sync record's ``moved_by_leaf`` maps each reconnected leaf's '/'-joined
path to ``[moved, size]``: how many of its weights hold another value than
after the previous sync (or theta_0 at the first), and how many it has.
``fraction_by_kind`` sums them over the leaves of each kind of layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

Params = Any


def moved_by_leaf(previous: Params, current: Params,
                  mask: Params) -> dict[str, list[int]]:
  """``{path: [weights whose value changed, weights]}`` per masked leaf.

  Example:
    >>> import numpy as np
    >>> moved_by_leaf({'w': np.array([[1., 2., 3.]]), 'b': np.zeros(2)},
    ...               {'w': np.array([[2., 2., 3.]]), 'b': np.ones(2)},
    ...               {'w': True, 'b': False})
    {'w': [1, 3]}
  """
  out = {}
  for (path, a), b, flag in zip(
      jax.tree_util.tree_flatten_with_path(previous)[0],
      jax.tree.leaves(current), jax.tree.leaves(mask)):
    if flag:
      name = jax.tree_util.keystr(path, simple=True, separator='/')
      out[name] = [int(np.sum(np.asarray(a) != np.asarray(b))),
                   int(np.size(a))]
  return out


def fraction_by_kind(moved: dict[str, list[int]],
                     kind_of: Callable[[str], str]) -> dict[str, float]:
  """The fraction of each kind's weights that moved, kinds from leaf paths.

  Example:
    >>> fraction_by_kind({'a/kernel': [1, 4], 'b/kernel': [3, 4]},
    ...                  lambda name: name.split('/')[0] == 'a' and 'x' or 'y')
    {'x': 0.25, 'y': 0.75}
  """
  totals: dict[str, list[int]] = {}
  for name, (changed, size) in moved.items():
    entry = totals.setdefault(kind_of(name), [0, 0])
    entry[0] += changed
    entry[1] += size
  return {kind: changed / size for kind, (changed, size) in totals.items()}
