"""The stage lifecycle (tasks/stage.py): each stage reads, and its MLflow run logs, exactly the params dvc.yaml
declares for it; the runtime reaches the stages that only generate; the typed backends import without a cycle."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
import yaml

from tasks.common import ParamError, Params
from tasks.tracking import flatten
from tests.test_dvc import DVC_YAML, ROOT, lookup

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
# Stages whose module has `configure` (the validation stages are command-line tools with explicit options).
CONFIGURED = [s for s in DVC_YAML if not s.startswith("validate_")]


def _module(stage: str):
    return importlib.import_module(DVC_YAML[stage]["cmd"].split("-m", 1)[1].split()[0])


def _selected(keys: list[str]) -> dict:
    """The values of params.yaml at the dotted keys, as a stage logs them."""
    out = {}
    for key in keys:
        node = PARAMS
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


@pytest.mark.parametrize("stage", CONFIGURED)
def test_a_stage_reads_and_logs_exactly_its_dvc_params(stage):
    """DVC reruns a stage when a declared param changes: a key read but not declared would leave stale outputs,
    a key declared but not read would rerun it for nothing. What the run logs is what was read."""
    p = Params(PARAMS)
    _module(stage).configure(p)
    declared = DVC_YAML[stage].get("params", [])
    assert all(lookup(PARAMS, k) for k in declared)
    assert sorted(p.read) == sorted(declared), f"{stage} reads {p.read}, dvc.yaml declares {declared}"
    assert flatten(p.logged()) == flatten(_selected(declared))


def test_the_logged_params_reach_mlflow(tmp_path, monkeypatch):
    """The lifecycle's run carries the flattened params it was given, nothing else."""
    import mlflow
    from tasks.stage import lifecycle

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("RLHF_TRACKING", raising=False)
    monkeypatch.delenv("RLHF_PARENT_RUN_ID", raising=False)
    p = Params(PARAMS)
    _module("evaluate").configure(p)
    with lifecycle("evaluate", p, p.runtime(), ddp=False) as ctx:
        run_id = ctx.tracker.run_id
    logged = mlflow.MlflowClient().get_run(run_id).data.params
    assert logged == flatten(_selected(DVC_YAML["evaluate"]["params"]))
    assert "evaluate.max_new_tokens" in logged and "judge.gold" in logged and "runtime.device" in logged


def test_unknown_and_missing_keys_are_named():
    from tasks.sft import configure

    bad = {**PARAMS, "sft": {**PARAMS["sft"], "max_new_tokns": 64}}
    with pytest.raises(ParamError, match=r"sft: unknown key\(s\) \['max_new_tokns'\]"):
        configure(Params(bad))
    with pytest.raises(ParamError, match=r"no key 'judge.gold'"):
        configure(Params({k: v for k, v in PARAMS.items() if k != "judge"}))


def test_a_bad_judge_path_fails_while_configuring():
    from tasks.evaluate import configure

    bad = {**PARAMS, "judge": {"gold": "no.such.module:score"}}
    with pytest.raises(ParamError, match=r"judge.gold: judge 'no.such.module:score': cannot import"):
        configure(Params(bad))


def test_generation_length_is_params_yaml_s_everywhere():
    """The lengths that once defaulted to 48 in six places are params.yaml's, read by each stage."""
    from tasks import evaluate, ppo, preferences, reward_model, sft

    lengths = {
        "sft": sft.configure(Params(PARAMS)).sft.max_new_tokens,
        "preferences": preferences.configure(Params(PARAMS)).prefs.max_new_tokens,
        "reward_model": reward_model.configure(Params(PARAMS)).rm.max_new_tokens,
        "ppo": ppo.configure(Params(PARAMS)).ppo.max_new_tokens,
        "evaluate": evaluate.configure(Params(PARAMS)).eval.max_new_tokens,
    }
    assert lengths == {k: PARAMS[k]["max_new_tokens"] for k in lengths}


class _Probe(torch.nn.Module):
    """Stands for a model: records the device it is moved to and whether autocast is on when it generates."""

    def __init__(self):
        super().__init__()
        self.moved_to: list[torch.device] = []

    def to(self, device):  # type: ignore[override]
        self.moved_to.append(torch.device(device))
        return self


