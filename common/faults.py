"""Deterministic fault injection for the kill-and-resume tests (tests/test_crash_resume.py).

`DQN_FAULTS` is a comma-separated list of `<action>@<point>:<n>`: the n-th time this process passes
`at(point)`, it does `action`:

- `kill`: SIGKILL to this process, at once (no handler, no `finally`: a crash, or the OOM killer);
- `raise`: FaultInjected in the thread passing the point (a thread that dies of an error);
- any other action: the callback registered for it in `at(..., actions={...})` (train.py registers
  `kill-actor`, which SIGKILLs actor 0).

The points are named where they are passed (`common.run_dir.RunCheckpoints.save`, the learner process, an actor's
start in training/actor.py: each actor process counts its own passes). Without
the variable (always, outside the tests) `at` costs one dictionary lookup.
"""

from __future__ import annotations

import collections
import os
import signal
from typing import Callable, Mapping

ENV_VAR = "DQN_FAULTS"
_passes: collections.Counter = collections.Counter()


class FaultInjected(RuntimeError):
  """Raised by the `raise` action."""


def _plan() -> dict[str, list[tuple[str, int]]]:
  plan: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
  for entry in filter(None, (part.strip() for part in os.environ.get(ENV_VAR, "").split(","))):
    action, _, rest = entry.partition("@")
    point, _, nth = rest.partition(":")
    if not action or not point or not nth.isdigit():
      raise ValueError(f"{ENV_VAR} entry {entry!r} is not <action>@<point>:<n>")
    plan[point].append((action, int(nth)))
  return plan


def at(point: str, actions: Mapping[str, Callable[[], None]] = {}) -> None:
  """Marks a fault point; does what DQN_FAULTS asks for on this pass, if anything."""
  if ENV_VAR not in os.environ:
    return
  _passes[point] += 1
  for action, nth in _plan().get(point, ()):
    if nth != _passes[point]:
      continue
    print(f"fault injection: {action} at {point} (pass {nth})", flush=True)
    if action == "kill":
      os.kill(os.getpid(), signal.SIGKILL)
    if action == "raise":
      raise FaultInjected(f"{action}@{point}:{nth}")
    actions[action]()
