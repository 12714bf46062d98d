"""Layer selections of the plasticity remedies (agents/dqn/remedies.py): `head`, `torso`, `all` or `last:K`
(the last K layers; `last:1` is the head). Plain Python, so that a config validates them without JAX."""

from __future__ import annotations

import re
from typing import Optional

LAYER_SELECTIONS = ("head", "torso", "all", "last:K")
_LAST = re.compile(r"^last:(\d+)$")


def last_k(selection: str) -> Optional[int]:
  """K of a `last:K` selection; None for any other."""
  match = _LAST.match(selection)
  return int(match.group(1)) if match else None


def check_layer_selection(name: str, selection: str) -> None:
  """Raises ValueError unless `selection` is head, torso, all or last:K with K >= 1."""
  k = last_k(selection)
  if selection in ("head", "torso", "all") or (k is not None and k >= 1):
    return
  raise ValueError(f"{name}={selection!r} is not one of head, torso, all, last:K (K >= 1)")
