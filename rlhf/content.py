"""Content accuracy: how many answers are right and how many answer the question asked, per prompt group.

A win-rate says which policy a judge prefers, not why; a policy that wraps an answer to another question in
politeness can win on manners alone. So evaluation also asks a *content judge*, a callable
`(prompts, responses) -> list[dict | None]` named by import path (`judge.content` in params.yaml, like
`judge.gold`), for one verdict per pair: `{"group": str, "correct": bool, "on_topic": bool}`, or None where it
cannot tell (a prompt it does not know). The world's is `rlhf.world.judge:content_batch`; with real users'
prompts it could be exact-match against references, or a rubric model. This module only checks and counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ContentJudge = Callable[[list[str], list[str]], list[dict[str, Any] | None]]


def check_verdicts(spec: str, rows: list[Any], n: int) -> list[dict[str, Any] | None]:
    """A content judge's answer must be one verdict (or None) per pair, each with the three fields."""
    rows = list(rows)
    if len(rows) != n:
        raise ValueError(f"content judge '{spec}' returned {len(rows)} verdicts for {n} pairs")
    for i, row in enumerate(rows):
        if row is None:
            continue
        ok = (
            isinstance(row, dict)
            and isinstance(row.get("group"), str)
            and isinstance(row.get("correct"), bool)
            and isinstance(row.get("on_topic"), bool)
        )
        if not ok:
            raise ValueError(
                f"content judge '{spec}': verdict {i} is {row!r}; expected None or "
                '{"group": str, "correct": bool, "on_topic": bool}'
            )
    return rows


def _shares(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    return {
        "correct": sum(r["correct"] for r in rows) / n,
        "on_topic": sum(r["on_topic"] for r in rows) / n,
        "n": n,
    }


def content_summary(rows: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Shares of correct and on-topic answers over the judged pairs, overall and per group (sorted).

    `{"correct", "on_topic", "n", "by_group": {group: {"correct", "on_topic", "n"}}}`; pairs judged None are
    left out of every share; with none judged, the shares are None and n is 0.
    """
    judged = [r for r in rows if r is not None]
    if not judged:
        return {"correct": None, "on_topic": None, "n": 0, "by_group": {}}
    groups = sorted({r["group"] for r in judged})
    return {
        **_shares(judged),
        "by_group": {g: _shares([r for r in judged if r["group"] == g]) for g in groups},
    }
