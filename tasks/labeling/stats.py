"""Health of the labels: throughput per labeler, agreement between labelers on shared tasks, and how often the
current reward model orders a pair as people did (the first sign it has drifted from what they want).

For two best-first rankings of the same k items, over the k(k-1)/2 pairs: C pairs ordered alike, D not;
pairwise agreement = C / (C + D) and Kendall's tau = (C - D) / (C + D) (no ties in a ranking).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Any

from rlhf.data import ranking_to_pairs

Judge = Callable[[list[str], list[str]], list[float]]


def concordance(a: Sequence[int], b: Sequence[int]) -> tuple[int, int]:
    """(concordant, discordant) pairs of two best-first rankings of the same items."""
    pos_a = {item: p for p, item in enumerate(a)}
    pos_b = {item: p for p, item in enumerate(b)}
    c = d = 0
    for x, y in combinations(sorted(pos_a), 2):
        if (pos_a[x] - pos_a[y]) * (pos_b[x] - pos_b[y]) > 0:
            c += 1
        else:
            d += 1
    return c, d


def kendall_tau(a: Sequence[int], b: Sequence[int]) -> float:
    c, d = concordance(a, b)
    return (c - d) / (c + d)


def agreement(rankings: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean pairwise agreement and Kendall's tau over every pair of labelers who ranked the same task."""
    by_task: dict[int, list[list[int]]] = defaultdict(list)
    for r in rankings:
        by_task[r["task_id"]].append(r["ranking"])
    taus, agree = [], []
    for rs in by_task.values():
        for a, b in combinations(rs, 2):
            c, d = concordance(a, b)
            taus.append((c - d) / (c + d))
            agree.append(c / (c + d))
    n = len(taus)
    return {
        "overlapping_tasks": sum(len(rs) > 1 for rs in by_task.values()),
        "labeler_pairs": n,
        "pairwise_agreement": statistics.fmean(agree) if n else None,
        "kendall_tau": statistics.fmean(taus) if n else None,
    }


def per_labeler(judgements: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rankings, skips, flags and median seconds per task (served -> submitted) of each labeler."""
    out: dict[str, dict[str, Any]] = {}
    seconds: dict[str, list[float]] = defaultdict(list)
    for j in judgements:
        row = out.setdefault(j["labeler"], {"rankings": 0, "skips": 0, "flags": 0})
        row[{"rank": "rankings", "skip": "skips", "flag": "flags"}[j["kind"]]] += 1
        seconds[j["labeler"]].append(j["submitted_at"] - j["served_at"])
    for name, row in out.items():
        row["median_seconds"] = statistics.median(seconds[name])
    return dict(sorted(out.items()))


def reward_model_agreement(rankings: list[dict[str, Any]], judge: Judge, cache: dict | None = None) -> dict:
    """How often judge(better) > judge(worse) over every pair people ranked. `cache` (task id -> scores)
    lets a long-running app score each task once."""
    cache = {} if cache is None else cache
    todo = {r["task_id"]: r for r in rankings if r["task_id"] not in cache}
    prompts = [r["prompt"] for r in todo.values() for _ in r["responses"]]
    scores = judge(prompts, [text for r in todo.values() for text in r["responses"]]) if prompts else []
    i = 0
    for task_id, r in todo.items():
        cache[task_id] = scores[i : i + len(r["responses"])]
        i += len(r["responses"])
    hits = total = 0
    for r in rankings:
        s = cache[r["task_id"]]
        for better, worse in ranking_to_pairs(r["responses"], r["ranking"]):
            hits += s[better] > s[worse]
            total += 1
    return {"pairs": total, "agreement": hits / total if total else None}


def compute(judgements: list[dict[str, Any]], judge: Judge | None = None, cache: dict | None = None) -> dict:
    """The /stats page's and metrics/labels.json's numbers from all judgements (db.judgements)."""
    rankings = [j for j in judgements if j["kind"] == "rank"]
    spent = [j["submitted_at"] - j["served_at"] for j in judgements]
    return {
        "rankings": len(rankings),
        "skips": sum(j["kind"] == "skip" for j in judgements),
        "flags": sum(j["kind"] == "flag" for j in judgements),
        "labelers": per_labeler(judgements),
        "median_seconds_per_task": statistics.median(spent) if spent else None,
        "agreement": agreement(rankings),
        "reward_model": reward_model_agreement(rankings, judge, cache) if judge is not None else None,
    }


def flat_metrics(stats: dict[str, Any]) -> dict[str, Any]:
    """metrics/labels.json: the headline numbers flat (DVC metrics), per-labeler counts nested."""
    rm = stats["reward_model"] or {}
    flat = {
        "rankings": stats["rankings"],
        "skips": stats["skips"],
        "flags": stats["flags"],
        "labelers": len(stats["labelers"]),
        "median_seconds_per_task": stats["median_seconds_per_task"],
        "pairwise_agreement": stats["agreement"]["pairwise_agreement"],
        "kendall_tau": stats["agreement"]["kendall_tau"],
        "overlapping_tasks": stats["agreement"]["overlapping_tasks"],
        "rm_agreement": rm.get("agreement"),
        "rm_pairs": rm.get("pairs"),
        "per_labeler": stats["labelers"],
    }
    return {k: v for k, v in flat.items() if v is not None}  # JSON has no NaN; a metric that does not apply is left out
