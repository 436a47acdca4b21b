"""People's rankings retrain the next champion: prepare -> simulated crowd in the app -> export (the retraining
flow's first task) -> gate -> data/feedback -> pipeline -> a new rlhf-actor whose lineage names the file.

Runs on the toy pipeline of tests/test_flows.py (real DVC, MLflow, Prefect; stages that take a second)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tasks.labeling import crowd, db
from tasks.labeling.prepare import PrepareConfig, prepare
from tests.labeling_support import running_app
from tests.test_flows import harness, toy_repo  # noqa: F401 (fixtures)


@pytest.mark.slow
def test_crowd_rankings_flow_into_a_new_actor(harness: None, toy_repo: Path) -> None:  # noqa: F811
    import mlflow
    from flows.pipeline import pipeline_flow
    from flows.retrain import retrain_flow
    from tasks.registry import ACTOR, CHAMPION

    root = toy_repo
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert pipeline_flow(root=str(root), comparator=None)["promotion"]["promote"]  # v1: the champion

    # Tasks from the champion's answers to a user's prompt file.
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"the cat sat on the mat {i}"}) + "\n" for i in range(6)))
    conn = db.connect(root / db.DEFAULT_DB)
    made = prepare(conn, root, prompts, PrepareConfig(n=4, k=3, max_new_tokens=6, max_labelers=2))
    assert made == {"tasks": 4, "model_version": f"{ACTOR}/v1"}

    with running_app(root / db.DEFAULT_DB) as url:
        ranked = crowd.run(url, crowd.crowd(3, seed=1))
    assert ranked["errors"] == 0 and ranked["rankings"] == 4 * 2  # every task by two of the three

    checker = [sys.executable, "toy_stages.py", "check", "{input}"]
    summary = retrain_flow(root=str(root), validate_cmd=checker, comparator="tests.test_flows:better")
    labels = Path(summary["labels"]["file"])
    assert summary["labels"]["rows"] == 4 and labels.name.startswith("labels-")
    assert summary["labels"]["metrics"]["overlapping_tasks"] == 4
    assert 0 <= summary["labels"]["metrics"]["rm_agreement"] <= 1  # the toy reward model was loaded
    [accepted] = summary["accepted"]
    assert accepted.endswith(labels.name) and (root / f"{accepted}.dvc").exists()
    assert json.loads((root / "metrics/labels.json").read_text())["rankings"] == 8

    new = summary["pipeline"]["registered"]["actor"]
    assert new == "2" and summary["pipeline"]["promotion"]["promote"]
    assert str(client.get_model_version_by_alias(ACTOR, CHAMPION).version) == "2"
    tags = client.get_model_version(ACTOR, new).tags
    assert json.loads(tags["lineage.feedback_files"]) == [Path(accepted).name]

    # A second scheduled run with nothing new labeled exports nothing and trains nothing.
    again = retrain_flow(root=str(root), validate_cmd=checker, comparator="tests.test_flows:better")
    assert again["labels"]["file"] is None and again["accepted"] == [] and "pipeline" not in again
