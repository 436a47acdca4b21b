"""Evaluation statistics: win-rate with a prompt-level bootstrap, Spearman, calibration, pairwise accuracy."""

import math

import numpy as np
import pytest
import scipy.stats

from rlhf.stats import (
    bootstrap_mean_ci,
    calibration_table,
    pairwise_accuracy,
    rankdata,
    spearman,
    win_rate,
)


def prompts(n_prompts: int, per_prompt: int) -> np.ndarray:
    return np.repeat([f"p{i}" for i in range(n_prompts)], per_prompt)  # (N,) string ids, grouped


def test_always_wins():
    ids = prompts(50, 2)
    result = win_rate(np.ones(100), np.zeros(100), ids, n_boot=200)
    assert result["win_rate"] == 1.0 and (result["ci_low"], result["ci_high"]) == (1.0, 1.0)
    assert (result["n"], result["n_prompts"], result["wins"], result["ties"], result["losses"]) == (
        100,
        50,
        100,
        0,
        0,
    )


def test_all_ties_and_tie_tolerance():
    ids = prompts(20, 3)
    result = win_rate(np.full(60, 0.3), np.full(60, 0.3), ids, n_boot=200)
    assert result["win_rate"] == 0.5 and (result["ci_low"], result["ci_high"]) == (0.5, 0.5)
    assert result["ties"] == 60
    near = win_rate(np.full(60, 0.35), np.full(60, 0.3), ids, n_boot=200, tie_tol=0.1)
    assert near["ties"] == 60 and near["win_rate"] == 0.5
    strict = win_rate(np.full(60, 0.35), np.full(60, 0.3), ids, n_boot=200, tie_tol=0.0)
    assert strict["wins"] == 60


def test_counts_and_point_estimate():
    cand = np.array([1.0, 0.0, 0.5, 2.0, -1.0])
    base = np.array([0.0, 1.0, 0.5, 1.0, 0.0])
    result = win_rate(cand, base, ["a", "a", "b", "c", "c"], n_boot=100)
    assert (result["wins"], result["ties"], result["losses"]) == (2, 1, 2)
    assert result["win_rate"] == pytest.approx((2 + 0.5) / 5)
    assert result["ci_low"] <= result["win_rate"] <= result["ci_high"]


def test_coin_flip_judge_ci_covers_half():
    rng = np.random.default_rng(123)
    n = 400 * 2
    result = win_rate(rng.normal(size=n), rng.normal(size=n), prompts(400, 2), n_boot=1000, seed=0)
    assert result["ci_low"] < 0.5 < result["ci_high"]
    assert result["ci_high"] - result["ci_low"] < 0.15  # and it is informative, not [0, 1]


def test_seed_reproducibility():
    rng = np.random.default_rng(7)
    cand, base, ids = rng.normal(size=300), rng.normal(size=300), prompts(100, 3)
    a = win_rate(cand, base, ids, n_boot=500, seed=1)
    b = win_rate(cand, base, ids, n_boot=500, seed=1)
    c = win_rate(cand, base, ids, n_boot=500, seed=2)
    assert a == b
    assert (a["ci_low"], a["ci_high"]) != (c["ci_low"], c["ci_high"])
    assert a["win_rate"] == c["win_rate"]


def test_cluster_bootstrap_is_wider_when_comparisons_are_correlated():
    # Each prompt decides all four of its comparisons at once: effectively 100 observations, not 400.
    rng = np.random.default_rng(0)
    per_prompt = rng.integers(0, 2, size=100).astype(float)
    outcomes = np.repeat(per_prompt, 4)
    ids = prompts(100, 4)
    low_c, high_c = bootstrap_mean_ci(outcomes, ids, n_boot=2000, seed=0)
    low_n, high_n = bootstrap_mean_ci(outcomes, None, n_boot=2000, seed=0)
    assert (high_c - low_c) > 1.6 * (high_n - low_n)  # expected ratio sqrt(4) = 2
    result = win_rate(outcomes, np.full(400, 0.5), ids, n_boot=2000, seed=0)
    assert (result["ci_low"], result["ci_high"]) == (low_c, high_c)  # win_rate uses the cluster bootstrap


def test_bootstrap_handles_many_replicates_in_chunks():
    x = np.random.default_rng(1).normal(size=5000)
    low, high = bootstrap_mean_ci(x, n_boot=1000, seed=0)  # 1000 x 5000 > one chunk
    assert low < x.mean() < high
    assert high - low == pytest.approx(2 * 1.96 / math.sqrt(5000), rel=0.15)


def test_win_rate_rejects_bad_input():
    with pytest.raises(ValueError, match="one entry per comparison"):
        win_rate([1.0, 2.0], [0.0], ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        win_rate([1.0, float("nan")], [0.0, 0.0], ["a", "b"])


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, size=60).astype(float)  # many ties
    y = x + rng.integers(-3, 4, size=60)
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    np.testing.assert_allclose(rankdata(x), scipy.stats.rankdata(x, method="average"))


def test_spearman_edge_cases():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_calibration_table():
    rng = np.random.default_rng(0)
    margins = rng.normal(scale=2.0, size=20_000)
    labels = (rng.random(20_000) < 1 / (1 + np.exp(-margins))).astype(float)  # a calibrated model by design
    table = calibration_table(margins, labels, n_bins=10)
    assert sum(row["count"] for row in table) == 20_000
    for row in table:
        assert row["bin_low"] <= row["p_pred"] <= row["bin_high"]
        if row["count"] > 500:
            assert abs(row["p_pred"] - row["p_obs"]) < 0.05
    overconfident = calibration_table(5 * margins, labels, n_bins=10)  # margins 5x too large
    assert overconfident[-1]["p_pred"] - overconfident[-1]["p_obs"] > 0.05
    assert sum(row["count"] for row in calibration_table([0.0, 50.0, -50.0], [1, 1, 0], n_bins=4)) == 3


def test_pairwise_accuracy():
    assert pairwise_accuracy([1.0, -1.0, 0.0, 2.0]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert pairwise_accuracy(np.zeros(10)) == 0.5  # a constant reward model is at chance
