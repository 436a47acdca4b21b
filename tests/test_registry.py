"""The promotion rule, and the real MLflow registry with tiny checkpoints: lineage, aliases, serving."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks import registry, tracking
from tasks.registry import ACTOR, CHALLENGER, CHAMPION, CRITIC, REWARD_MODEL, decide_promotion


def metrics(ci_low: float, ci_high: float, win_rate: float | None = None, n: int = 200) -> dict[str, Any]:
    """An eval metrics dict shaped like metrics/eval.json."""
    wr = (ci_low + ci_high) / 2 if win_rate is None else win_rate
    return {"gold": {"win_rate": wr, "ci_low": ci_low, "ci_high": ci_high, "n": n}, "kl": 3.0}


# --- decide_promotion: the rule alone ----------------------------------------------------------------------


def test_first_challenger_promoted_when_it_beats_sft() -> None:
    d = decide_promotion(metrics(0.56, 0.7), None, champion=None)
    assert d.promote and d.baseline == "sft" and d.ci_low == 0.56 and d.n == 200


def test_first_challenger_not_promoted_when_sft_is_as_good() -> None:
    assert not decide_promotion(metrics(0.41, 0.55), None, champion=None).promote


def test_better_challenger_promoted_over_champion() -> None:
    d = decide_promotion(metrics(0.2, 0.3), metrics(0.58, 0.66), champion="3")
    assert d.promote and d.baseline == "champion:v3"


def test_worse_challenger_kept_out_even_if_it_beats_sft() -> None:
    d = decide_promotion(metrics(0.7, 0.8), metrics(0.3, 0.45), champion="3")
    assert not d.promote and d.baseline == "champion:v3"


@pytest.mark.parametrize("ci", [(0.5, 0.6), (0.45, 0.62), (0.5, 0.5)])
def test_ties_and_straddling_intervals_are_not_promoted(ci: tuple[float, float]) -> None:
    assert not decide_promotion(metrics(*ci, win_rate=0.55), None, champion=None).promote


@pytest.mark.parametrize(
    "evidence",
    [None, {}, {"rm": metrics(0.6, 0.7)["gold"]}, {"gold": {"win_rate": 0.9}}, metrics(float("nan"), 1)],
)
def test_missing_or_malformed_evidence_never_promotes(evidence: dict[str, Any] | None) -> None:
    d = decide_promotion(evidence, None, champion=None)
    assert not d.promote and d.reason


def test_with_a_champion_the_comparison_with_it_is_required() -> None:
    assert not decide_promotion(metrics(0.9, 0.95), None, champion="1").promote


def test_other_judge_and_threshold() -> None:
    ev = {"rm": {"win_rate": 0.7, "ci_low": 0.62, "ci_high": 0.8, "n": 50}}
    assert decide_promotion(ev, None, champion=None, judge="rm").promote
    assert not decide_promotion(ev, None, champion=None, judge="rm", threshold=0.65).promote


def test_decision_tags_are_strings() -> None:
    tags = decide_promotion(metrics(0.56, 0.7), None, champion=None).as_tags()
    assert tags["promotion.promote"] == "True" and all(isinstance(v, str) for v in tags.values())


# --- choose_challenger: which of a run's actors challenges -------------------------------------------------


def test_the_actor_with_the_higher_ci_low_against_sft_challenges() -> None:
    ppo, dpo = metrics(0.55, 0.7, win_rate=0.66), metrics(0.58, 0.64, win_rate=0.61)
    assert registry.choose_challenger({"ppo": ppo, "dpo": dpo}) == "dpo"  # the lower bound counts, not the rate
    assert registry.choose_challenger({"ppo": metrics(0.6, 0.7), "dpo": dpo}) == "ppo"
    assert registry.choose_challenger({"ppo": metrics(0.58, 0.7), "dpo": dpo}) == "ppo"  # a tie: the first listed


@pytest.mark.parametrize("broken", [None, {}, {"rm": metrics(0.9, 0.95)["gold"]}, metrics(float("nan"), 1)])
def test_an_actor_without_a_usable_figure_never_wins_the_pick(broken: dict[str, Any] | None) -> None:
    assert registry.choose_challenger({"ppo": broken, "dpo": metrics(0.3, 0.4)}) == "dpo"
    assert registry.choose_challenger({"ppo": broken, "dpo": None}) == "ppo"  # the rule then records no evidence
    assert registry.choose_challenger({"ppo": metrics(0.2, 0.3), "dpo": metrics(0.2, 0.4)}, judge="rm") == "ppo"


def test_the_picked_actor_then_faces_the_champion_rule() -> None:
    """DPO beats SFT more surely than PPO, so it challenges; the champion rule alone decides its promotion."""
    vs_sft = {"ppo": metrics(0.52, 0.6), "dpo": metrics(0.6, 0.7)}
    picked = registry.choose_challenger(vs_sft)
    assert picked == "dpo" and decide_promotion(vs_sft[picked], None, champion=None).promote
    assert not decide_promotion(vs_sft[picked], metrics(0.4, 0.55), champion="2").promote


# --- the real registry --------------------------------------------------------------------------------------


def write_checkpoints(root: Path, actor_seed: int) -> None:
    """Tiny real checkpoints where the pipeline leaves them; only the actor changes with the seed."""
    import torch

    from rlhf.checkpoint import save_model
    from rlhf.model import GPT, GPTConfig, ScalarHeadModel
    from rlhf.tokenizer import train_tokenizer

    tok_file = root / "tokenizer.json"
    if not tok_file.exists():
        texts = ["the cat sat on the mat", "a dog ran in the park", "hello there, how are you?"] * 30
        train_tokenizer(texts, 300).save(tok_file)
    vocab = json.loads(tok_file.read_text())["model"]["vocab"]
    cfg = GPTConfig(vocab_size=len(vocab), block_size=32, n_layer=1, n_head=2, n_embd=16)
    torch.manual_seed(0)
    save_model(root / "models/reward_model", ScalarHeadModel(cfg), tok_file, reward_mean=0.1, reward_std=2.0)
    save_model(root / "models/ppo/critic", ScalarHeadModel(cfg), tok_file)
    torch.manual_seed(actor_seed)
    save_model(root / "models/ppo/actor", GPT(cfg), tok_file)


def write_lock(root: Path, lr: float) -> None:
    """A dvc.lock as `dvc repro` writes it, for the lineage tags."""
    ppo = {
        "cmd": "python -m tasks.ppo",
        "deps": [
            {"path": "models/sft", "md5": "a" * 32 + ".dir"},
            {"path": "data/prepared/prompts_ppo.jsonl", "md5": "b" * 32},
            {"path": "tasks/ppo.py", "md5": "c" * 32},
        ],
        "params": {"params.yaml": {"ppo": {"lr": lr}, "judge.gold": "x:y"}},
        "outs": [{"path": "models/ppo", "md5": "d" * 32 + ".dir"}],
    }
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"ppo": ppo}}))


class FakeComparator:
    """Stands in for the evaluate stage's head-to-head: fixed metrics, and checks what it is given."""

    def __init__(self, result: dict[str, Any]):
        self.result, self.calls = result, []

    def __call__(self, candidate: Path, baseline: Path) -> dict[str, Any]:
        from rlhf.checkpoint import file_hash

        # The checkpoints live in a temporary download: record what they hold.
        self.calls.append((file_hash(candidate / "model.safetensors"), file_hash(baseline / "model.safetensors")))
        return self.result


