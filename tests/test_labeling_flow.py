"""People's rankings retrain the next champion: prepare -> simulated crowd in the app -> export (the retraining
flow's first task) -> gate -> data/feedback -> pipeline -> a new rlhf-actor whose lineage names the file.

Runs on the toy pipeline of tests/test_flows.py (real DVC, MLflow, Prefect; stages that take a second), from
scratch: the retraining flow's first pipeline run trains and registers the first actor."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tasks.labeling import crowd, db
from tasks.labeling.prepare import PrepareConfig, prepare
from tests.labeling_support import running_app, tiny_checkpoint
from tests.test_flows import harness, toy_repo  # noqa: F401 (fixtures)


@pytest.mark.slow
def test_crowd_rankings_flow_into_a_new_actor(harness: None, toy_repo: Path) -> None:  # noqa: F811
    import mlflow
    from flows.retrain import retrain_flow
    from tasks.registry import ACTOR, CHAMPION

    root = toy_repo
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])

    # Tasks from a model's answers to a user's prompt file (no champion yet: a checkpoint named by path).
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"the cat sat on the mat {i}"}) + "\n" for i in range(6)))
    conn = db.connect(root / db.DEFAULT_DB)
    cfg = PrepareConfig(n=4, k=3, max_new_tokens=6, max_labelers=2)
    made = prepare(conn, root, prompts, cfg, tiny_checkpoint(root / "first"))
    assert made["tasks"] == 4

    with running_app(root / db.DEFAULT_DB) as url:
        ranked = crowd.run(url, crowd.crowd(3, seed=1))
    assert ranked["errors"] == 0 and ranked["rankings"] == 4 * 2  # every task by two of the three

    # The scheduled flow: export -> gate -> data/feedback -> the pipeline -> a registered, promoted actor.
    checker = [sys.executable, "toy_stages.py", "check", "{input}"]
    summary = retrain_flow(root=str(root), validate_cmd=checker, comparator=None)
    labels = Path(summary["labels"]["file"])
    assert summary["labels"]["rows"] == 4 and labels.name.startswith("labels-")
    assert summary["labels"]["metrics"]["overlapping_tasks"] == 4
    [accepted] = summary["accepted"]
    assert accepted.endswith(labels.name) and (root / f"{accepted}.dvc").exists()
    assert json.loads((root / "metrics/labels.json").read_text())["rankings"] == 8

    new = summary["pipeline"]["registered"]["actor"]
    assert summary["pipeline"]["promotion"]["promote"]
    assert str(client.get_model_version_by_alias(ACTOR, CHAMPION).version) == new
    tags = client.get_model_version(ACTOR, new).tags
    assert json.loads(tags["lineage.feedback_files"]) == [Path(accepted).name]

    # The next batch of tasks comes from that champion, downloaded from the registry.
    assert prepare(conn, root, prompts, PrepareConfig(n=1, k=2, max_new_tokens=4)) == {
        "tasks": 1,
        "model_version": f"{ACTOR}/v{new}",
        "prompts_without_two_distinct_answers": 0,
    }
    # A scheduled run with nothing newly ranked exports nothing and trains nothing; the reward model now
    # exists, so the label metrics say how often it agrees with people.
    again = retrain_flow(root=str(root), validate_cmd=checker, comparator=None)
    assert again["labels"]["file"] is None and again["accepted"] == [] and "pipeline" not in again
    assert 0 <= again["labels"]["metrics"]["rm_agreement"] <= 1 and again["labels"]["metrics"]["rm_pairs"] == 4 * 2 * 3
