"""Aggregate estimators and stratified bootstrap intervals, as rliable defines them.

Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical
Precipice" (NeurIPS), and their library rliable (github.com/google-research/rliable,
`rliable/metrics.py`, `rliable/library.py`). rliable itself is not a dependency: it
pulls pandas and seaborn, which would move the numpy that TensorFlow 2.15 pins.

Scores are given per game: a mapping `game -> float[..., num_runs_game]`, one entry
per run (seed). Every estimator also accepts leading batch dimensions (`...`), so the
bootstrap evaluates all its replicates in one vectorised call; games may have
different run counts (rliable needs a full runs x games matrix; with equal counts the
two definitions coincide).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional

import numpy as np
import scipy.stats

DEFAULT_REPS = 2000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95

Scores = Mapping[str, np.ndarray]


def iqm(values: np.ndarray) -> np.ndarray:
  """Interquartile mean over the last axis: float[..., n] -> float[...].

  scipy.stats.trim_mean(values, 0.25) as in rliable: sort, drop floor(0.25 * n)
  values from each end, average the rest. For n = 8 that drops 2 per side; for
  n = 10, floor(2.5) = 2 per side, so the middle 6 of 10 are averaged (no
  fractional weighting of the boundary values).
  """
  return np.asarray(scipy.stats.trim_mean(np.asarray(values, float), 0.25, axis=-1))


def _per_game_means(scores: Scores) -> np.ndarray:
  """float[..., num_games]: each game's mean over its runs."""
  if not scores:
    raise ValueError("no games to aggregate")
  return np.stack([np.mean(np.asarray(s, float), axis=-1) for s in scores.values()], axis=-1)


def aggregate_mean(scores: Scores) -> np.ndarray:
  """Mean over games of each game's mean score over runs (rliable `aggregate_mean`)."""
  return np.mean(_per_game_means(scores), axis=-1)


def aggregate_median(scores: Scores) -> np.ndarray:
  """Median over games of each game's mean score over runs (rliable `aggregate_median`)."""
  return np.median(_per_game_means(scores), axis=-1)


def aggregate_iqm(scores: Scores) -> np.ndarray:
  """IQM of all runs of all games pooled together (rliable `aggregate_iqm`, trim_mean over runs x games)."""
  if not scores:
    raise ValueError("no games to aggregate")
  return iqm(np.concatenate([np.asarray(s, float) for s in scores.values()], axis=-1))


AGGREGATES: dict[str, Callable[[Scores], np.ndarray]] = {
    "mean": aggregate_mean, "median": aggregate_median, "iqm": aggregate_iqm,
}


def probability_of_improvement(x: Scores, y: Scores) -> np.ndarray:
  """P(X > Y): over the games both have, the mean of the Mann-Whitney U statistic divided by n_x * n_y.

  Per game, U / (n_x n_y) = P(x > y) + P(x = y) / 2 over every pair of a run of X and a
  run of Y (rliable `probability_of_improvement`; identical samples give 0.5).
  """
  games = [game for game in x if game in y]
  if not games:
    raise ValueError("the two score sets have no game in common")
  per_game = []
  for game in games:
    a = np.asarray(x[game], float)[..., :, None]
    b = np.asarray(y[game], float)[..., None, :]
    per_game.append(np.mean((a > b) + 0.5 * (a == b), axis=(-2, -1)))
  return np.mean(np.stack(per_game, axis=-1), axis=-1)


def stratified_resample(scores: Scores, rng: np.random.Generator, reps: int) -> dict[str, np.ndarray]:
  """`reps` stratified bootstrap samples: game -> float[reps, num_runs_game].

  Runs are drawn with replacement within each game, so every replicate keeps each
  game's run count (rliable `StratifiedBootstrap`).
  """
  resampled = {}
  for game, values in scores.items():
    values = np.asarray(values, float)
    indices = rng.integers(0, values.shape[-1], size=(reps, values.shape[-1]))
    resampled[game] = values[indices]
  return resampled


@dataclasses.dataclass(frozen=True)
class Interval:
  """A point estimate and its percentile bootstrap interval (None when there is no interval to give)."""

  value: float
  low: Optional[float] = None
  high: Optional[float] = None

  def to_dict(self) -> dict:
    return {"value": self.value, "ci": None if self.low is None else [self.low, self.high]}


def stratified_bootstrap_ci(
    statistic: Callable[..., np.ndarray],
    *score_sets: Scores,
    reps: int = DEFAULT_REPS,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Interval:
  """statistic(*score_sets) with its percentile interval over `reps` stratified bootstrap replicates.

  Each score set is resampled independently within each game (rliable's
  `StratifiedIndependentBootstrap` when there are two, as for the probability of
  improvement); the interval is the (1 -/+ confidence) / 2 percentiles of the
  replicates, the `percentile` method rliable asks of arch.
  """
  if reps < 1:
    raise ValueError(f"reps={reps} must be at least 1")
  rng = np.random.default_rng(seed)
  value = float(statistic(*score_sets))
  replicates = np.asarray(statistic(*(stratified_resample(s, rng, reps) for s in score_sets)), float)
  tail = 100 * (1 - confidence) / 2
  low, high = np.percentile(replicates, [tail, 100 - tail])
  return Interval(value, float(low), float(high))


def has_spread(*score_sets: Scores) -> bool:
  """Whether every game of every set has at least 2 runs; with one run a bootstrap interval is a single point."""
  return all(np.asarray(s).shape[-1] >= 2 for scores in score_sets for s in scores.values())


def bootstrap_band(
    curves: np.ndarray, *, reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mean over runs of float[num_runs, num_points] curves (NaN: no data) and its percentile bootstrap band.

  Returns (mean, low, high), each float[num_points]; the band is NaN where fewer
  than 2 runs have data (no interval from one run).
  """
  curves = np.asarray(curves, float)
  present = np.isfinite(curves)
  counts = present.sum(axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean = np.where(counts > 0, np.nansum(curves, axis=0) / np.maximum(counts, 1), np.nan)
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, curves.shape[0], size=(reps, curves.shape[0]))
    samples = curves[indices]  # [reps, runs, points]
    sample_counts = np.isfinite(samples).sum(axis=1)
    sample_means = np.where(sample_counts > 0, np.nansum(samples, axis=1) / np.maximum(sample_counts, 1), np.nan)
  tail = 100 * (1 - confidence) / 2
  low = np.full(curves.shape[1], np.nan)
  high = np.full(curves.shape[1], np.nan)
  for point in np.flatnonzero(counts >= 2):
    column = sample_means[:, point]
    column = column[np.isfinite(column)]
    low[point], high[point] = np.percentile(column, [tail, 100 - tail])
  return mean, low, high
