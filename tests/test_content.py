"""Content accuracy: the checks on a content judge's answer and the shares it is summarised into."""

from __future__ import annotations

import pytest

from rlhf.content import check_verdicts, content_summary


def row(group: str, correct: bool, on_topic: bool = True) -> dict:
    return {"group": group, "correct": correct, "on_topic": on_topic}


def test_summary_counts_shares_overall_and_per_group_leaving_out_unjudged_pairs() -> None:
    rows = [row("a", True), row("a", False, False), row("b", True), row("b", True), row("b", False), None]
    s = content_summary(rows)
    assert s["n"] == 5 and s["correct"] == pytest.approx(3 / 5) and s["on_topic"] == pytest.approx(4 / 5)
    assert s["by_group"] == {
        "a": {"correct": 0.5, "on_topic": 0.5, "n": 2},
        "b": {"correct": pytest.approx(2 / 3), "on_topic": 1.0, "n": 3},
    }


def test_summary_of_nothing_judged_has_no_shares() -> None:
    assert content_summary([None, None]) == {"correct": None, "on_topic": None, "n": 0, "by_group": {}}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([row("a", True)], "returned 1 verdicts for 2 pairs"),
        ([row("a", True), {"group": "a", "correct": 1, "on_topic": True}], "verdict 1 is"),
        ([row("a", True), "right"], "verdict 1 is 'right'"),
    ],
)
def test_a_malformed_content_judge_answer_is_refused_with_its_index(rows: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_verdicts("m:f", rows, 2)
