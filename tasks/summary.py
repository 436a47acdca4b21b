"""Stage `summary`: the handful of numbers a person compares across experiments, in metrics/summary.json.

    python -m tasks.summary

Reads the metrics the evaluation stages wrote (metrics/eval.json: PPO against SFT; metrics/eval_dpo.json: DPO
against SFT; metrics/compare_methods.json: PPO against DPO; metrics/reward_model.json) and runs no model. The
file is the one `dvc metrics show` and `dvc exp show` present by default; the stage's MLflow run logs it (numbers
`headline/...` and the file). Every pipeline flow run copies the numbers onto its parent run, whether or not
this stage had to run (flows/pipeline.py), so the runs table shows the verdict without opening a child run.
Win-rates are the gold judge's when the evaluation had one (`judge.gold`), else the reward model's (the stage
run's tag `rlhf.headline_judge`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks import tracking
from tasks.common import Params, entry, path, write_metrics

INPUTS = {
    "ppo": "metrics/eval.json",
    "dpo": "metrics/eval_dpo.json",
    "compare": "metrics/compare_methods.json",
    "rm": "metrics/reward_model.json",
}


def _read(file: str | Path) -> dict[str, Any]:
    """A metrics file, or {} when the stage that writes it has not run (a partial pipeline)."""
    f = path(file)
    return json.loads(f.read_text(encoding="utf-8")) if f.exists() else {}


def _judge(evals: list[dict[str, Any]]) -> str:
    return "gold" if any("gold" in e for e in evals) else "rm"


def _rounded(values: dict[str, float | None], digits: int = 4) -> dict[str, float]:
    return {k: round(v, digits) for k, v in values.items() if v is not None}


def _get(d: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        d = d.get(key) if isinstance(d, dict) else None
    return d


def headline(ppo: dict[str, Any], dpo: dict[str, Any], compare: dict[str, Any], rm: dict[str, Any]) -> dict[str, Any]:
    """The summary from the four metrics dicts (any of them {} when missing); absent numbers are left out, never
    written as 0. Grouped by quantity, one level deep and named apart from the params' sections (which `dvc exp
    show` lists beside them), so that `dvc metrics show` is one line of about 155 columns: `win.<method>` and
    `low.<method>` (win-rate against SFT and the low end of its 95% CI), `win.ppo_dpo` (PPO against DPO),
    `correct.<policy>` (the content judge's share of right answers), `kl.<method>` (nats per response from SFT),
    `rm_acc` (the reward model's held-out pair accuracy)."""
    judge = _judge([ppo, dpo])
    out: dict[str, Any] = {
        "win": _rounded(
            {
                "ppo": _get(ppo, judge, "win_rate"),
                "dpo": _get(dpo, judge, "win_rate"),
                "ppo_dpo": _get(compare, "ppo_vs_dpo", "win_rate"),
            }
        ),
        "low": _rounded({"ppo": _get(ppo, judge, "ci_low"), "dpo": _get(dpo, judge, "ci_low")}),
        "correct": _rounded(
            {
                "ppo": _get(ppo, "content", "candidate", "correct"),
                "dpo": _get(dpo, "content", "candidate", "correct"),
                "sft": _get(ppo, "content", "baseline", "correct"),
            }
        ),
        "kl": _rounded({"ppo": ppo.get("kl"), "dpo": dpo.get("kl")}, 3),
    }
    if "accuracy" in rm:
        out["rm_acc"] = round(rm["accuracy"], 4)
    return {k: v for k, v in out.items() if v != {}}


def numbers(summary: dict[str, Any], prefix: str = "headline/") -> dict[str, float]:
    """The summary's numbers as flat MLflow metric names (`headline/win/ppo`)."""
    flat: dict[str, float] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat |= numbers(value, f"{prefix}{key}/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def run(params: dict[str, Any]) -> dict[str, Any]:
    p = Params(params)
    configure(p)
    with tracking.stage_run("summary", p.logged()) as tracker:
        inputs = [_read(f) for f in INPUTS.values()]
        summary = headline(*inputs)
        out = write_metrics("summary", summary)
        tracker.log_metrics(numbers(summary), step=0)
        tracker.log_artifact(out)
        tracker.set_tags({"rlhf.headline_judge": _judge(inputs[:2])})
    return summary


def configure(p: Params) -> None:
    """Reads no params: the summary depends on the metrics files only."""


main = entry(__doc__, run)


if __name__ == "__main__":
    main()
