"""tasks.tracking against a real (temporary) MLflow SQLite store: nesting, params, metrics, off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks import mlflow_store, tracking


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite store for the module: creating its schema costs ~2 s."""
    return tmp_path_factory.mktemp("mlflow") / "mlflow.db"


@pytest.fixture
def env(store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    monkeypatch.delenv(tracking.SWITCH_ENV, raising=False)
    return store


def test_flatten_nested_sections() -> None:
    flat = tracking.flatten({"ppo": {"lr": 1e-5, "kl": {"target": 6}}, "seed": 0, "layers": [1, 2]})
    assert flat == {"ppo.lr": "1e-05", "ppo.kl.target": "6", "seed": "0", "layers": "[1, 2]"}


def test_default_store_lives_in_the_project(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RLHF_ROOT", raising=False)
    uri = tracking.tracking_uri()
    assert uri == f"sqlite:///{tracking.ROOT / 'mlflow' / 'mlflow.db'}"
    assert tracking.artifact_location(uri) == (tracking.ROOT / "mlflow" / "artifacts").as_uri()
    monkeypatch.setenv("RLHF_ROOT", "/elsewhere")  # a working root elsewhere keeps its own store
    assert tracking.tracking_uri() == "sqlite:////elsewhere/mlflow/mlflow.db"
    assert tracking.artifact_location("http://mlflow.example:5000") is None  # a server decides


def test_tracking_off_is_a_noop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'never.db'}")
    monkeypatch.setenv(tracking.SWITCH_ENV, "off")
    with tracking.stage_run("sft", {"sft": {"lr": 1}}) as tr:
        assert not tr.active
        tr.log_metrics({"sft/loss": 1.0}, step=0)
        tr.log_artifact(tmp_path)
        tr.log_dict({"a": 1}, "a.json")
        tr.set_tags({"a": "b"})
    with tracking.pipeline_run("pipeline") as parent:
        assert tracking.child_env(parent.run_id, {}) == {}
    assert not (tmp_path / "never.db").exists()


@pytest.mark.slow
def test_stage_runs_nest_under_the_pipeline_run(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    report = tmp_path / "report.json"
    report.write_text(json.dumps({"ok": True}))
    with tracking.pipeline_run("pipeline", {"run": {"stages": 2}}) as parent:
        # What the flow hands to a stage process; applied here in-process.
        for key, value in tracking.child_env(parent.run_id, {}).items():
            monkeypatch.setenv(key, value)
        with tracking.stage_run("ppo", {"ppo": {"lr": 1e-5, "kl": {"target": 6}}}) as child:
            for step in range(3):
                child.log_metrics({"ppo/loss": 1.0 / (step + 1), "objective/kl": 0.1 * step}, step)
            child.log_artifact(report, "eval")
            child.log_dict({"win_rate": 0.6}, "eval/metrics.json")
    monkeypatch.delenv(tracking.PARENT_ENV)
    with tracking.stage_run("world", {"world": {"seed": 1}}) as alone:
        pass

    client = mlflow.MlflowClient()
    p, c, a = (client.get_run(r.run_id) for r in (parent, child, alone))
    assert c.data.tags["mlflow.parentRunId"] == p.info.run_id
    assert "mlflow.parentRunId" not in a.data.tags  # a stage run alone is a top-level run
    assert c.data.tags["rlhf.stage"] == "ppo" and "rlhf.git_commit" in c.data.tags
    assert c.data.params == {"ppo.lr": "1e-05", "ppo.kl.target": "6"}
    assert p.data.params == {"run.stages": "2"}
    history = client.get_metric_history(c.info.run_id, "ppo/loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
    assert {p.info.status, c.info.status, a.info.status} == {"FINISHED"}
    assert {f.path for f in client.list_artifacts(c.info.run_id, "eval")} == {
        "eval/report.json",
        "eval/metrics.json",
    }
    # Artifacts land beside the SQLite database, not in ./mlruns of the working directory.
    assert c.info.artifact_uri.startswith((env.parent / "artifacts").as_uri())


@pytest.mark.slow
def test_a_failing_stage_ends_its_run_failed(env: Path) -> None:
    import mlflow

    with pytest.raises(RuntimeError, match="diverged"), tracking.stage_run("sft", {}) as tr:
        raise RuntimeError("diverged")
    assert mlflow.MlflowClient().get_run(tr.run_id).info.status == "FAILED"


@pytest.mark.slow
def test_a_stale_parent_run_id_is_an_actionable_error(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tracking.PARENT_ENV, "0" * 32)
    with pytest.raises(RuntimeError, match="unset it"), tracking.stage_run("sft", {}):
        pass


KILLED_STAGE = """
import sys, time
from pathlib import Path
from tasks import mlflow_store, tracking

with tracking.stage_run("ppo", {"ppo": {"lr": 1e-5}}, state_dir=Path(sys.argv[1])) as tr:
    tr.log_metrics({"objective/kl": 1.0}, 1)
    print(tr.run_id, flush=True)
    time.sleep(600)  # killed here
"""


def start_and_kill_9(state: Path) -> str:
    """A stage process that opens its run, logs step 1 and is killed -9; returns its run id."""
    import os
    import signal
    import subprocess
    import sys

    from tasks.common import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_STAGE, str(state)], env=env, stdout=subprocess.PIPE, text=True
    )
    run_id = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return run_id


@pytest.mark.slow
def test_after_a_kill_no_run_stays_running_and_the_resumed_stage_continues_its_run(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    state = tmp_path / "state" / "ppo"
    killed_run = start_and_kill_9(state)
    client = mlflow.MlflowClient()
    assert client.get_run(killed_run).info.status == "RUNNING"  # what kill -9 leaves behind
    # The next run of the stage (same params, its training state still there) continues the killed run, under
    # the pipeline run that finishes it.
    with tracking.pipeline_run("pipeline 2") as parent:
        monkeypatch.setenv(tracking.PARENT_ENV, parent.run_id)
        with tracking.stage_run("ppo", {"ppo": {"lr": 1e-5}}, state_dir=state) as tr:
            assert tr.run_id == killed_run
            tr.log_metrics({"objective/kl": 2.0}, 2)
        monkeypatch.delenv(tracking.PARENT_ENV)
    assert [m.step for m in client.get_metric_history(killed_run, "objective/kl")] == [1, 2]
    assert client.get_run(killed_run).data.tags["mlflow.parentRunId"] == parent.run_id
    running = mlflow.search_runs(search_all_experiments=True, filter_string="attributes.status = 'RUNNING'")
    assert len(running) == 0
    # Killed again, then restarted with other params: the orphan is ended KILLED and a new run starts.
    second = start_and_kill_9(state)
    with tracking.stage_run("ppo", {"ppo": {"lr": 2e-5}}, state_dir=state) as tr:
        assert tr.run_id != second
    assert client.get_run(second).info.status == "KILLED"
    running = mlflow.search_runs(search_all_experiments=True, filter_string="attributes.status = 'RUNNING'")
    assert len(running) == 0


def _summary_stage(root: Path) -> None:
    """The summary stage (model-free, one artifact) as DVC runs it, in the checkout `root` with its own store."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RLHF_"))}
    env |= {"RLHF_ROOT": str(root), "RLHF_PARAMS": str(root / "params.yaml"), "PYTHONPATH": str(tracking.ROOT)}
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    proc = subprocess.run([sys.executable, "-m", "tasks.summary"], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _files(folder: Path) -> set[str]:
    return {str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file()}


@pytest.mark.slow
def test_a_copied_checkout_writes_its_artifacts_into_itself(tmp_path: Path) -> None:
    """The store's artifact URIs are absolute; a copy of the checkout (mlflow/ included) must not log into, nor
    read from, the folder it was copied from."""
    import shutil

    import mlflow

    first = tmp_path / "first"
    (first / "metrics").mkdir(parents=True)
    (first / "params.yaml").write_text("{}\n")
    gold = {"win_rate": 0.7, "ci_low": 0.6, "ci_high": 0.8, "n": 10}
    (first / "metrics" / "eval.json").write_text(json.dumps({"gold": gold, "kl": 2.0}))
    _summary_stage(first)
    before = _files(first / "mlflow" / "artifacts")
    assert [Path(f).name for f in before] == ["summary.json"]

    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    _summary_stage(copy)

    assert _files(first / "mlflow" / "artifacts") == before  # the original is untouched
    client = mlflow.MlflowClient(f"sqlite:///{copy / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("rlhf").experiment_id], order_by=["start_time ASC"])
    assert len(runs) == 2
    here = (copy / "mlflow" / "artifacts").as_uri()
    assert client.get_experiment_by_name("rlhf").artifact_location == here
    for run in runs:  # the new run writes in the copy, and the copied run reads from the copy
        assert run.info.artifact_uri.startswith(here + "/")
        [listed] = client.list_artifacts(run.info.run_id)
        local = Path(client.download_artifacts(run.info.run_id, listed.path, str(tmp_path / run.info.run_id)))
        assert json.loads(local.read_text())["win"] == {"ppo": 0.7}
    assert len(_files(copy / "mlflow" / "artifacts")) == 2


def test_repointing_rewrites_only_the_foreign_artifact_root(tmp_path: Path) -> None:
    """URIs and plain paths under the old `…/artifacts` root move; another experiment's custom location and
    paths merely sharing a prefix stay."""
    import sqlite3

    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    old = "file:///old/checkout/mlflow/artifacts"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE experiments (experiment_id INTEGER, artifact_location TEXT)")
    con.execute("CREATE TABLE runs (run_uuid TEXT, artifact_uri TEXT)")
    con.execute("CREATE TABLE model_versions (version INTEGER, source TEXT, storage_location TEXT)")
    con.executemany("INSERT INTO experiments VALUES (?, ?)", [(0, "file:///somewhere/mlruns"), (1, old)])
    con.executemany("INSERT INTO runs VALUES (?, ?)", [("a", f"{old}/1/a/artifacts"), ("b", f"{old}x/1/b")])
    con.execute("INSERT INTO model_versions VALUES (1, 'models:/m-1', '/old/checkout/mlflow/artifacts/1/models/m')")
    con.commit()
    con.close()

    here = (tmp_path / "mlflow" / "artifacts").as_uri()
    assert mlflow_store.repoint_artifacts(db) == {old: here}
    assert mlflow_store.repoint_artifacts(db) == {}  # done once
    con = sqlite3.connect(db)
    assert con.execute("SELECT artifact_location FROM experiments ORDER BY 1").fetchall() == [
        ("file:///somewhere/mlruns",),
        (here,),
    ]
    assert dict(con.execute("SELECT run_uuid, artifact_uri FROM runs")) == {
        "a": f"{here}/1/a/artifacts",
        "b": f"{old}x/1/b",
    }
    assert con.execute("SELECT source, storage_location FROM model_versions").fetchone() == (
        "models:/m-1",
        f"{tmp_path / 'mlflow' / 'artifacts'}/1/models/m",
    )


def _report(root: Path) -> tuple[Path, list[Path]]:
    """reports/eval/ as the evaluate stage writes it: a page linking plots two folders up, results, samples."""
    plots = [root / "plots" / "ppo_curves.png", root / "plots" / "overoptimization.png", root / "plots" / "gone.png"]
    (root / "plots").mkdir(parents=True)
    for plot in plots[:2]:
        plot.write_bytes(b"\x89PNG\r\n\x1a\n" + plot.name.encode())
    report = root / "reports" / "eval"
    report.mkdir(parents=True)
    page = (
        "# Report\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![curves](../../plots/ppo_curves.png)\n[elsewhere](../x.md)\n"
    )
    (report / "report.md").write_text(page)
    (report / "results.json").write_text('{"gold": 1}')
    (report / "samples.jsonl").write_text('{"prompt": "p"}\n')
    return report, plots


def test_a_report_bundle_resolves_its_images_inside_itself(tmp_path: Path) -> None:
    import base64

    report, plots = _report(tmp_path / "repo")
    out = tmp_path / "bundle"
    assert tracking.write_bundle(report, plots, out) == [p.resolve() for p in plots[:2]]
    files = {str(f.relative_to(out)) for f in out.rglob("*") if f.is_file()}
    assert files == {
        "report.md",
        "report.html",
        "results.json",
        "samples.jsonl",
        "plots/ppo_curves.png",
        "plots/overoptimization.png",
    }
    page = (out / "report.md").read_text()
    assert "![curves](plots/ppo_curves.png)" in page and "[elsewhere](../x.md)" in page  # only the plots move
    assert (report / "report.md").read_text().count("../../plots/ppo_curves.png") == 1  # the original is as it was
    html = (out / "report.html").read_text()
    inlined = base64.b64encode(plots[0].read_bytes()).decode()
    assert f'src="data:image/png;base64,{inlined}"' in html and "<table>" in html


@pytest.mark.slow
def test_the_report_bundle_is_logged_under_the_run(env: Path, tmp_path: Path) -> None:
    import mlflow

    report, plots = _report(tmp_path / "repo")
    with tracking.stage_run("evaluate", {}) as tr:
        tracking.log_report_bundle(tr, report, plots)
    client = mlflow.MlflowClient()
    local = Path(client.download_artifacts(tr.run_id, "report", str(tmp_path / "down")))
    assert {f.name for f in local.iterdir()} == {"report.md", "report.html", "results.json", "samples.jsonl", "plots"}
    assert (local / "plots" / "ppo_curves.png").read_bytes() == plots[0].read_bytes()
    tracking.log_report_bundle(tracking.NULL_TRACKER, report, plots)  # tracking off: nothing, no error
