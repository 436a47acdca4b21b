"""Statistics for evaluation and for the reward model: win-rate with a prompt-level bootstrap CI, Spearman,
calibration and pairwise accuracy. Plain numpy, no scipy: every function is small enough to check by hand.

Shapes: N comparisons (or preference pairs), G distinct prompts (groups), n_boot bootstrap replicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ArrayLike = np.ndarray | Sequence[Any]


def _as_1d(name: str, x: ArrayLike, dtype: Any = float) -> np.ndarray:
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if dtype is float and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has NaN or inf at positions {np.flatnonzero(~np.isfinite(arr))[:10].tolist()}")
    return arr


def bootstrap_mean_ci(
    x: ArrayLike,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) CI of the mean of `x` (N,), resampling whole groups when given.

    Cluster bootstrap: with `groups` (N,) (e.g. prompt ids) each replicate draws G groups with replacement
    and keeps all their members, so correlated items of one group move together; the statistic is the pooled
    mean sum(x) / count over the drawn groups, consistent with the plain mean of `x`. Without `groups` every
    item is its own group (the naive bootstrap). Seeded with `numpy.random.default_rng(seed)`: same seed,
    same CI.
    """
    x = _as_1d("x", x)
    if x.size == 0:
        raise ValueError("bootstrap_mean_ci needs at least one value")
    group_index = np.arange(x.size) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    if group_index.shape != x.shape:
        raise ValueError(f"groups must have the same length as x: {group_index.shape} vs {x.shape}")
    sums = np.bincount(group_index, weights=x)  # (G,)
    counts = np.bincount(group_index).astype(float)  # (G,)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    chunk = max(1, 2_000_000 // sums.size)  # bound memory to ~16 MB of indices per chunk
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, sums.size, size=(min(chunk, n_boot - start), sums.size))  # (chunk, G)
        stats[start : start + idx.shape[0]] = sums[idx].sum(1) / counts[idx].sum(1)
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def win_rate(
    cand_scores: ArrayLike,
    base_scores: ArrayLike,
    prompt_ids: ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    tie_tol: float = 0.0,
) -> dict[str, float | int]:
    """Win-rate of a candidate over a baseline from judge scores, with a 95% prompt-level bootstrap CI.

    cand_scores, base_scores, prompt_ids: (N,), one entry per comparison (a prompt may have several samples).
    Each comparison is a win (1) if cand - base > tie_tol, a tie (1/2) if |cand - base| <= tie_tol, else a
    loss (0); win_rate = (wins + ties / 2) / N. The CI resamples PROMPTS, not comparisons: comparisons of one
    prompt share its difficulty, and treating them as independent would make the interval too narrow.
    Returns win_rate, ci_low, ci_high, n, n_prompts, wins, ties, losses.
    """
    cand, base = _as_1d("cand_scores", cand_scores), _as_1d("base_scores", base_scores)
    prompts = np.asarray(prompt_ids)
    if not (cand.shape == base.shape == prompts.shape):
        raise ValueError(
            f"cand_scores, base_scores and prompt_ids need one entry per comparison; "
            f"got shapes {cand.shape}, {base.shape}, {prompts.shape}"
        )
    if cand.size == 0:
        raise ValueError("win_rate needs at least one comparison")
    diff = cand - base
    outcome = np.where(diff > tie_tol, 1.0, np.where(diff < -tie_tol, 0.0, 0.5))  # (N,)
    low, high = bootstrap_mean_ci(outcome, prompts, n_boot=n_boot, seed=seed)
    wins, ties = int((outcome == 1.0).sum()), int((outcome == 0.5).sum())
    return {
        "win_rate": float(outcome.mean()),
        "ci_low": low,
        "ci_high": high,
        "n": int(cand.size),
        "n_prompts": len(np.unique(prompts)),
        "wins": wins,
        "ties": ties,
        "losses": int(cand.size) - wins - ties,
    }


def rankdata(x: ArrayLike) -> np.ndarray:
    """Ranks 1..N of `x` (N,), tied values sharing the average of their ranks (scipy's method='average')."""
    x = _as_1d("x", x)
    order = np.argsort(x, kind="mergesort")  # (N,)
    sorted_x = x[order]
    starts = np.r_[True, sorted_x[1:] != sorted_x[:-1]]  # (N,) True where a run of equal values begins
    run_id = np.cumsum(starts) - 1  # (N,) which run each sorted position belongs to
    bounds = np.r_[np.flatnonzero(starts), x.size]  # (runs + 1,) first position of each run, then N
    avg_rank = (bounds[:-1] + bounds[1:] + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(x.size)
    ranks[order] = avg_rank[run_id]
    return ranks


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman correlation of x, y (N,): Pearson correlation of their average ranks; nan if constant."""
    rx, ry = rankdata(x), rankdata(y)
    if rx.shape != ry.shape or rx.size < 2:
        raise ValueError(f"spearman needs two equal-length arrays of >= 2 values, got {rx.shape} and {ry.shape}")
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((dx**2).sum() * (dy**2).sum())
    return float((dx * dy).sum() / denom) if denom > 0 else float("nan")


def sigmoid(x: ArrayLike) -> np.ndarray:
    """Numerically stable logistic function (tanh form: no overflow for large |x|)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=float)))


def calibration_table(margins: ArrayLike, labels: ArrayLike, n_bins: int = 10) -> list[dict[str, float]]:
    """Reliability table of a Bradley-Terry reward model; margins = r(chosen) - r(rejected), (N,).

    The model's predicted P(chosen wins) is p_pred = sigmoid(margin) (the spec's Step 2, Bradley-Terry);
    labels (N,) are 1 where the chosen side really won, 0 otherwise. Equal-width bins on p_pred in [0, 1];
    empty bins are left out, so the counts sum to N. Each row: bin_low, bin_high, p_pred (mean prediction
    in the bin), p_obs (observed win frequency), count. Well calibrated means p_pred ~ p_obs in every row.
    """
    margins, labels = _as_1d("margins", margins), _as_1d("labels", labels)
    if margins.shape != labels.shape:
        raise ValueError(f"margins and labels need the same length, got {margins.shape} and {labels.shape}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p_pred = sigmoid(margins)
    bin_of = np.minimum((p_pred * n_bins).astype(int), n_bins - 1)  # (N,), p = 1.0 goes to the last bin
    rows = []
    for b in np.unique(bin_of):
        in_bin = bin_of == b
        rows.append(
            {
                "bin_low": b / n_bins,
                "bin_high": (b + 1) / n_bins,
                "p_pred": float(p_pred[in_bin].mean()),
                "p_obs": float(labels[in_bin].mean()),
                "count": int(in_bin.sum()),
            }
        )
    return rows


def pairwise_accuracy(margins: ArrayLike) -> float:
    """Fraction of preference pairs the reward model orders correctly, margins = r(chosen) - r(rejected) (N,).

    A tie (margin exactly 0) counts 1/2, as in `win_rate`: a constant reward model then scores 0.5, not 1.0
    (an argmax that breaks ties towards the first column would credit it with every tie).
    """
    margins = _as_1d("margins", margins)
    if margins.size == 0:
        raise ValueError("pairwise_accuracy needs at least one pair")
    return float(np.mean(np.where(margins > 0, 1.0, np.where(margins < 0, 0.0, 0.5))))
