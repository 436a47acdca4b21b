"""The Prefect flows end to end under Prefect's test harness (one per test session).

The toy test drives flows/pipeline.py and flows/retrain.py with real DVC, MLflow and Prefect over a toy
pipeline: the real stage names and the real outputs the flow reads (checkpoints, metrics/eval.json), made in
a second each, so that winning, losing, a failing gate and new feedback can all be staged. The fresh-clone
test runs the real pipeline at toy sizes with `dvc repro` and with the flow, on one clone.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_dvc import DVC_YAML, dvc_env, fresh_clone, needs_stages, ran_stages, run_dvc

ROOT = Path(__file__).resolve().parent.parent
# Before anything imports Prefect (its settings are read once): state and results in a temporary home, even
# when bin/test points PREFECT_HOME at the project's.
_PREFECT_TMP = tempfile.mkdtemp(prefix="rlhf-prefect-")
atexit.register(shutil.rmtree, _PREFECT_TMP, True)
os.environ["PREFECT_HOME"] = f"{_PREFECT_TMP}/home"
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = f"{_PREFECT_TMP}/results"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

TOY_STAGES = '''
"""Toy stages: the pipeline's names and the outputs the flows read, in a second each."""
import contextlib, hashlib, json, sys
from pathlib import Path

import yaml

from tasks import tracking


def write(path, text):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def save(path, kind, seed):
    import torch

    from rlhf.checkpoint import save_model
    from rlhf.model import GPT, GPTConfig, ScalarHeadModel

    tok = "data/tokenizer/tokenizer.json"
    vocab = json.loads(Path(tok).read_text())["model"]["vocab"]
    cfg = GPTConfig(vocab_size=len(vocab), block_size=32, n_layer=1, n_head=2, n_embd=16)
    torch.manual_seed(seed)
    save_model(path, (GPT if kind == "gpt" else ScalarHeadModel)(cfg), Path(tok))


stage, toy = sys.argv[1], yaml.safe_load(open("params.yaml"))["toy"]
if stage == "check":  # the data gate of the retraining flow, on one incoming file
    sys.exit(1 if "bad" in Path(sys.argv[2]).read_text() else 0)
# Opening an MLflow run costs a stage process ~2 s (import, store): only some toy stages track.
TRACKED = ("ppo",)
run = tracking.stage_run(stage, {"toy": toy}) if stage in TRACKED else contextlib.nullcontext(tracking.NULL_TRACKER)
with run as tr:
    if stage == "world":
        write("data/world/corpus.txt", "the cat sat on the mat. a dog ran in the park.\\n" * 20)
    elif stage == "prepare":
        write("data/prepared/corpus.txt", Path("data/world/corpus.txt").read_text())
    elif stage == "tokenizer":
        from rlhf.tokenizer import train_tokenizer

        lines = Path("data/prepared/corpus.txt").read_text().splitlines()
        train_tokenizer(lines, 300).save("data/tokenizer/tokenizer.json")
    elif stage.startswith("validate_"):
        ok = not toy["fail_" + stage]
        write(f"reports/validation/{stage[len('validate_'):]}.json", json.dumps({"success": ok}))
        if not ok:
            sys.exit(1)
    elif stage in ("pretrain", "sft"):  # nothing reads these checkpoints here: no need for torch
        write(f"models/{'base' if stage == 'pretrain' else 'sft'}/config.json", json.dumps({"stage": stage}))
    elif stage == "preferences":
        write("data/preferences/collected.parquet", json.dumps(["collected"]))
    elif stage == "merge_feedback":
        feedback = sorted(p.name for p in Path("data/feedback").glob("*.jsonl"))
        collected = json.loads(Path("data/preferences/collected.parquet").read_text())
        write("data/preferences/pairs.parquet", json.dumps(collected + feedback))
    elif stage == "reward_model":  # new preference data, new reward model
        seed = int(hashlib.sha256(Path("data/preferences/pairs.parquet").read_bytes()).hexdigest()[:6], 16)
        save("models/reward_model", "scalar", seed)
    elif stage == "ppo":
        seed = toy["actor_seed"] + len(Path("data/preferences/pairs.parquet").read_text())
        save("models/ppo/actor", "gpt", seed)
        save("models/ppo/critic", "scalar", seed)
    elif stage == "dpo":
        save("models/dpo", "gpt", 1000 + len(Path("data/preferences/pairs.parquet").read_text()))
    elif stage in ("evaluate", "compare_methods"):
        low = toy["ci_low" if stage == "evaluate" else "dpo_ci_low"]
        gold = {"win_rate": low + 0.05, "ci_low": low, "ci_high": low + 0.1, "n": 64}
        name = "eval" if stage == "evaluate" else "eval_dpo"
        write(f"metrics/{name}.json", json.dumps({"gold": gold, "kl": 1.0}))
        write(f"reports/{'eval' if stage == 'evaluate' else 'compare'}/report.json", json.dumps({"gold": gold}))
    elif stage == "summary":
        evals = [json.loads(Path(f"metrics/{n}.json").read_text())["gold"] for n in ("eval", "eval_dpo")]
        win, low = ({m: e[k] for m, e in zip(("ppo", "dpo"), evals)} for k in ("win_rate", "ci_low"))
        write("metrics/summary.json", json.dumps({"win": win, "low": low}))
    tr.log_metrics({f"{stage}/done": 1.0}, step=0)
