"""Plots people look at (PNG, rendered offline) and the CSV files DVC plots read."""

from __future__ import annotations

import csv
from pathlib import Path

from rlhf.io import atomic_path


def write_csv(out: Path, rows: list[dict]) -> None:
    """Rows of dicts -> CSV with the union of keys as header (DVC plot data)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_calibration(table: list[dict], out: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot([r["p_pred"] for r in table], [r["p_obs"] for r in table], "o-", label="reward model")
    ax.set_xlabel("predicted P(first response preferred)")
    ax.set_ylabel("observed frequency")
    ax.set_title("Reward model calibration (held-out pairs)")
    ax.legend()
    _save(fig, out)
    plt.close(fig)


def plot_curves(history: list[dict], keys: list[tuple[str, str]], out: Path, title: str) -> None:
    """One panel per (metric key, label) against the iteration, in a grid of at most three columns (a single
    row of six panels is too wide to read at normal size)."""
    plt = _pyplot()
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    for ax, (key, label) in zip(axes.flat, keys, strict=False):
        pts = [(h["iteration"], h[key]) for h in history if key in h]
        ax.plot([p[0] for p in pts], [p[1] for p in pts])
        ax.set_xlabel("PPO iteration")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)


def plot_overoptimization(rows: list[dict], out: Path) -> None:
    """Gold and reward-model scores against sqrt(KL) from the reference (Gao et al. 2022), joined in order of KL:
    a snapshot's KL need not grow with its iteration, and a line drawn in iteration order then doubles back."""
    plt = _pyplot()
    rows = sorted(rows, key=lambda r: r["sqrt_kl"])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    x = [r["sqrt_kl"] for r in rows]
    ax.plot(x, [r["rm_score"] for r in rows], "o-", label="reward model (proxy)")
    ax.plot(x, [r["gold_score"] for r in rows], "s-", label="gold judge")
    ax.set_xlabel("sqrt(KL(actor || reference)) per response")
    ax.set_ylabel("mean score (each relative to SFT)")
    ax.set_title("Over-optimisation: proxy vs gold along PPO")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, out)
    plt.close(fig)


def plot_methods(result: dict, out: Path) -> None:
    """Win-rates against SFT of PPO and DPO under each judge, with their 95% CIs (tasks/compare_methods.py)."""
    plt = _pyplot()
    judges = [j for j in ("gold", "rm") if j in result["ppo"]]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    width = 0.38
    for k, method in enumerate(("ppo", "dpo")):
        rs = [result[method][j] for j in judges]
        x = [i + (k - 0.5) * width for i in range(len(judges))]
        err = [[r["win_rate"] - r["ci_low"] for r in rs], [r["ci_high"] - r["win_rate"] for r in rs]]
        ax.bar(x, [r["win_rate"] for r in rs], width, yerr=err, capsize=4, label=method.upper())
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(judges)), [f"{j} judge" for j in judges])
    ax.set_ylim(0, 1)
    ax.set_ylabel("win-rate against SFT (95% CI)")
    ax.set_title("PPO and DPO against SFT on held-out prompts")
    ax.legend()
    _save(fig, out)
    plt.close(fig)