@pytest.fixture(scope="module")
def registry_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three "pipeline runs" against a fresh store: the first challenger beats SFT, the second is worse than
    the champion, the third better. Fake eval numbers, real registry and checkpoints."""
    tmp = tmp_path_factory.mktemp("registry")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mp.delenv(tracking.SWITCH_ENV, raising=False)
    root = tmp / "repo"
    out: dict[str, Any] = {"root": root, "uri": f"sqlite:///{tmp / 'mlflow.db'}", "runs": []}
    try:
        plan = [
            (1, metrics(0.55, 0.7), None),
            (2, metrics(0.6, 0.7), metrics(0.3, 0.45)),
            (3, None, metrics(0.6, 0.7)),
        ]
        for seed, vs_sft, vs_champion in plan:
            write_checkpoints(root, seed)
            write_lock(root, lr=1e-5 * seed)
            with tracking.pipeline_run(f"pipeline {seed}") as parent:
                reg = registry.register_pipeline(root, parent.run_id)
                _, version = registry.select_challenger(reg.actors(), {"ppo": vs_sft})
                compare = FakeComparator(vs_champion) if vs_champion else None
                decision = registry.promote(version, vs_sft, compare)
            out["runs"].append({"registered": reg, "decision": decision, "compare": compare})
        # A pipeline run that retrained nothing registers nothing.
        out["again"] = registry.register_pipeline(root, None)
        yield out
    finally:
        mp.undo()


@pytest.mark.slow
def test_only_better_challengers_become_champion(registry_runs: dict[str, Any]) -> None:
    import mlflow

    client = mlflow.MlflowClient(registry_runs["uri"])
    first, worse, better = registry_runs["runs"]
    assert [r["registered"].actor for r in registry_runs["runs"]] == ["1", "2", "3"]
    assert first["decision"].promote and first["decision"].baseline == "sft"
    assert not worse["decision"].promote and worse["decision"].baseline == "champion:v1"
    assert better["decision"].promote and better["decision"].baseline == "champion:v1"
    assert str(client.get_model_version_by_alias(ACTOR, CHAMPION).version) == "3"
    assert str(client.get_model_version_by_alias(ACTOR, CHALLENGER).version) == "3"
    # The decision and its evidence stay on each version.
    v2 = client.get_model_version(ACTOR, "2").tags
    assert v2["promotion.promote"] == "False" and json.loads(v2["promotion.evidence"])["gold"]["ci_low"] == 0.3
    assert client.get_model_version(ACTOR, "1").tags["promotion.superseded_by"] == "3"
    # The head-to-head was given the champion's checkpoint as the baseline.
    sha = {v: client.get_model_version(ACTOR, v).tags[registry.CKPT_TAG] for v in ("1", "2", "3")}
    assert worse["compare"].calls == [(sha["2"], sha["1"])]
    assert better["compare"].calls == [(sha["3"], sha["1"])]
    # Unchanged reward model and critic are reused, not registered again.
    assert {r["registered"].reward_model for r in registry_runs["runs"]} == {"1"}
    assert {r["registered"].critic for r in registry_runs["runs"]} == {"1"}
    again = registry_runs["again"]
    assert (again.actor, again.new_actor) == ("3", False)


@pytest.mark.slow
def test_versions_carry_lineage(registry_runs: dict[str, Any]) -> None:
    import mlflow

    client = mlflow.MlflowClient(registry_runs["uri"])
    tags = client.get_model_version(ACTOR, "2").tags
    assert tags["lineage.git_commit"]  # "none" outside a git checkout with commits
    assert tags["lineage.dvc.deps.models/sft"] == "a" * 32 + ".dir"
    assert tags["lineage.dvc.outs.models/ppo"] == "d" * 32 + ".dir"
    assert "lineage.dvc.deps.tasks/ppo.py" not in tags  # code is identified by the commit
    assert tags["lineage.from.rlhf-reward-model"] == "1"
    assert tags["lineage.params_hash"] != client.get_model_version(ACTOR, "3").tags["lineage.params_hash"]
    assert client.get_model_version(CRITIC, "1").tags["lineage.from.rlhf-reward-model"] == "1"
    assert client.get_model_version(REWARD_MODEL, "1").tags["lineage.dvc_stage"].startswith("reward_model")


@pytest.mark.slow
def test_every_registered_version_carries_a_model_card(registry_runs: dict[str, Any]) -> None:
    """Its description says what it is, the data and params it came from, its headline metrics, how to serve it."""
    import mlflow

    client = mlflow.MlflowClient(registry_runs["uri"])
    versions = [(ACTOR, v) for v in ("1", "2", "3")] + [(CRITIC, "1"), (REWARD_MODEL, "1")]
    for name, version in versions:
        card = client.get_model_version(name, version).description
        for section in (f"# {name}", "## Data", "## Params", "## Headline metrics", "## Serve"):
            assert section in card, (name, version, section)
        assert f"models:/{name}/<version>" in card
    actor = client.get_model_version(ACTOR, "2").description
    assert "trained by PPO" in actor and "models/sft: `" + "a" * 32 + ".dir`" in actor
    assert '"lr": 2e-05' in actor  # the params of the dvc.lock entry it came from


def test_a_model_card_reports_the_headline_metrics(tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    win = {"win_rate": 0.61, "ci_low": 0.55, "ci_high": 0.67, "n": 200}
    (tmp_path / "metrics/eval.json").write_text(json.dumps({"gold": win, "kl": 4.25}))
    lines = registry.headline_metrics(tmp_path, ACTOR, "ppo")
    assert lines == ["- eval.json `gold`: win-rate 0.610 [95% CI 0.550, 0.670] vs SFT", "- eval.json `kl`: 4.25"]
    tags = {"method": "ppo", "lineage.params": '{"ppo": {"kl_coef": 0.05}}', "lineage.dvc.deps.models/sft": "abc"}
    card = registry.model_card(ACTOR, tags, lines, {"arch": "gpt", "model": {"block_size": 128}})
    assert "The policy (actor) trained by PPO against the reward model: a causal LM" in card
    assert "- models/sft: `abc`" in card and '{"ppo": {"kl_coef": 0.05}}' in card and lines[0] in card
    assert "context 128 tokens" in card
    assert registry.headline_metrics(tmp_path, REWARD_MODEL, None) == ["- (no metrics files found under metrics/)"]


@pytest.mark.slow
def test_pyfunc_models_load_and_predict(registry_runs: dict[str, Any]) -> None:
    import pandas as pd
    import torch

    import mlflow

    mlflow.set_tracking_uri(registry_runs["uri"])
    actor = mlflow.pyfunc.load_model(f"models:/{ACTOR}@{CHAMPION}")
    out = actor.predict(pd.DataFrame({"prompt": ["the cat", "a dog"]}), params={"max_new_tokens": 5, "seed": 1})
    assert list(out.columns) == ["response"] and len(out) == 2 and all(isinstance(r, str) for r in out["response"])
    rm = mlflow.pyfunc.load_model(f"models:/{REWARD_MODEL}/1")
    scores = rm.predict(pd.DataFrame({"prompt": ["the cat"], "response": ["sat on the mat"]}))
    assert list(scores.columns) == ["score"] and scores["score"].notna().all()
    assert torch.is_grad_enabled()  # serving code must not switch autograd off for the whole process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_served_champion_answers_a_generation_request(registry_runs: dict[str, Any], tmp_path: Path) -> None:
    port = free_port()
    bindir = str(Path(sys.executable).parent)  # `mlflow models serve` execs uvicorn from PATH
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registry_runs["uri"],
        "PATH": f"{bindir}:{os.environ['PATH']}",
    }
    env.pop("PYTHONPATH", None)  # the model must bring its own code (rlhf), not find the checkout's
    cmd = [
        f"{bindir}/mlflow",
        "models",
        "serve",
        "-m",
        f"models:/{ACTOR}@{CHAMPION}",
        "--env-manager",
        "local",
    ]
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(
        [*cmd, "-h", "127.0.0.1", "-p", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,  # own process group: the server and its uvicorn worker stop together
    )
    try:
        body = {"dataframe_records": [{"prompt": "the cat"}], "params": {"max_new_tokens": 6}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    answer = json.loads(resp.read())
                break
            except OSError:
                assert time.monotonic() < deadline, "server not ready in 90 s:\n" + (tmp_path / "serve.log").read_text()
                time.sleep(0.5)
        [prediction] = answer["predictions"]
        assert isinstance(prediction["response"], str)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


PROMOTER = """
import json, sys, time
from tasks import registry