@pytest.mark.parametrize("stage", ["preferences", "evaluate"])
def test_generating_stages_honour_the_runtime(stage, monkeypatch):
    """preferences and evaluate move their models to runtime.device and generate under its precision."""
    from rlhf.device import Runtime
    from tasks import evaluate, preferences

    seen: list[tuple[torch.device, bool]] = []
    rt = Runtime(torch.device("meta"), "fp32")  # a device no default would pick: proof it came from the runtime
    probes: list[_Probe] = []

    def probe(*a, **k):
        probes.append(_Probe())
        return probes[-1]

    def fake_autocast():
        import contextlib

        @contextlib.contextmanager
        def cm():
            seen.append((rt.device, True))
            yield

        return cm()

    monkeypatch.setattr(Runtime, "autocast", lambda self: fake_autocast())
    if stage == "preferences":
        import pandas as pd

        prompts = pd.DataFrame({"id": ["a"], "prompt": ["Say hi."]})
        monkeypatch.setattr(preferences, "read_prompts", lambda p: prompts)
        monkeypatch.setattr(preferences, "load_model", probe)
        monkeypatch.setattr(preferences, "ChatTokenizer", type("T", (), {"load": staticmethod(lambda p: None)}))
        monkeypatch.setattr(preferences, "file_hash", lambda p: "hash")
        monkeypatch.setattr(
            preferences, "generate_text", lambda m, t, texts, s, seed, progress=None: ["Hello!", "Hi there."]
        )
        cfg = preferences.configure(Params(PARAMS)).prefs
        preferences.collect_world(type(cfg)(**{**cfg.__dict__, "k": 2}), rt)
    else:
        monkeypatch.setattr(evaluate, "load_model", probe)
        monkeypatch.setattr(evaluate, "read_config", lambda d: {})
        monkeypatch.setattr(evaluate, "RewardModelJudge", lambda model, *a: model)
        judges = evaluate.judges_for(None, None, rt)
        assert set(judges) == {"rm"}
    assert probes and all(p.moved_to == [rt.device] for p in probes)
    if stage == "preferences":
        assert seen == [(rt.device, True)]


class _Stop(Exception):
    pass


def test_evaluate_samples_with_models_on_the_runtime_device(monkeypatch, tmp_path):
    """The reference and the candidate are on rt.device, and sampling runs under its precision."""
    import contextlib

    import pandas as pd

    from rlhf.device import Runtime
    from tasks import evaluate
    from tasks.stage import Context
    from tasks.tracking import NULL_TRACKER

    rt = Runtime(torch.device("meta"), "fp32")
    state = {"autocast": False}

    @contextlib.contextmanager
    def autocast(self):
        state["autocast"] = True
        yield
        state["autocast"] = False

    def sample_policy(model, tok, prompts, ids, sampling, n, seed, ref):
        assert state["autocast"] and model.moved_to[-1] == rt.device and ref.moved_to[-1] == rt.device
        assert sampling.max_new_tokens == PARAMS["evaluate"]["max_new_tokens"]
        raise _Stop

    monkeypatch.setattr(Runtime, "autocast", autocast)
    monkeypatch.setattr(evaluate, "load_model", lambda *a, **k: _Probe())
    monkeypatch.setattr(evaluate, "ChatTokenizer", type("T", (), {"load": staticmethod(lambda p: None)}))
    monkeypatch.setattr(evaluate, "read_prompts", lambda p: pd.DataFrame({"id": [1], "prompt": ["Say hi."]}))
    monkeypatch.setattr(evaluate, "judges_for", lambda gold, tok, rt: {})
    monkeypatch.setattr(evaluate, "sample_policy", sample_policy)
    conf = evaluate.configure(Params(PARAMS))
    with pytest.raises(_Stop):
        evaluate.evaluate(conf, Context("evaluate", rt, NULL_TRACKER, 0.0), None, None, str(tmp_path))


def _core_import_graph() -> dict[str, set[str]]:
    """Module -> the core modules it imports anywhere in it (at import time or inside a function)."""
    from tests.test_dvc import _imported, _module_file

    def name(f: Path) -> str:
        return ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")

    graph = {}
    for f in sorted((ROOT / "rlhf").rglob("*.py")):
        deps = set()
        for n in _imported(f):
            parts = n.split(".")
            found = (_module_file(".".join(parts[:i])) for i in range(len(parts), 0, -1))
            target = next((m for m in found if m is not None), None)
            if target is not None:
                deps.add(name(target))
        graph[name(f)] = deps - {name(f)}
    return graph


def test_the_core_has_no_import_cycle():
    """No core module imports one that imports it back, even lazily (rlhf.hf and rlhf.tokenizer once did: the HF
    tokenizer subclassed the built-in one). The world package's own modules are its author's business."""
    graph = {m: d for m, d in _core_import_graph().items() if not m.startswith("rlhf.world")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append([*path[path.index(d) :], d])
            elif d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []
    assert "rlhf.tokenizer" not in graph["rlhf.hf"] and "rlhf.backends" in graph["rlhf.hf"]


def test_params_yaml_holds_every_section_a_stage_declares():
    sections = {k.split(".")[0] for s in DVC_YAML.values() for k in s.get("params", [])}
    assert sections <= set(PARAMS), sections - set(PARAMS)
    assert Path(ROOT / "params.yaml").exists()
