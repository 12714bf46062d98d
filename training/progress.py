"""The learner's progress line and its train.jsonl row: rates, ETA, training time.

It imports without JAX (training/learner_process.py starts its children before JAX loads); what the learner
keeps on the device between rows (summed metrics, the divergence watch) is in training/updates.py."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from training.config import RunConfig

class Progress:
  """Rates, ETA and the progress line; one train.jsonl row per `log_every_s`."""

  def __init__(self, config: RunConfig, counters: dict):
    self._config = config
    self._counters = counters
    self._started_s = time.monotonic()
    self._train_time_before_s = counters["train_time_s"]
    self._last_s = self._started_s
    self._last_env_steps = counters["env_steps"]
    self._last_updates = counters["updates"]

  def train_time_s(self) -> float:
    return self._train_time_before_s + time.monotonic() - self._started_s

  def due(self) -> bool:
    return time.monotonic() - self._last_s >= self._config.log_every_s

  def row(self, replay_size: int, epsilon: float, recent_returns, actor_rates: dict) -> dict:
    """`actor_rates`: actor id -> its last report's values of training.job_channel.ACTOR_REPORT_KEYS."""
    now = time.monotonic()
    elapsed_s = max(now - self._last_s, 1e-9)
    env_steps, updates = self._counters["env_steps"], self._counters["updates"]
    env_rate = (env_steps - self._last_env_steps) / elapsed_s
    update_rate = (updates - self._last_updates) / elapsed_s
    self._last_s, self._last_env_steps, self._last_updates = now, env_steps, updates
    remaining = max(0, self._config.total_env_steps - env_steps)
    return {
        "env_steps": env_steps,
        "step": updates,
        "episodes": self._counters["episodes"],
        "env_steps_per_s": env_rate,
        "updates_per_s": update_rate,
        "actor_env_steps_per_s": sum(rates["steps_per_s"] for rates in actor_rates.values()),
        # Per actor, the speed of its loop when not held back by the rate limiter, and how often it was.
        "actor_loop_steps_per_s": sum(r["loop_steps_per_s"] for r in actor_rates.values()) / max(1, len(actor_rates)),
        "actor_blocked_fraction": sum(r["blocked_fraction"] for r in actor_rates.values()) / max(1, len(actor_rates)),
        # The newest weights any actor acts with, and the publications the actors dropped (not the job's).
        "actor_params_version": max((int(r["params_version"]) for r in actor_rates.values()), default=None),
        "actor_weights_rejected": sum(int(r["weights_rejected"]) for r in actor_rates.values()),
        "replay_size": replay_size,
        "epsilon": epsilon,
        "recent_mean_return": float(sum(recent_returns) / len(recent_returns)) if recent_returns else None,
        "recent_episodes": len(recent_returns),
        "train_time_s": self.train_time_s(),
        "eta_s": remaining / env_rate if env_rate > 0 else None,
    }

  def line(self, row: dict) -> str:
    total = self._config.total_env_steps
    ret = "-" if row["recent_mean_return"] is None else f"{row['recent_mean_return']:.1f}"
    eta = "-" if row["eta_s"] is None else duration(row["eta_s"])
    loss = f" | loss {row['loss']:.4f}" if "loss" in row else ""
    return (f"[{100 * row['env_steps'] / total:5.1f}%] {row['env_steps']:,}/{total:,} env steps | "
            f"{row['env_steps_per_s']:,.0f} steps/s | {row['updates_per_s']:,.1f} upd/s | "
            f"replay {row['replay_size']:,} | return(last {row['recent_episodes']}) {ret} | "
            f"eps {row['epsilon']:.3f}{loss} | ETA {eta}")


def duration(seconds: float) -> str:
  seconds = int(seconds)
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
