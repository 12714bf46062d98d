"""Replay config: one frozen dataclass, validated at construction."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from common.validation import ConfigError, check_int, check_range, check_finite_fields


def sampler_workers_for(cores: int) -> int:
  """Reverb sampling streams for a host with `cores` cores: 2 (the value before it was an option) up to 11 cores,
  then one per 4 cores, at most 8: the actors and the learner keep the rest (docs/benchmarks.md, bench/replay.py:
  the rate by the number of streams)."""
  return min(8, max(2, cores // 4))


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
  """Reverb tables, rate limiting and the sampling pipeline. Sizes count transitions."""

  max_size: int = 1_000_000
  """Transitions kept; the oldest is removed first (FIFO)."""
  min_replay_size: int = 50_000
  """Transitions inserted before the learner may sample."""
  samples_per_insert: float = 8.0
  """Transitions sampled per transition inserted (DQN Zoo: batch 32 every 4 agent steps = 8)."""
  samples_per_insert_tolerance: float = 0.1
  """Allowed relative drift of the replay ratio, as a fraction of min_replay_size * samples_per_insert."""
  prioritized: bool = False
  """Prioritized replay (Schaul et al. 2016) instead of uniform sampling."""
  priority_exponent: float = 0.6
  """alpha: items are sampled with probability proportional to priority^alpha."""
  importance_sampling_exponent_begin: float = 0.4
  """beta at the first update; importance weights are (N * P(i))^-beta, normalised by the batch max."""
  importance_sampling_exponent_end: float = 1.0
  """beta after the anneal."""
  importance_sampling_anneal_updates: int = 1_000_000
  """Learner updates over which beta moves linearly from begin to end."""
  priority_eps: float = 1e-6
  """Added to |TD error| so no item's priority is ever zero."""
  # DQN Zoo and Dopamine insert at the max priority seen so far; our actors never see priorities (the learner sets them).
  initial_priority: float = 1.0
  """Priority of every transition an actor inserts (prioritized replay): a constant, not the max seen so far."""
  prefetch_batches: int = 4
  """Batches converted to device arrays ahead of the learner, on a background thread."""
  sampler_workers: Optional[int] = None
  """Reverb's streams sampling for the learner (TrajectoryDataset's num_workers_per_iterator); None: by the
  host's cores (sampler_workers_for)."""
  sampler_in_flight_per_worker: Optional[int] = None
  """Samples each stream may have requested and not yet handed over; None: two batches' worth."""
  sampler_dataset_prefetch: int = 2
  """Batches tf.data prepares ahead of the conversion thread."""
  publish_params_every_updates: int = 100
  """The learner publishes its weights to the `params` table this often."""

  def __post_init__(self):
    check_finite_fields(self)
    check_int("max_size", self.max_size, low=1)
    check_int("min_replay_size", self.min_replay_size, low=1)
    if self.min_replay_size > self.max_size:
      raise ConfigError(f"min_replay_size={self.min_replay_size} must not exceed max_size={self.max_size}")
    check_range("samples_per_insert", self.samples_per_insert, low=0.0, low_inclusive=False)
    check_range("samples_per_insert_tolerance", self.samples_per_insert_tolerance, low=0.0, low_inclusive=False)
    check_range("priority_exponent", self.priority_exponent, low=0.0)
    check_range("importance_sampling_exponent_begin", self.importance_sampling_exponent_begin, low=0.0, high=1.0)
    check_range("importance_sampling_exponent_end", self.importance_sampling_exponent_end, low=0.0, high=1.0)
    check_int("importance_sampling_anneal_updates", self.importance_sampling_anneal_updates, low=1)
    check_range("priority_eps", self.priority_eps, low=0.0, low_inclusive=False)
    check_range("initial_priority", self.initial_priority, low=0.0, low_inclusive=False)
    check_int("prefetch_batches", self.prefetch_batches, low=1)
    if self.sampler_workers is not None:
      check_int("sampler_workers", self.sampler_workers, low=1)
    if self.sampler_in_flight_per_worker is not None:
      check_int("sampler_in_flight_per_worker", self.sampler_in_flight_per_worker, low=1)
    check_int("sampler_dataset_prefetch", self.sampler_dataset_prefetch, low=1)
    check_int("publish_params_every_updates", self.publish_params_every_updates, low=1)

  def resolved_sampler_workers(self, cores: Optional[int] = None) -> int:
    return self.sampler_workers if self.sampler_workers is not None else sampler_workers_for(cores or os.cpu_count() or 1)

  def resolved_in_flight_per_worker(self, batch_size: int) -> int:
    return self.sampler_in_flight_per_worker if self.sampler_in_flight_per_worker is not None else 2 * batch_size

  @property
  def error_buffer(self) -> float:
    """How far (in samples) the sample/insert count may drift from the target ratio.

    Reverb requires at least 2 * max(1, samples_per_insert) so a single insert
    or sample can always proceed.
    """
    tolerance = self.samples_per_insert_tolerance * self.min_replay_size * self.samples_per_insert
    return max(tolerance, 2.0 * max(1.0, self.samples_per_insert))

  def importance_sampling_exponent(self, update_step: int) -> float:
    fraction = min(1.0, update_step / self.importance_sampling_anneal_updates)
    begin, end = self.importance_sampling_exponent_begin, self.importance_sampling_exponent_end
    return begin + fraction * (end - begin)