def slow_better(candidate, baseline):  # a head-to-head that takes a while and says the challenger won
    time.sleep(2)
    return {"gold": {"win_rate": 0.7, "ci_low": 0.6, "ci_high": 0.8, "n": 64}}


decision = registry.promote(sys.argv[1], None, slow_better)
print(json.dumps({"version": sys.argv[1], "promote": decision.promote, "baseline": decision.baseline}))
"""


@pytest.mark.slow
def test_two_concurrent_promotions_leave_one_champion_that_beat_the_other(tmp_path: Path) -> None:
    """v1 is champion; v2 and v3 are promoted at once by two processes, each winning its head-to-head. One
    promotion waits for the other and evaluates against its winner: exactly one champion, whose evidence names
    the version it beat, and tags that agree with the alias."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mp.delenv(tracking.SWITCH_ENV, raising=False)
    try:
        root = tmp_path / "repo"
        for seed in (1, 2, 3):
            write_checkpoints(root, seed)
            reg = registry.register_pipeline(root, None)
            if seed == 1:
                assert registry.promote(reg.actor, metrics(0.55, 0.7), None).promote
        env = {**os.environ, "PYTHONPATH": str(registry.ROOT)}
        procs = [
            subprocess.Popen([sys.executable, "-c", PROMOTER, v], env=env, stdout=subprocess.PIPE, text=True)
            for v in ("2", "3")
        ]
        outs = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
        assert all(p.returncode == 0 for p in procs)
        client = mlflow.MlflowClient(uri)
        champion = str(client.get_model_version_by_alias(ACTOR, CHAMPION).version)
        [first] = [o["version"] for o in outs if o["baseline"] == "champion:v1"]
        [last] = [o for o in outs if o["version"] != first]
        assert champion == last["version"] and last["baseline"] == f"champion:v{first}"
        tags = {v: client.get_model_version(ACTOR, v).tags for v in ("1", "2", "3")}
        assert [v for v, t in tags.items() if t["promotion.promote"] == "True"] == [champion]
        assert tags[champion]["promotion.baseline"] == f"champion:v{first}"
        assert tags[first]["promotion.superseded_by"] == champion and tags["1"]["promotion.superseded_by"] == first
        # Promoting the champion again, with an evaluation that would disagree, changes nothing.
        again = registry.promote(champion, None, lambda c, b: metrics(0.3, 0.45))
        assert again.reason == "already the champion"
        assert client.get_model_version(ACTOR, champion).tags == tags[champion]
    finally:
        mp.undo()
