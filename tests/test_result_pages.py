"""flows/results.py: the pages the Prefect flow runs publish, from the flows' summaries (no Prefect needed)."""

from __future__ import annotations

from flows.results import headline_table, pipeline_markdown, promotion_lines, retrain_markdown, run_links, stage_times

SUMMARY = {
    "win": {"ppo": 0.8488, "dpo": 0.695, "ppo_dpo": 0.7525},
    "low": {"ppo": 0.8125, "dpo": 0.6537},
    "correct": {"ppo": 0.25, "sft": 0.125},
    "kl": {"ppo": 5.06, "dpo": 3.571},
    "rm_acc": 0.6898,
}
DECISION = {
    "version": "4",
    "method": "ppo",
    "promote": False,
    "baseline": "champion:v1",
    "reason": "the CI's low end 0.45 is below 0.5",
    "win_rate": 0.52,
    "ci_low": 0.45,
    "ci_high": 0.6,
    "n": 64,
}
STAGES = [{"stage": "ppo", "ran": True, "seconds": 12.34}, {"stage": "world", "ran": False, "seconds": 0.5}]


def test_the_headline_table_has_a_row_per_policy_and_dashes_for_what_was_not_measured() -> None:
    table = headline_table(SUMMARY)
    assert table[2:5] == [
        "| PPO | 0.849 | 0.812 | 0.250 | 5.06 |",
        "| DPO | 0.695 | 0.654 | — | 3.57 |",
        "| SFT | — | — | 0.125 | — |",
    ]
    assert "PPO against DPO: a win-rate of 0.752." in table and any("69.0%" in line for line in table)
    assert headline_table({}) == ["No metrics/summary.json yet (the summary stage has not run)."]


def test_the_promotion_says_what_happened_and_why() -> None:
    lines = promotion_lines({"promotion": DECISION, "registered": {}})
    assert lines[0] == "rlhf-actor v4 (PPO) was **not promoted** (the champion stays)."
    assert "Why: the CI's low end 0.45 is below 0.5" in lines
    assert lines[-1] == "Evidence against champion:v1: win-rate 0.520 (95% CI 0.450–0.600, n = 64)."
    assert promotion_lines({}) == ["No promotion decision: registration was skipped."]
    assert promotion_lines({"registered": {}}) == ["No promotion decision: no new actor was registered."]


def test_runs_link_to_a_server_or_name_the_embedded_store() -> None:
    served = run_links("p1", {"ppo": "c1"}, "http://mlflow:5000/", "7")
    assert served == [
        "- pipeline (parent run, headline metrics `headline/...`): [p1](http://mlflow:5000/#/experiments/7/runs/p1)",
        "- ppo: [c1](http://mlflow:5000/#/experiments/7/runs/c1)",
    ]
    local = run_links("p1", {}, "sqlite:////repo/mlflow/mlflow.db", "1")
    assert "`p1`" in local[0] and local[-1].startswith("Open them with `mlflow ui --backend-store-uri sqlite:///")
    assert run_links(None, {}, "sqlite:///x", None) == ["MLflow tracking was off (RLHF_TRACKING): no runs."]


def test_stage_times_and_the_pages() -> None:
    pipeline = {"stages": STAGES, "register_seconds": 3.21, "seconds": 20.0, "promotion": DECISION}
    assert stage_times(pipeline) == [
        {"stage": "ppo", "ran": "ran", "seconds": 12.3},
        {"stage": "world", "ran": "up to date", "seconds": 0.5},
        {"stage": "register + promote", "ran": "ran", "seconds": 3.2},
    ]
    page = pipeline_markdown(pipeline, SUMMARY, ["- links"])
    assert page.startswith("# RLHF pipeline run\n") and "Stages that ran: ppo; 20 s in all." in page
    retrain = retrain_markdown({"accepted": ["data/feedback/a.jsonl"], "rejected": []}, page)
    assert "- data/feedback/a.jsonl" in retrain and "Rejected: none" in retrain and "## Pipeline" in retrain
    assert retrain_markdown({"accepted": [], "rejected": ["x.jsonl"]}, None).endswith("No pipeline ran.\n")
