"""What a person opening a flow run in the Prefect UI sees on its Artifacts tab: the verdict, not only the logs.

The pipeline flow publishes two artifacts: a markdown page (the headline numbers of metrics/summary.json, the
promotion decision and its reason, the MLflow runs to open) and a table of stage times. The retraining flow adds
the feedback files it accepted and rejected above the same page. The pages are built by pure functions of the
flows' summaries, so they are tested without Prefect.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks import tracking

PIPELINE_KEY, TIMES_KEY, RETRAIN_KEY = "rlhf-pipeline-result", "rlhf-stage-times", "rlhf-retrain-result"
SUMMARY = "metrics/summary.json"


def _num(value: Any, fmt: str = ".3f") -> str:
    return "—" if value is None else format(value, fmt)


def headline_table(summary: dict[str, Any]) -> list[str]:
    """metrics/summary.json as a markdown table, one row per policy."""
    if not summary:
        return [f"No {SUMMARY} yet (the summary stage has not run)."]
    lines = [
        "| policy | win-rate vs SFT | 95% CI low | correct answers | KL from SFT (nats) |",
        "|---|---|---|---|---|",
    ]
    for name in ("ppo", "dpo", "sft"):
        row = {q: summary.get(q, {}).get(name) for q in ("win", "low", "correct", "kl")}
        if any(v is not None for v in row.values()):
            cells = [_num(row["win"]), _num(row["low"]), _num(row["correct"]), _num(row["kl"], ".2f")]
            lines.append(f"| {name.upper()} | " + " | ".join(cells) + " |")
    extra = []
    if "ppo_dpo" in summary.get("win", {}):
        extra.append(f"PPO against DPO: a win-rate of {summary['win']['ppo_dpo']:.3f}.")
    if "rm_acc" in summary:
        extra.append(f"The reward model orders {summary['rm_acc']:.1%} of held-out preference pairs as labelled.")
    return [*lines, "", *extra] if extra else lines


def promotion_lines(pipeline: dict[str, Any]) -> list[str]:
    """The promotion decision and why, or why there was none."""
    decision = pipeline.get("promotion")
    if decision is None:
        why = "registration was skipped" if "registered" not in pipeline else "no new actor was registered"
        return [f"No promotion decision: {why}."]
    verdict = "**promoted** to champion" if decision["promote"] else "**not promoted** (the champion stays)"
    lines = [
        f"rlhf-actor v{decision['version']} ({decision['method'].upper()}) was {verdict}.",
        "",
        f"Why: {decision['reason']}",
    ]
    if decision.get("n"):
        lines.append(
            f"Evidence against {decision['baseline']}: win-rate {_num(decision.get('win_rate'))} "
            f"(95% CI {_num(decision.get('ci_low'))}–{_num(decision.get('ci_high'))}, n = {decision['n']})."
        )
    return lines


def run_links(parent_run_id: str | None, children: dict[str, str], uri: str, experiment_id: str | None) -> list[str]:
    """The pipeline's MLflow run and its stage runs: links to a tracking server's UI, or the ids and the command
    that opens the embedded store."""
    if parent_run_id is None:
        return ["MLflow tracking was off (RLHF_TRACKING): no runs."]
    served = uri.startswith(("http://", "https://"))

    def ref(run_id: str) -> str:
        return f"[{run_id}]({uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id})" if served else f"`{run_id}`"

    lines = [f"- pipeline (parent run, headline metrics `headline/...`): {ref(parent_run_id)}"]
    lines += [f"- {stage}: {ref(run_id)}" for stage, run_id in sorted(children.items())]
    if not served:
        lines += ["", f"Open them with `mlflow ui --backend-store-uri {uri}` (experiment {experiment_id})."]
    return lines


def pipeline_markdown(pipeline: dict[str, Any], summary: dict[str, Any], links: list[str]) -> str:
    ran = [s["stage"] for s in pipeline.get("stages", []) if s["ran"]]
    lines = [
        "# RLHF pipeline run",
        "",
        f"Stages that ran: {', '.join(ran) or 'none (everything was up to date)'}; "
        f"{pipeline.get('seconds', 0.0):.0f} s in all.",
        "",
        "## Headline (metrics/summary.json)",
        "",
        *headline_table(summary),
        "",
        "## Promotion",
        "",
        *promotion_lines(pipeline),
        "",
        "## MLflow runs",
        "",
        *links,
    ]
    return "\n".join(lines) + "\n"


def stage_times(pipeline: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per stage: whether it ran and its seconds, then registration."""
    rows = [
        {"stage": s["stage"], "ran": "ran" if s["ran"] else "up to date", "seconds": round(s["seconds"], 1)}
        for s in pipeline.get("stages", [])
    ]
    if "register_seconds" in pipeline:
        rows.append({"stage": "register + promote", "ran": "ran", "seconds": round(pipeline["register_seconds"], 1)})
    return rows


def retrain_markdown(retrain: dict[str, Any], pipeline_page: str | None) -> str:
    accepted = "".join(f"\n- {f}" for f in retrain["accepted"]) or " none"
    rejected = "".join(f"\n- {f} (its validation report is beside it)" for f in retrain["rejected"]) or " none"
    lines = ["# RLHF retraining run", "", f"Feedback files accepted:{accepted}", "", f"Rejected:{rejected}", ""]
    lines.append(pipeline_page.replace("# RLHF pipeline run", "## Pipeline") if pipeline_page else "No pipeline ran.")
    return "\n".join(lines) + "\n"


def mlflow_children(parent_run_id: str | None) -> tuple[dict[str, str], str | None]:
    """{stage: run id} of the pipeline run's child runs, and its experiment id."""
    if parent_run_id is None:
        return {}, None
    import mlflow

    client = mlflow.MlflowClient(tracking.tracking_uri())
    exp_id = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=200)
    return {r.info.run_name: r.info.run_id for r in runs}, exp_id


def read_summary(root: Path) -> dict[str, Any]:
    """metrics/summary.json of the workspace, {} before the summary stage has run."""
    summary_file = root / SUMMARY
    return json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.exists() else {}


def pipeline_page(pipeline: dict[str, Any], root: Path) -> str:
    summary = read_summary(root)
    parent = pipeline.get("parent_run_id")
    children, exp_id = mlflow_children(parent)
    return pipeline_markdown(pipeline, summary, run_links(parent, children, tracking.tracking_uri(), exp_id))


def publish_pipeline(pipeline: dict[str, Any], root: Path) -> str:
    """The pipeline flow run's two artifacts; returns the markdown (the retraining flow reuses it)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    page = pipeline_page(pipeline, root)
    create_markdown_artifact(page, key=PIPELINE_KEY, description="Headline numbers, promotion, MLflow runs")
    create_table_artifact(stage_times(pipeline), key=TIMES_KEY, description="Seconds per stage of this run")
    return page


def publish_retrain(retrain: dict[str, Any], root: Path) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    pipeline = retrain.get("pipeline")
    page = pipeline_page(pipeline, root) if pipeline else None
    create_markdown_artifact(retrain_markdown(retrain, page), key=RETRAIN_KEY, description="Feedback and verdict")
    if pipeline:
        create_table_artifact(stage_times(pipeline), key=TIMES_KEY, description="Seconds per stage of this run")
