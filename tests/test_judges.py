"""Judges by import path, and win-rate comparisons of sampled policies."""

import numpy as np
import pytest

from rlhf.evaluation import PolicySamples, compare
from rlhf.judges import check_scores, load_judge


def length_judge(prompts, responses):
    return [float(len(r)) for r in responses]


def test_load_judge_by_import_path():
    judge = load_judge("tests.test_judges:length_judge")
    assert judge(["p"], ["abc"]) == [3.0]
    with pytest.raises(ValueError, match="expected an import path"):
        load_judge("no_colon")
    with pytest.raises(ValueError, match="cannot import module"):
        load_judge("no.such.module:f")
    with pytest.raises(ValueError, match="has no callable 'nope'"):
        load_judge("tests.test_judges:nope")


def test_check_scores_refuses_wrong_count_and_nan():
    assert check_scores("j", [1, 2], 2) == [1.0, 2.0]
    with pytest.raises(ValueError, match="returned 1 scores for 2 pairs"):
        check_scores("j", [1], 2)
    with pytest.raises(ValueError, match="non-finite"):
        check_scores("j", [1, float("nan")], 2)


def _samples(scores, ids):
    n = len(scores)
    return PolicySamples(["p"] * n, ids, ["r"] * n, np.ones(n), np.zeros(n), {"gold": np.asarray(scores, float)})


def test_compare_overall_and_per_family():
    ids = ["a", "a", "b", "b", "c", "c"]
    cand = _samples([2, 2, 1, 1, 0, 0], ids)
    base = _samples([1, 1, 1, 1, 1, 1], ids)
    families = {"a": "caps", "b": "caps", "c": "math"}
    out = compare(cand, base, "gold", families, n_boot=200, seed=0)
    assert out["win_rate"] == pytest.approx((2 + 0.5 * 2) / 6)
    assert out["by_family"]["caps"]["win_rate"] == pytest.approx(0.75)
    assert out["by_family"]["math"]["win_rate"] == 0.0
    assert out["by_family"]["math"]["n"] == 2
