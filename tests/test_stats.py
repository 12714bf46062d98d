"""reports/stats.py (rliable underneath) against hand-computed values and against rliable called directly: IQM,
aggregates, probability of improvement, bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from reports import stats


def _one_game(values) -> dict:
  return {"a": np.asarray(values, float)}


def test_iqm_of_1_to_8_is_the_mean_of_3_to_6():
  assert stats.aggregate_iqm(_one_game(np.arange(1, 9))) == pytest.approx(4.5)
  assert stats.aggregate_iqm(_one_game([8, 1, 7, 2, 6, 3, 5, 4])) == pytest.approx(4.5)  # order does not matter


@pytest.mark.parametrize("values, expected", [
    # n = 10: 25% of 10 is 2.5; trim_mean (as rliable) drops floor(2.5) = 2 per side, no fractional weights.
    (np.arange(1, 11), np.mean(np.arange(3, 9))),  # 5.5
    # n = 5: floor(1.25) = 1 per side; the outlier 100 is dropped.
    (np.array([1, 2, 3, 4, 100]), 3.0),
    # n = 3: floor(0.75) = 0: nothing is dropped.
    (np.array([0.0, 3.0, 30.0]), 11.0),
])
def test_iqm_with_a_fractional_quarter_follows_scipy_trim_mean(values, expected):
  assert stats.aggregate_iqm(_one_game(values)) == pytest.approx(expected)
  assert stats.aggregate_iqm(_one_game(values)) == pytest.approx(scipy.stats.trim_mean(values, 0.25))


def test_aggregates_of_hand_data():
  scores = {"a": np.array([0.0, 1.0]), "b": np.array([2.0, 4.0]), "c": np.array([10.0, 20.0])}
  # Per-game means 0.5, 3, 15.
  assert stats.aggregate_mean(scores) == pytest.approx((0.5 + 3 + 15) / 3)
  assert stats.aggregate_median(scores) == pytest.approx(3.0)
  # IQM pools the 6 runs: [0, 1, 2, 4, 10, 20], floor(1.5) = 1 dropped per side -> mean(1, 2, 4, 10).
  assert stats.aggregate_iqm(scores) == pytest.approx(4.25)
  np.testing.assert_array_equal(stats.score_matrix(scores), [[0.0, 2.0, 10.0], [1.0, 4.0, 20.0]])  # [runs, games]


def test_unequal_run_counts_are_refused_or_cut_to_the_first_runs_of_each_game():
  uneven = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([9.0, 100.0])}
  with pytest.raises(ValueError, match=r"same number of runs in every game; these have \{'a': 3, 'b': 2\}"):
    stats.aggregate_mean(uneven)
  even, n = stats.equal_runs(uneven)
  assert n == 2 and {g: v.tolist() for g, v in even.items()} == {"a": [1.0, 2.0], "b": [9.0, 100.0]}


def test_the_numbers_are_rliables_on_a_fixed_score_matrix():
  from rliable import library, metrics

  matrix = np.array([[0.1, 1.2, 0.05, 3.0], [0.4, 0.8, 0.0, 2.5], [0.3, 1.9, 0.2, 4.1], [0.2, 1.1, 0.1, 2.9],
                     [0.9, 0.7, 0.15, 3.3]])  # 5 runs x 4 games
  other = matrix[:, :] * np.array([1.1, 0.9, 1.5, 1.0]) + 0.05
  games = ["w", "x", "y", "z"]
  scores = {g: matrix[:, i] for i, g in enumerate(games)}
  other_scores = {g: other[:, i] for i, g in enumerate(games)}
  for name, ours, theirs in (("mean", stats.aggregate_mean, metrics.aggregate_mean),
                             ("median", stats.aggregate_median, metrics.aggregate_median),
                             ("iqm", stats.aggregate_iqm, metrics.aggregate_iqm)):
    interval = stats.stratified_bootstrap_ci(ours, scores, reps=300, seed=5)
    np.random.seed(5)  # rliable 1.2.0 draws from the global generator (reports/stats.py, _seeded)
    point, ci = library.get_interval_estimates({"m": matrix}, lambda m: np.array([theirs(m)]), reps=300)
    assert interval.value == pytest.approx(float(point["m"][0]), rel=1e-12), name
    np.testing.assert_allclose([interval.low, interval.high], np.ravel(ci["m"]), rtol=1e-12, err_msg=name)
  interval = stats.stratified_bootstrap_ci(stats.probability_of_improvement, other_scores, scores, reps=300, seed=5)
  np.random.seed(5)
  point, ci = library.get_interval_estimates(
      {"p": [other, matrix]}, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps=300)
  assert interval.value == pytest.approx(float(point["p"][0]), rel=1e-12)
  np.testing.assert_allclose([interval.low, interval.high], np.ravel(ci["p"]), rtol=1e-12)
  with pytest.raises(ValueError, match="not an rliable estimator"):
    stats.stratified_bootstrap_ci(np.mean, scores)


def test_probability_of_improvement_on_hand_data():
  x = {"a": np.array([1.0, 2.0, 3.0])}
  assert stats.probability_of_improvement(x, x) == 0.5  # identical samples
  assert stats.probability_of_improvement({"a": np.array([5.0, 6.0])}, {"a": np.array([1.0, 2.0, 4.0])}) == 1.0
  assert stats.probability_of_improvement({"a": np.array([1.0, 2.0, 4.0])}, {"a": np.array([5.0, 6.0])}) == 0.0
  # One tie among four pairs: (1,2) (1,3) (2,2)=1/2 (2,3) -> 0.5 / 4 = 0.125.
  tie_x, tie_y = {"a": np.array([1.0, 2.0])}, {"a": np.array([2.0, 3.0])}
  assert stats.probability_of_improvement(tie_x, tie_y) == pytest.approx(0.125)
  assert stats.probability_of_improvement(tie_y, tie_x) == pytest.approx(0.875)  # P(X>Y) + P(Y>X) = 1
  # Averaged over the games both have (game c of y is ignored): (0.125 + 1) / 2.
  two_x = {"a": np.array([1.0, 2.0]), "b": np.array([5.0, 6.0])}
  two_y = {"a": np.array([2.0, 3.0]), "b": np.array([1.0, 4.0]), "c": np.array([0.0, 0.0])}
  assert stats.probability_of_improvement(two_x, two_y) == pytest.approx(0.5625)
  # The Mann-Whitney U statistic of scipy, divided by n_x n_y, is the same per game.
  u = scipy.stats.mannwhitneyu([1.0, 2.0], [2.0, 3.0], alternative="greater").statistic
  assert u / 4 == pytest.approx(0.125)
  with pytest.raises(ValueError, match="no game in common"):
    stats.probability_of_improvement({"a": np.ones(2)}, {"b": np.ones(2)})


def test_bootstrap_interval_is_reproducible_and_brackets_the_estimate():
  scores = {"a": np.array([0.1, 0.5, 0.9, 1.3]), "b": np.array([2.0, 2.5, 4.0, 3.0])}
  first = stats.stratified_bootstrap_ci(stats.aggregate_iqm, scores, reps=500, seed=7)
  again = stats.stratified_bootstrap_ci(stats.aggregate_iqm, scores, reps=500, seed=7)
  other_seed = stats.stratified_bootstrap_ci(stats.aggregate_iqm, scores, reps=500, seed=8)
  assert first == again and first != other_seed
  assert first.value == pytest.approx(stats.aggregate_iqm(scores))
  assert first.low <= first.value <= first.high
  # One run per game: every replicate is the data itself, the interval is one point (why callers check has_spread).
  single = {"a": np.array([1.0]), "b": np.array([3.0])}
  assert not stats.has_spread(single) and stats.has_spread(scores)
  degenerate = stats.stratified_bootstrap_ci(stats.aggregate_mean, single, reps=100)
  assert degenerate.low == degenerate.high == degenerate.value == 2.0
  assert stats.Interval(2.0).to_dict() == {"value": 2.0, "ci": None}


def test_probability_of_improvement_interval_resamples_both_variants_independently():
  x = {"a": np.array([1.0, 2.0, 3.0, 4.0])}
  y = {"a": np.array([2.5, 3.5, 4.5, 5.5])}
  interval = stats.stratified_bootstrap_ci(stats.probability_of_improvement, x, y, reps=1000, seed=0)
  # Pairs x > y: 3>2.5, 4>2.5, 4>3.5 -> 3 of 16.
  assert interval.value == pytest.approx(3 / 16)
  assert 0.0 <= interval.low < interval.value < interval.high <= 1.0


def test_bootstrap_interval_of_the_mean_covers_the_true_mean_about_95_percent_of_the_time():
  rng = np.random.default_rng(2021)
  true_mean, experiments, covered = 1.0, 200, 0
  for i in range(experiments):  # (arch's bootstrap is a Python loop: 200 x 1000 replicates take ~20 s)
    # 60 runs from one normal distribution, split over 3 games of 20. (The percentile bootstrap undercovers a
    # little with few runs: about 92.6% for 30 normal runs in 4,000 experiments, so the bounds are not 95% +- noise.)
    sample = rng.normal(true_mean, 2.0, size=60)
    scores = {"a": sample[:20], "b": sample[20:40], "c": sample[40:]}
    interval = stats.stratified_bootstrap_ci(stats.aggregate_mean, scores, reps=1000, seed=i)
    covered += interval.low <= true_mean <= interval.high
  assert 0.90 <= covered / experiments <= 0.99, covered


def test_bootstrap_band_over_runs_with_missing_points():
  curves = np.array([[1.0, 2.0, np.nan], [3.0, 6.0, np.nan], [5.0, np.nan, 7.0]])
  mean, low, high = stats.bootstrap_band(curves, reps=500, seed=0)
  np.testing.assert_allclose(mean, [3.0, 4.0, 7.0])
  assert low[0] < 3.0 < high[0] and 1.0 <= low[0] and high[0] <= 5.0
  assert 2.0 <= low[1] <= high[1] <= 6.0
  assert np.isnan(low[2]) and np.isnan(high[2])  # one run there: no band