'''


def toy_dvc_yaml() -> dict[str, Any]:
    def stage(name: str, deps: list[str], outs: list[Any], params: list[str] | None = None) -> dict[str, Any]:
        return {"cmd": f"python toy_stages.py {name}", "deps": deps, "outs": outs, "params": params or []}

    report = {"cache": False}
    stages = {
        "world": stage("world", [], ["data/world"]),
        "prepare": stage("prepare", ["data/world"], ["data/prepared"]),
        "tokenizer": stage("tokenizer", ["data/prepared"], ["data/tokenizer"]),
        "validate_demos": stage(
            "validate_demos",
            ["data/tokenizer"],
            [{"reports/validation/demos.json": report}],
            ["toy.fail_validate_demos"],
        ),
        "pretrain": stage("pretrain", ["data/tokenizer"], ["models/base"]),
        "sft": stage("sft", ["models/base", "reports/validation/demos.json"], ["models/sft"]),
        "preferences": stage("preferences", ["models/sft"], ["data/preferences/collected.parquet"]),
        "merge_feedback": stage(
            "merge_feedback",
            ["data/preferences/collected.parquet", "data/feedback"],
            ["data/preferences/pairs.parquet"],
        ),
        "validate_preferences": stage(
            "validate_preferences",
            ["data/preferences/pairs.parquet"],
            [{"reports/validation/preferences.json": report}],
            ["toy.fail_validate_preferences"],
        ),
        "reward_model": stage(
            "reward_model",
            ["data/preferences/pairs.parquet", "reports/validation/preferences.json"],
            ["models/reward_model"],
        ),
        "dpo": stage("dpo", ["models/sft", "data/preferences/pairs.parquet"], ["models/dpo"]),
        "ppo": stage("ppo", ["models/sft", "models/reward_model"], ["models/ppo"], ["toy.actor_seed"]),
        "evaluate": stage("evaluate", ["models/ppo"], ["reports/eval"], ["toy.ci_low"]),
        "compare_methods": stage(
            "compare_methods", ["models/dpo", "models/ppo"], ["reports/compare"], ["toy.dpo_ci_low"]
        ),
        "summary": stage("summary", ["metrics/eval.json", "metrics/eval_dpo.json"], []),
    }
    stages["evaluate"]["outs"].append({"metrics/eval.json": report})
    stages["compare_methods"]["outs"].append({"metrics/eval_dpo.json": report})
    stages["summary"]["metrics"] = [{"metrics/summary.json": report}]
    return {"stages": stages}


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root, check=True, capture_output=True
    )


def set_toy(root: Path, **values: Any) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["toy"].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def dvc_cli(root: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="session")
def harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def toy_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "repo"
    for folder in ("data/feedback", "data/incoming"):
        (root / folder).mkdir(parents=True)
        (root / folder / ".gitkeep").touch()
    (root / "toy_stages.py").write_text(TOY_STAGES)
    (root / "dvc.yaml").write_text(yaml.safe_dump(toy_dvc_yaml(), sort_keys=False))
    toy = {"fail_validate_demos": False, "fail_validate_preferences": False, "actor_seed": 1, "ci_low": 0.6}
    toy["dpo_ci_low"] = 0.5  # DPO beats SFT less surely than PPO: PPO's actor challenges
    (root / "params.yaml").write_text(yaml.safe_dump({"toy": toy}))
    shutil.copy(ROOT / ".dvcignore", root / ".dvcignore")
    git(root, "init", "-q")
    dvc_cli(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "toy pipeline")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.delenv("RLHF_TRACKING", raising=False)
    return root


def worse(candidate: Path, baseline: Path) -> dict[str, Any]:
    """Comparator: the challenger loses to the champion."""
    return {"gold": {"win_rate": 0.4, "ci_low": 0.3, "ci_high": 0.48, "n": 64}}


def better(candidate: Path, baseline: Path) -> dict[str, Any]:
    """Comparator: the challenger beats the champion."""
    return {"gold": {"win_rate": 0.7, "ci_low": 0.6, "ci_high": 0.8, "n": 64}}


def latest_artifact(key: str) -> Any:
    """The newest Prefect artifact with this key (the harness's server)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    assert found, f"no Prefect artifact {key}"
    return found[0]


def ran(summary: dict[str, Any]) -> list[str]:
    return [s["stage"] for s in summary["stages"] if s["ran"]]


@pytest.mark.slow
def test_toy_pipeline_and_retraining_flows(harness: None, toy_repo: Path) -> None:
    import mlflow
    from flows.pipeline import STAGES, ValidationFailed, pipeline_flow
    from flows.results import PIPELINE_KEY, RETRAIN_KEY, TIMES_KEY
    from flows.retrain import retrain_flow
    from tasks.registry import ACTOR, CHALLENGER, CHAMPION, REWARD_MODEL

    root, client = str(toy_repo), mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])

    def alias(name: str) -> str:
        return str(client.get_model_version_by_alias(ACTOR, name).version)

    # 1. From scratch: every stage runs, each in a child run of the pipeline run. Both actors are registered
    #    (PPO's v1, DPO's v2); PPO's beats SFT more surely, challenges, and beats SFT.
    first = pipeline_flow(root=root, comparator=None)
    assert ran(first) == list(STAGES)
    assert (first["registered"]["actor"], first["registered"]["dpo_actor"]) == ("1", "2")
    assert first["promotion"]["promote"] and first["promotion"]["method"] == "ppo" and alias(CHAMPION) == "1"
    tags = {v: client.get_model_version(ACTOR, v).tags for v in ("1", "2")}
    assert (tags["1"]["method"], tags["2"]["method"]) == ("ppo", "dpo")
    assert tags["2"]["lineage.dvc_stage"] == "dpo" and "lineage.dvc.deps.models/sft" in tags["2"]
    named = json.loads(tags["1"]["promotion.methods_vs_sft"])
    assert (named["ppo"]["ci_low"], named["dpo"]["ci_low"]) == (0.6, 0.5)
    children = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.mlflow.parentRunId = '{first['parent_run_id']}'",
        output_format="list",
    )
    assert sorted(r.info.run_name for r in children) == ["ppo", "register"]
    # DVC agrees with the flow: nothing is left to reproduce.
    assert "up to date" in dvc_cli(toy_repo, "repro")
    # The verdict where people look: the flow run's artifacts and the pipeline run's row in MLflow.
    page, times = latest_artifact(PIPELINE_KEY), latest_artifact(TIMES_KEY)
    assert "rlhf-actor v1 (PPO) was **promoted** to champion" in page.data and first["parent_run_id"] in page.data
    assert "| PPO | 0.650 | 0.600 |" in page.data and "| DPO | 0.550 | 0.500 |" in page.data
    rows = json.loads(times.data) if isinstance(times.data, str) else times.data
    assert [r["stage"] for r in rows] == [*STAGES, "register + promote"]
    parent = client.get_run(first["parent_run_id"]).data
    assert parent.tags["rlhf.promotion"] == "v1 (ppo) promoted" and parent.metrics["headline/promoted"] == 1.0
    assert (parent.metrics["headline/win/ppo"], parent.metrics["headline/low/dpo"]) == (0.65, 0.5)

    # 2. An experiment on a PPO param (`dvc exp run -S`) reruns only PPO and what follows, and the flow
    #    run after it trains nothing; it registers the new actor, which loses to the champion.
    out = dvc_cli(toy_repo, "exp", "run", "-S", "toy.actor_seed=2")
    reran = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]
    assert reran == ["ppo", "evaluate", "compare_methods"]  # the same eval metrics: the summary stands
    second = pipeline_flow(root=root, comparator="tests.test_flows:worse")
    assert ran(second) == [] and second["registered"]["new_actor"] and not second["registered"]["new_dpo_actor"]
    assert not second["promotion"]["promote"] and (alias(CHAMPION), alias(CHALLENGER)) == ("1", "3")
    # nothing ran, yet this pipeline run's row carries the headline too
    assert client.get_run(second["parent_run_id"]).data.metrics["headline/win/ppo"] == 0.65

    # 3. Retraining: one valid and one invalid file arrive; the valid one is tracked and retrains from
    #    the preferences stage on; the new reward model and actor are registered; the actor wins.
    (toy_repo / "data/incoming/good.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    (toy_repo / "data/incoming/bad.jsonl").write_text('{"bad": true}\n')
    checker = [sys.executable, "toy_stages.py", "check", "{input}"]
    third = retrain_flow(root=root, validate_cmd=checker, comparator="tests.test_flows:better")
    [accepted] = third["accepted"]
    assert (toy_repo / accepted).exists() and (toy_repo / f"{accepted}.dvc").exists()
    assert (toy_repo / "data/incoming/rejected/bad.jsonl/bad.jsonl").exists()
    assert not list((toy_repo / "data/incoming").glob("*.jsonl"))
    # New feedback reruns the merge and what learns from the pairs, not the collection of pairs.
    assert ran(third["pipeline"])[0] == "merge_feedback" and "reward_model" in ran(third["pipeline"])
    assert "preferences" not in ran(third["pipeline"])
    assert third["pipeline"]["registered"]["reward_model"] == "2"
    assert third["pipeline"]["registered"]["dpo_actor"] == "5"  # new pairs: a new DPO actor too
    assert third["pipeline"]["promotion"]["promote"] and alias(CHAMPION) == "4"
    retrained = latest_artifact(RETRAIN_KEY).data
    assert accepted in retrained and "bad.jsonl" in retrained and "rlhf-actor v4 (PPO) was **promoted**" in retrained
    lineage = client.get_model_version(ACTOR, "4").tags
    assert lineage["lineage.from.rlhf-reward-model"] == "2" and "lineage.dvc.deps.models/sft" in lineage
    assert client.get_model_version(REWARD_MODEL, "2").tags["lineage.dvc_stage"] == "reward_model"

    # 4. The preference gate fails: the flow stops there and nothing downstream runs.
    lock_before = (toy_repo / "dvc.lock").read_text()
    set_toy(toy_repo, fail_validate_preferences=True)
    with pytest.raises(ValidationFailed, match="validate_preferences"):
        pipeline_flow(root=root, comparator=None)
    assert (
        yaml.safe_load((toy_repo / "dvc.lock").read_text())["stages"]["reward_model"]
        == (yaml.safe_load(lock_before)["stages"]["reward_model"])
    )
    [failed] = mlflow.search_runs(
        search_all_experiments=True,
        filter_string="tags.`rlhf.failed_stage` = 'validate_preferences'",
        output_format="list",
    )
    assert failed.info.status == "FAILED"
    assert {a.path for a in client.list_artifacts(failed.info.run_id, "validation")} >= {"validation/preferences.json"}


@pytest.mark.slow
@needs_stages
def test_fresh_clone_dvc_and_flow_agree(harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real pipeline at toy sizes: `dvc repro` twice, then the flow on the same clone, then DVC again."""
    import mlflow
    from flows.pipeline import head_to_head, pipeline_flow

    clone = fresh_clone(tmp_path)
    quiet = dvc_env(RLHF_TRACKING="off")  # the flow's runs are checked below; these need no store
    assert ran_stages(run_dvc(clone, "repro", env=quiet)) == list(DVC_YAML)
    assert ran_stages(run_dvc(clone, "repro", env=quiet)) == []

    # A PPO param changes: the flow reruns PPO and the evaluations only, each in a child run of the pipeline run,
    # registers the models and decides the first actor's promotion against SFT.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("RLHF_TRACKING", raising=False)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["ppo"]["seed"] += 1
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    summary = pipeline_flow(root=str(clone))
    assert ran(summary) == ["ppo", "evaluate", "compare_methods", "summary"]
    assert summary["registered"]["actor"] == "1" and summary["registered"]["dpo_actor"] == "2"
    assert summary["promotion"]["baseline"] == "sft" and summary["promotion"]["method"] in ("ppo", "dpo")
    children = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'",
        output_format="list",
    )
    # compare_methods runs the evaluate stage's code twice (DPO vs SFT, PPO vs DPO) in its one run
    assert sorted(r.info.run_name for r in children) == ["compare_methods", "evaluate", "ppo", "register", "summary"]
    assert ran_stages(run_dvc(clone, "repro", env=quiet)) == []  # DVC agrees with the flow

    # The challenger-vs-champion evaluation the flow uses once a champion exists: any two checkpoints.
    versus = head_to_head(clone, None)(clone / "models/ppo/actor", clone / "models/sft")
    assert 0 <= versus["gold"]["ci_low"] <= versus["gold"]["ci_high"] <= 1 and versus["gold"]["n"] > 0

    # Metrics, plots, and the default remote: results pushed, pulled into another clone, up to date there.
    shown = run_dvc(clone, "metrics", "show", env=quiet)  # the headline alone: no timings, no memory
    assert "win.ppo" in shown and "metrics/summary.json" in shown and "seconds" not in shown
    run_dvc(clone, "plots", "show", "-o", str(tmp_path / "plots"), env=quiet)
    assert (tmp_path / "plots" / "index.html").exists()
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", "pipeline results")
    run_dvc(clone, "push", env=quiet)
    git(tmp_path, "clone", "-q", str(clone), "clone2")
    run_dvc(tmp_path / "clone2", "pull", env=quiet)
    assert "up to date" in run_dvc(tmp_path / "clone2", "status", env=quiet)


def test_retraining_deploys_on_a_cron_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.retrain import deployment, serve

    d = deployment("*/30 * * * *")
    [schedule] = d.schedules
    assert (d.name, d.concurrency_limit, schedule.schedule.cron) == ("rlhf-retrain", 1, "*/30 * * * *")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(SystemExit, match="prefect server start"):
        serve("0 3 * * *")  # the ephemeral server cannot schedule: say how to get one


def test_only_io_failures_are_retried() -> None:
    from mlflow.exceptions import MlflowException
    from prefect.states import Failed

    from flows.pipeline import StageFailed, transient

    def retried(exc: Exception) -> bool:
        return transient(None, None, Failed(data=exc))

    assert retried(ConnectionError("reset")) and retried(MlflowException("database is locked"))
    assert not retried(StageFailed("evaluate failed")) and not retried(ValueError("bad checkpoint"))


@pytest.mark.slow
def test_retraining_gate_imports_every_format_and_rejects_a_bad_file_alone(
    harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real gate in the retraining flow: an Anthropic-HH file and a ranked file are accepted (imported as
    the preferences stage will), a file repeating accepted pairs is rejected alone, its report naming its lines."""
    import json

    import pandas as pd

    from flows.retrain import retrain_flow
    from rlhf.tokenizer import train_tokenizer

    root = tmp_path / "repo"
    prompts = ["Say hello to Ada.", "Name a colour.", "Give me a fruit.", "Name a pet."]
    answers = ["Hello, Ada!", "Blue.", "An apple.", "A cat.", "No.", "Red, I think.", "A stone.", "Hm."]
    for folder in ("data/incoming", "data/feedback", "data/tokenizer", "data/prepared", "data/preferences"):
        (root / folder).mkdir(parents=True)
    train_tokenizer([*prompts, *answers] * 3, vocab_size=300).save(root / "data/tokenizer/tokenizer.json")
    (root / "data/prepared/prompts_eval.jsonl").write_text(json.dumps({"prompt": "Name a prime number."}) + "\n")
    (root / "params.yaml").write_text(yaml.safe_dump({"model": {"block_size": 64}}))
    accepted = pd.DataFrame({"prompt": prompts[:2], "chosen": answers[:2], "rejected": answers[4:6]})
    accepted.to_parquet(root / "data/preferences/pairs.parquet", index=False)
    incoming = root / "data/incoming"
    hh = [f"\n\nHuman: {prompts[2]}\n\nAssistant: {answers[2]}", f"\n\nHuman: {prompts[2]}\n\nAssistant: {answers[6]}"]
    (incoming / "hh.jsonl").write_text(json.dumps({"chosen": hh[0], "rejected": hh[1]}) + "\n")
    ranked = {"prompt": prompts[3], "responses": [answers[7], answers[3], answers[6]], "ranking": [1, 0, 2]}
    (incoming / "ranked.jsonl").write_text(json.dumps(ranked) + "\n")
    repeat = [{"prompt": prompts[3], "chosen": answers[3], "rejected": answers[0]}, accepted.iloc[1].to_dict()]
    (incoming / "repeat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in repeat))
    git(root, "init", "-q")
    dvc_cli(root, "init", "-q")
    monkeypatch.setenv("RLHF_TRACKING", "off")
    monkeypatch.delenv("RLHF_PARAMS", raising=False)

    summary = retrain_flow(root=str(root), run_pipeline=False)
    assert sorted(Path(f).name.split("_", 1)[1] for f in summary["accepted"]) == ["hh.jsonl", "ranked.jsonl"]
    assert summary["rejected"] == ["data/incoming/rejected/repeat.jsonl"]
    report = json.loads((incoming / "rejected/repeat.jsonl/validation/preferences.json").read_text())
    [failed] = [o for o in report["outcomes"] if not o["success"]]
    assert failed["name"] == "not_in_existing" and [s["line"] for s in failed["samples"]] == [2]
    assert report["source"].endswith("repeat.jsonl")


FLAKY_STAGE = """
import json, sys
from pathlib import Path

toy = json.loads(Path("toy.json").read_text())
Path("models/ppo").mkdir(parents=True, exist_ok=True)
Path("models/ppo/actor.txt").write_text(f"actor {toy['seed']}")
Path("metrics").mkdir(exist_ok=True)
if toy["fail"]:
    sys.exit(1)  # a stage dying halfway: DVC had already deleted its outputs
Path("metrics/ppo.json").write_text(json.dumps({"seed": toy["seed"]}))
"""


def test_a_failed_stage_leaves_its_last_good_outputs(tmp_path: Path) -> None:
    """DVC deletes a stage's outputs before running it; after a failure the flow puts the last good ones back:
    the cached ones from the DVC cache, the uncached metrics from a copy."""
    from flows.pipeline import StageFailed, run_stage

    root = tmp_path / "repo"
    root.mkdir()
    (root / "stage.py").write_text(FLAKY_STAGE)
    (root / "toy.json").write_text(json.dumps({"seed": 1, "fail": False}))
    stage = {
        "cmd": "python stage.py",
        "deps": ["toy.json"],
        "outs": ["models/ppo", {"metrics/ppo.json": {"cache": False}}],
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"ppo": stage}}))
    git(root, "init", "-q")
    dvc_cli(root, "init", "-q")
    assert run_stage.fn("ppo", str(root), None)["ran"]
    good = {p: (root / p).read_text() for p in ("models/ppo/actor.txt", "metrics/ppo.json")}
    (root / "toy.json").write_text(json.dumps({"seed": 2, "fail": True}))
    with pytest.raises(StageFailed, match="last good outputs of 'ppo' are back in place"):
        run_stage.fn("ppo", str(root), None)
    assert {p: (root / p).read_text() for p in good} == good


def test_feedback_left_untrained_by_a_failed_run_is_retrained_next_time(tmp_path: Path) -> None:
    """A retraining run killed after accepting a file has consumed data/incoming/: the next run still sees that
    data/feedback/ is not what the preferences stage last merged, and runs the pipeline."""
    from flows.retrain import feedback_pending

    root = tmp_path / "repo"
    (root / "data/feedback").mkdir(parents=True)
    (root / "data/feedback/.gitkeep").touch()
    copy = 'python -c "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True)"'
    stages = {
        "preferences": {"cmd": f"{copy} data/feedback pairs", "deps": ["data/feedback"], "outs": ["pairs"]},
        "ppo": {"cmd": f"{copy} pairs actor", "deps": ["pairs"], "outs": ["actor"]},
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    git(root, "init", "-q")
    dvc_cli(root, "init", "-q")
    dvc_cli(root, "repro")
    assert not feedback_pending(root)
    (root / "data/feedback/abc_new.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    assert feedback_pending(root)
    dvc_cli(root, "repro", "--single-item", "preferences")  # killed after preferences, during ppo
    assert feedback_pending(root)
    dvc_cli(root, "repro")
    assert not feedback_pending(root)


def test_stage_output_lines_reach_the_prefect_run_logs(harness: None, tmp_path: Path) -> None:
    """What a stage prints (progress and result lines) is in its Prefect run's logs, not only on a console."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler
    from prefect.runtime import flow_run

    from flows.pipeline import run_logged

    script = "import sys; print('[sft] 50% 10 it/s ETA 3s'); print('error: bad row', file=sys.stderr); print('{}')"

    @task
    def stage() -> int:
        return run_logged([sys.executable, "-c", script], tmp_path)[0]

    @flow
    def toy() -> tuple[int, str]:
        return stage(), flow_run.get_id()

    code, run_id = toy()
    APILogHandler().flush()  # the handler sends in batches: drain them before reading
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    messages = [log.message for log in logs]
    assert code == 0
    assert {"[sft] 50% 10 it/s ETA 3s", "error: bad row", "{}"} <= set(messages), messages
