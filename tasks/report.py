"""The evaluation report: one Markdown page with the numbers, the plots and answers side by side."""

from __future__ import annotations

import os
from pathlib import Path

from rlhf.io import write_text
from tasks.common import path

PLOTS = [
    ("PPO training curves (reward, KL, gold monitor, length, entropy, clipping)", "plots/ppo_curves.png"),
    ("Over-optimisation: proxy and gold score against sqrt(KL)", "plots/overoptimization.png"),
    ("Reward model calibration", "plots/rm_calibration.png"),
]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:160]


def _win_table(results: dict) -> list[str]:
    lines = ["| judge | win-rate | 95% CI | n | wins / ties / losses |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['win_rate']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['n']} "
            f"| {r['wins']} / {r['ties']} / {r['losses']} |"
        )
    return lines


def _family_table(results: dict) -> list[str]:
    judge = "gold" if "gold" in results else next(iter(results))
    fams = results[judge].get("by_family")
    if not fams:
        return []
    lines = [
        f"### Per prompt family ({judge} judge)",
        "",
        "| family | win-rate | 95% CI | n |",
        "|---|---|---|---|",
    ]
    for fam, r in fams.items():
        lines.append(f"| {fam} | {r['win_rate']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['n']} |")
    return [*lines, ""]


def _eval_kl(metrics: dict) -> str:
    kl = metrics.get("kl_eval_temperature")
    return "" if kl is None else f"; {kl:.2f} between the two policies at the evaluation temperature"


def _share(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _content_table(content: dict | None) -> list[str]:
    """Right and on-topic answers per prompt group, first: a win-rate says which policy a judge prefers, this says
    whether its answers are right (a polite answer to another question wins on manners alone)."""
    if not content:
        return []
    cand, base = content["candidate"], content["baseline"]
    groups = sorted(set(cand["by_group"]) | set(base["by_group"]))
    lines = [
        "## Content: right answers, and answers to the question asked",
        "",
        "| group | candidate right | baseline right | candidate on topic | baseline on topic | n |",
        "|---|---|---|---|---|---|",
        f"| **all** | **{_share(cand['correct'])}** | **{_share(base['correct'])}** | {_share(cand['on_topic'])} "
        f"| {_share(base['on_topic'])} | {cand['n']} |",
    ]
    for g in groups:
        c, b = cand["by_group"].get(g, {}), base["by_group"].get(g, {})
        lines.append(
            f"| {g} | {_share(c.get('correct'))} | {_share(b.get('correct'))} | {_share(c.get('on_topic'))} "
            f"| {_share(b.get('on_topic'))} | {c.get('n', 0)} |"
        )
    return [*lines, "", "## Win-rates", ""]


def write_report(
    out: Path,
    metrics: dict,
    results: dict,
    side_by_side: list[dict],
    curve: list[dict],
    cand: Path,
    base: Path,
) -> None:
    rel = lambda p: os.path.relpath(path(p), out.parent)  # noqa: E731
    lines = [
        "# Evaluation report",
        "",
        f"Candidate `{os.path.relpath(cand, path('.'))}` against baseline `{os.path.relpath(base, path('.'))}` "
        "on held-out evaluation prompts, same decoding for both. Win = 1, tie = ½; the 95% CI is a bootstrap "
        "over prompts.",
        "",
        *_content_table(metrics.get("content")),
        *_win_table(results),
        "",
        f"KL of the candidate from the reference: **{metrics['kl']:.2f} nats per response** at temperature 1 "
        f"(the KL PPO's penalty controls){_eval_kl(metrics)}. "
        f"Mean response length (tokens): candidate {metrics['length']['candidate']:.1f}, "
        f"baseline {metrics['length']['baseline']:.1f}.",
        "",
        *_family_table(results),
    ]
    if curve:
        lines += [
            "### Over-optimisation curve",
            "",
            "| iteration | KL | sqrt KL | Δ RM score | Δ gold score |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['iteration']} | {r['kl']:.2f} | {r['sqrt_kl']:.2f} | {r['rm_score']:+.3f} "
            f"| {r.get('gold_score', float('nan')):+.3f} |"
            for r in curve
        ]
        lines.append("")
    lines += ["## Plots", ""]
    lines += [f"![{title}]({rel(p)})" for title, p in PLOTS if path(p).exists()]
    lines += ["", "## Answers side by side", ""]
    judge = "gold" if "gold" in results else "rm"
    lines += [f"| prompt | candidate | {judge} | baseline | {judge} |", "|---|---|---|---|---|"]
    for row in side_by_side[:: max(1, len(side_by_side) // 12)][:12]:
        lines.append(
            f"| {_cell(row['prompt'])} | {_cell(row['candidate'])} | {row[f'{judge}_candidate']:.2f} "
            f"| {_cell(row['baseline'])} | {row[f'{judge}_baseline']:.2f} |"
        )
    write_text(out, "\n".join(lines) + "\n")
