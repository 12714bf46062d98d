"""What the learner accepts from the `events` queue once a message's MAC has passed (replay/messages.py).

A signed message comes from a process that holds the job's secret, but the learner still bounds what one
report may claim, so that a bug or a stolen secret cannot end a run or fill its metrics with fiction:

- an actor report names a known actor id (this host's, or one of a joined host's), claims at most
  MAX_ENV_STEPS_PER_REPORT_PER_ENV steps per environment (actors report every second; an Atari environment
  takes a few thousand steps a second at the very most), and its episodes have finite returns and
  positive lengths;
- an evaluation has a non-empty list of finite returns;
- an actor host that joins (or an actor started by hand, as a host of one) names actor ids no other host
  (nor this one) uses: two hosts with the same ids would play the same seeds and have their episodes mixed
  under one id. A host none of whose actors has reported for HOST_SILENT_S has gone (its actors report every
  second), and its ids are free for the next host that asks.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Optional

from common.validation import is_finite_number

MAX_ENV_STEPS_PER_REPORT_PER_ENV = 10_000
HOST_SILENT_S = 60.0
KINDS = ("actor", "eval", "join")
FRAMES_EVALUATION_SCORES = ("cut_off_return", "dqn_zoo_episode_return")  # an eval_frames evaluation's besides returns


def _short_name(value) -> bool:
  """A game id as a task: a short snake_case string, with `:` before a mode or difficulty (breakout:m4:d1)."""
  return isinstance(value, str) and len(value) <= 64 and all(c.isalnum() or c in "_:" for c in value)


def _count(value, low: int = 0) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= low


class EventGate:
  def __init__(self, local_actor_ids: Iterable[int], num_envs_per_actor: int,
               clock: Callable[[], float] = time.monotonic):
    self.local_ids = set(local_actor_ids)
    self.hosts: dict[str, set[int]] = {}
    self.max_env_steps = num_envs_per_actor * MAX_ENV_STEPS_PER_REPORT_PER_ENV
    self._clock = clock
    self._heard_s: dict[str, float] = {}  # host -> when it joined or one of its actors last reported

  def known(self, actor_id) -> bool:
    return actor_id in self.local_ids or any(actor_id in ids for ids in self.hosts.values())

  def heard(self, actor_id: int) -> None:
    """A report from `actor_id` counted: its host is alive."""
    for host, ids in self.hosts.items():
      if actor_id in ids:
        self._heard_s[host] = self._clock()

  def join(self, host: str, actor_ids: list[int]) -> tuple[bool, str]:
    """(accepted, reason) for an actor host joining with `actor_ids`; a host may join again with the same ids."""
    ids, now_s = set(actor_ids), self._clock()
    if host in self.hosts and self.hosts[host] == ids:
      self._heard_s[host] = now_s
      return True, "joined again"
    taken = ids & self.local_ids
    if taken:
      return False, (f"actor ids {sorted(taken)} are the learner host's own; give ids past them "
                     "(train.py --first-actor-id, python -m training.actor --actor-id)")
    overlapping = [other for other, other_ids in self.hosts.items() if other != host and ids & other_ids]
    for other in overlapping:
      silent_s = now_s - self._heard_s[other]
      if silent_s < HOST_SILENT_S:
        return False, (f"actor ids {sorted(ids & self.hosts[other])} are taken by host {other[:8]}, last heard "
                       f"{silent_s:.0f} s ago (a host silent for {HOST_SILENT_S:.0f} s frees its ids); give each "
                       "host its own range with --first-actor-id")
    for other in overlapping:  # all silent: gone
      del self.hosts[other], self._heard_s[other]
    self.hosts[host], self._heard_s[host] = ids, now_s
    return True, "joined" + (f" (in place of silent host{'s' if len(overlapping) > 1 else ''} "
                             f"{', '.join(other[:8] for other in overlapping)})" if overlapping else "")

  def problem(self, event: dict) -> Optional[str]:
    """None if the event may count, else why it may not."""
    kind = event.get("kind")
    if kind not in KINDS:
      return f"unknown event kind {str(kind)[:40]!r}"
    if kind == "join":
      ids = event.get("actor_ids")
      if not isinstance(event.get("host"), str) or not isinstance(ids, list) or not ids or \
          not all(_count(i) for i in ids):
        return "a join without a host name and a list of actor ids"
      return None
    if kind == "eval":
      returns, on_budget = event.get("returns"), "budget_frames" in event  # on a budget no game may have ended
      if not isinstance(returns, list) or not (returns or on_budget) or not all(is_finite_number(r) for r in returns):
        return "an evaluation without finite returns"
      if on_budget and not (_count(event["budget_frames"], low=1) and _count(event.get("cut_off_steps"))
                            and all(is_finite_number(event.get(key)) for key in FRAMES_EVALUATION_SCORES)):
        return "an evaluation on a budget of frames without its budget and finite scores"
      if not _short_name(event.get("task", "")):
        return "an evaluation that names its task with something other than a game name"
      return None
    if not self.known(event.get("actor")):
      return f"a report from unknown actor id {str(event.get('actor'))[:40]}"
    steps = event.get("env_steps")
    if not _count(steps) or steps > self.max_env_steps:
      return f"a report of {str(steps)[:40]} env steps (at most {self.max_env_steps:,} per report)"
    episodes = event.get("episodes")
    if not isinstance(episodes, list) or not all(
        isinstance(e, dict) and is_finite_number(e.get("return")) and _count(e.get("length_steps"), 1) for e in episodes):
      return "a report whose episodes lack a finite return or a positive length"
    if not all(_short_name(e.get("task", "")) for e in episodes):
      return "a report whose episodes name their task with something other than a game name"
    return None
