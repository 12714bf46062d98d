"""Aggregate estimators and stratified bootstrap intervals, computed by rliable itself.

Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical Precipice" (NeurIPS), and their
library rliable (google-research/rliable, pinned 1.2.0: `rliable/metrics.py` for the aggregates and the
probability of improvement, `rliable/library.py` for `get_interval_estimates`, which runs arch's percentile
bootstrap on `StratifiedBootstrap` (one score matrix) or `StratifiedIndependentBootstrap` (two)).

Scores are given per game: a mapping `game -> float[num_runs]`, one entry per run (seed), turned into rliable's
score matrix float[num_runs, num_games]. rliable needs the same number of runs in every game of a matrix
(`score_matrix` raises otherwise; the report keeps each game's first runs and says so); the two sides of a
probability of improvement may have different run counts.

`bootstrap_band` (learning curves over env steps, with missing points) is not an rliable estimator and is
computed here.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Mapping, Optional

import numpy as np
from rliable import library as rly_library
from rliable import metrics as rly_metrics

DEFAULT_REPS = 2000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95

Scores = Mapping[str, np.ndarray]


def score_matrix(scores: Scores, games: Optional[list[str]] = None) -> np.ndarray:
  """rliable's float[num_runs, num_games] matrix, games in the given order (default: the mapping's)."""
  if not scores:
    raise ValueError("no games to aggregate")
  games = list(scores) if games is None else games
  columns = [np.asarray(scores[game], float).reshape(-1) for game in games]
  counts = {len(column) for column in columns}
  if len(counts) != 1:
    runs = {game: len(column) for game, column in zip(games, columns)}
    raise ValueError(f"rliable needs the same number of runs in every game; these have {runs}")
  return np.stack(columns, axis=1)


def equal_runs(scores: Scores) -> tuple[dict[str, np.ndarray], int]:
  """Each game's first n runs, n the smallest run count (the scores unchanged when the counts are equal), and n."""
  n = min(len(np.asarray(v).reshape(-1)) for v in scores.values())
  return {game: np.asarray(v, float).reshape(-1)[:n] for game, v in scores.items()}, n


def aggregate_mean(scores: Scores) -> float:
  """Mean over games of each game's mean score over runs (rliable `metrics.aggregate_mean`)."""
  return float(rly_metrics.aggregate_mean(score_matrix(scores)))


def aggregate_median(scores: Scores) -> float:
  """Median over games of each game's mean score over runs (rliable `metrics.aggregate_median`)."""
  return float(rly_metrics.aggregate_median(score_matrix(scores)))


def aggregate_iqm(scores: Scores) -> float:
  """Interquartile mean of all runs of all games pooled (rliable `metrics.aggregate_iqm`: scipy trim_mean 0.25)."""
  return float(rly_metrics.aggregate_iqm(score_matrix(scores)))


AGGREGATES: dict[str, Callable[[Scores], float]] = {
    "mean": aggregate_mean, "median": aggregate_median, "iqm": aggregate_iqm,
}
_RLIABLE = {aggregate_mean: rly_metrics.aggregate_mean, aggregate_median: rly_metrics.aggregate_median,
            aggregate_iqm: rly_metrics.aggregate_iqm}


def _common_games(x: Scores, y: Scores) -> list[str]:
  games = [game for game in x if game in y]
  if not games:
    raise ValueError("the two score sets have no game in common")
  return games


def probability_of_improvement(x: Scores, y: Scores) -> float:
  """P(X > Y) over the games both have (rliable `metrics.probability_of_improvement`: per game the Mann-Whitney
  U statistic over n_x n_y, P(x > y) + P(x = y) / 2, averaged over games; identical samples give 0.5)."""
  games = _common_games(x, y)
  return float(rly_metrics.probability_of_improvement(score_matrix(x, games), score_matrix(y, games)))


@dataclasses.dataclass(frozen=True)
class Interval:
  """A point estimate and its percentile bootstrap interval (None when there is no interval to give)."""

  value: float
  low: Optional[float] = None
  high: Optional[float] = None

  def to_dict(self) -> dict:
    return {"value": self.value, "ci": None if self.low is None else [self.low, self.high]}


def _seeded(seed: int, fn, *args, **kwargs):
  """fn(*args, **kwargs) with NumPy's global generator seeded, then put back as it was.

  rliable 1.2.0 draws its bootstrap indices from the global `np.random` (`StratifiedBootstrap.update_indices`,
  rliable/library.py:117), not from the `random_state` it hands to arch, so that argument alone does not make
  an interval reproducible (measured: two calls with RandomState(5) gave different intervals).
  """
  saved = np.random.get_state()
  np.random.seed(seed)
  try:
    with warnings.catch_warnings():  # ... and arch 7 calls that argument deprecated
      warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
      return fn(*args, **kwargs)
  finally:
    np.random.set_state(saved)


def stratified_bootstrap_ci(
    statistic: Callable[..., float],
    *score_sets: Scores,
    reps: int = DEFAULT_REPS,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Interval:
  """statistic(*score_sets) with rliable's percentile interval over `reps` stratified bootstrap replicates.

  `statistic` is one of AGGREGATES (one score set) or `probability_of_improvement` (two, resampled
  independently within each game). `library.get_interval_estimates` does the work, with NumPy's global
  generator seeded by `seed` (see `_seeded`), so a report is reproducible.
  """
  if reps < 1:
    raise ValueError(f"reps={reps} must be at least 1")
  if statistic is probability_of_improvement:
    x, y = score_sets
    games = _common_games(x, y)
    data = [score_matrix(x, games), score_matrix(y, games)]
    func = lambda a, b: np.array([rly_metrics.probability_of_improvement(a, b)])
  elif statistic in _RLIABLE and len(score_sets) == 1:
    data = score_matrix(score_sets[0])
    metric = _RLIABLE[statistic]
    func = lambda m: np.array([metric(m)])
  else:
    raise ValueError(f"{getattr(statistic, '__name__', statistic)} is not an rliable estimator of this module")
  points, intervals = _seeded(seed, rly_library.get_interval_estimates, {"x": data}, func, reps=reps,
                              confidence_interval_size=confidence)
  low, high = np.asarray(intervals["x"], float).reshape(2)
  return Interval(float(np.asarray(points["x"]).reshape(-1)[0]), float(low), float(high))


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
