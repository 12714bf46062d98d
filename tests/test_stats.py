"""reports/stats.py against hand-computed values: IQM, aggregates, probability of improvement, bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from reports import stats


def test_iqm_of_1_to_8_is_the_mean_of_3_to_6():
  assert stats.iqm(np.arange(1, 9)) == pytest.approx(4.5)
  assert stats.iqm(np.array([8, 1, 7, 2, 6, 3, 5, 4])) == pytest.approx(4.5)  # order does not matter


@pytest.mark.parametrize("values, expected", [
    # n = 10: 25% of 10 is 2.5; trim_mean (as rliable) drops floor(2.5) = 2 per side, no fractional weights.
    (np.arange(1, 11), np.mean(np.arange(3, 9))),  # 5.5
    # n = 5: floor(1.25) = 1 per side; the outlier 100 is dropped.
    (np.array([1, 2, 3, 4, 100]), 3.0),
    # n = 3: floor(0.75) = 0: nothing is dropped.
    (np.array([0.0, 3.0, 30.0]), 11.0),
])
def test_iqm_with_a_fractional_quarter_follows_scipy_trim_mean(values, expected):
  assert stats.iqm(values) == pytest.approx(expected)
  assert stats.iqm(values) == pytest.approx(scipy.stats.trim_mean(values, 0.25))


def test_aggregates_of_hand_data():
  scores = {"a": np.array([0.0, 1.0]), "b": np.array([2.0, 4.0]), "c": np.array([10.0, 20.0])}
  # Per-game means 0.5, 3, 15.
  assert stats.aggregate_mean(scores) == pytest.approx((0.5 + 3 + 15) / 3)
  assert stats.aggregate_median(scores) == pytest.approx(3.0)
  # IQM pools the 6 runs: [0, 1, 2, 4, 10, 20], floor(1.5) = 1 dropped per side -> mean(1, 2, 4, 10).
  assert stats.aggregate_iqm(scores) == pytest.approx(4.25)
  # Unequal run counts: the median is over game means, the IQM over all 5 runs ([1, 2, 3, 9, 100] -> mean(2, 3, 9)).
  uneven = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([9.0, 100.0])}
  assert stats.aggregate_mean(uneven) == pytest.approx((2.0 + 54.5) / 2)
  assert stats.aggregate_median(uneven) == pytest.approx((2.0 + 54.5) / 2)
  assert stats.aggregate_iqm(uneven) == pytest.approx(14 / 3)


def test_estimators_accept_leading_batch_dimensions():
  rng = np.random.default_rng(3)
  batch = {"a": rng.normal(size=(7, 4)), "b": rng.normal(size=(7, 3))}
  other = {"a": rng.normal(size=(7, 2)), "b": rng.normal(size=(7, 5))}
  for fn in stats.AGGREGATES.values():
    looped = [float(fn({g: s[i] for g, s in batch.items()})) for i in range(7)]
    np.testing.assert_allclose(fn(batch), looped)
  looped = [float(stats.probability_of_improvement({g: s[i] for g, s in batch.items()}, {g: s[i] for g, s in other.items()}))
            for i in range(7)]
  np.testing.assert_allclose(stats.probability_of_improvement(batch, other), looped)


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
  two_x = {"a": np.array([1.0, 2.0]), "b": np.array([5.0])}
  two_y = {"a": np.array([2.0, 3.0]), "b": np.array([1.0]), "c": np.array([0.0])}
  assert stats.probability_of_improvement(two_x, two_y) == pytest.approx(0.5625)
  # The Mann-Whitney U statistic of scipy, divided by n_x n_y, is the same per game.
  u = scipy.stats.mannwhitneyu([1.0, 2.0], [2.0, 3.0], alternative="greater").statistic
  assert u / 4 == pytest.approx(0.125)
  with pytest.raises(ValueError, match="no game in common"):
    stats.probability_of_improvement({"a": np.ones(2)}, {"b": np.ones(2)})


def test_stratified_resampling_keeps_each_games_run_count_and_its_own_runs():
  scores = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([10.0, 20.0]), "c": np.array([100.0, 200.0, 300.0, 400.0, 500.0])}
  resampled = stats.stratified_resample(scores, np.random.default_rng(0), reps=500)
  for game, values in scores.items():
    assert resampled[game].shape == (500, len(values))
    assert set(np.unique(resampled[game])) <= set(values)  # drawn within the game only
  # With replacement: some replicate repeats a run, and every run of `a` is drawn somewhere.
  assert any(len(set(row)) < 3 for row in resampled["a"])
  assert set(np.unique(resampled["a"])) == {1.0, 2.0, 3.0}


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
  for i in range(experiments):
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
