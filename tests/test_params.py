"""Params are checked before a stage loads anything (tasks.common.build_dataclass: keys, types, ranges), and a
stage's command line reports a user's error (bad params, bad data) as one line on stderr, exit status 2."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import sys
import typing
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import working_root
from tests.test_hf import FIXTURE

# Every params dataclass a stage builds from params.yaml, by section.
SECTIONS = {
    "world": ("rlhf.world", "WorldConfig"),
    "data": ("tasks.prepare", "DataParams"),
    "tokenizer": ("tasks.tokenizer", "TokenizerParams"),
    "model": ("rlhf.model", "GPTConfig"),
    "model.lora": ("rlhf.lora", "LoRAConfig"),
    "runtime": ("tasks.common", "RuntimeParams"),
    "pretrain": ("rlhf.lm_train", "TrainConfig"),
    "sft": ("tasks.sft", "SFTParams"),
    "validate": ("tasks.validate", "ValidateParams"),
    "preferences": ("tasks.preferences", "PreferenceParams"),
    "reward_model": ("tasks.reward_model", "RewardParams"),
    "dpo": ("rlhf.dpo", "DPOConfig"),
    "ppo": ("tasks.ppo", "PPOParams"),
    "evaluate": ("tasks.evaluate", "EvalParams"),
}


PARAMS_YAML = Path(__file__).resolve().parent.parent / "params.yaml"


def section_values(name: str) -> dict:
    """The section `name` of the project's params.yaml, for tests that build a stage's config as it runs."""
    return dict(yaml.safe_load(PARAMS_YAML.read_text())[name])


def _cls(name: str) -> type:
    module, attr = SECTIONS[name]
    return getattr(importlib.import_module(module), attr)


def _numeric_fields(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        if dataclasses.is_dataclass(args[0]):
            out += _numeric_fields(args[0])
        elif args[0] in (int, float):
            out.append(f.name)
    return out


def test_every_numeric_param_has_a_range():
    from tasks.common import RANGES

    missing = {name: [f for f in _numeric_fields(_cls(name)) if f not in RANGES] for name in SECTIONS}
    assert {k: v for k, v in missing.items() if v} == {}


def _disagreements(cls: type, raw: dict, where: str) -> list[str]:
    """Fields of `cls` whose default differs from the value params.yaml gives them (nested sections too)."""
    hints, out = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            out += _disagreements(hints[f.name], raw[f.name], f"{where}.{f.name}")
        elif f.default is not dataclasses.MISSING and f.default != raw[f.name]:
            out.append(f"{where}.{f.name}: default {f.default!r}, params.yaml {raw[f.name]!r}")
    return out


def test_no_config_default_disagrees_with_params_yaml():
    """A value params.yaml holds is either required (no default) or defaulted to the very same value, so code
    that builds a config without params.yaml (a test, a notebook) gets what the pipeline runs with."""
    params = yaml.safe_load(PARAMS_YAML.read_text())
    sections = {name: functools.reduce(lambda node, key: node[key], name.split("."), params) for name in SECTIONS}
    assert [d for name in SECTIONS for d in _disagreements(_cls(name), sections[name], name)] == []


def test_the_served_actor_samples_as_the_pipeline_evaluates():
    from rlhf.serving import DEFAULTS

    params = yaml.safe_load(PARAMS_YAML.read_text())["evaluate"]
    assert (DEFAULTS["max_new_tokens"], DEFAULTS["temperature"]) == (params["max_new_tokens"], params["temperature"])


def test_a_missing_key_is_named():
    from tasks.common import ParamError, build_dataclass

    raw = section_values("ppo")
    del raw["max_new_tokens"]
    with pytest.raises(ParamError, match=r"params.yaml:ppo: missing key\(s\) \['max_new_tokens'\]"):
        build_dataclass(_cls("ppo"), raw, "params.yaml:ppo")


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("ppo", "batch_size", 0, r"ppo\.batch_size: must be >= 1, got 0"),
        ("ppo", "mini_batches", 0, r"ppo\.mini_batches: must be >= 1, got 0"),
        ("ppo", "lr", -1, r"ppo\.lr: must be > 0, got -1"),
        ("ppo", "kl_coef", -0.5, r"ppo\.kl_coef: must be >= 0, got -0\.5"),
        ("ppo", "gamma", 1.5, r"ppo\.gamma: must be in \[0, 1\], got 1\.5"),
        ("ppo", "iterations", "10", r"ppo\.iterations: expected int, got str '10'"),
        ("ppo", "batch_size", 8.0, r"ppo\.batch_size: expected int, got float 8\.0"),
        ("ppo", "adaptive_kl", 1, r"ppo\.adaptive_kl: expected bool, got int 1"),
        ("ppo", "lr", "1e-4", r"ppo\.lr: expected float, got str '1e-4' \(YAML reads 1e-3 as a string"),
        ("ppo", "cliprange_value", "off", r"ppo\.cliprange_value: expected float"),
        ("ppo", "lr", float("nan"), r"ppo\.lr: must be > 0, got nan"),
        ("pretrain", "steps", -5, r"pretrain\.steps: must be >= 1"),
        ("sft", "heldout_frac", 1.0, r"sft\.heldout_frac: must be in \[0, 1\)"),
        ("reward_model", "lr", 0.0, r"reward_model\.lr: must be > 0"),
        ("preferences", "k", 1, r"preferences\.k: must be >= 2"),
        ("evaluate", "temperature", -0.1, r"evaluate\.temperature: must be >= 0"),
        ("world", "styles", {"careful": -1.0}, r"world\.styles\.careful: must be >= 0"),
        ("model", "dropout", 1.0, r"model\.dropout: must be in \[0, 1\)"),
        ("model", "n_head", 3, r"model: n_embd \(32\) must be a multiple of n_head \(3\)"),
        (
            "ppo",
            "batch_size",
            9,
            r"ppo: ppo\.batch_size 9 over 1 process\(es\) is 9 rollouts each, which mini_batches 2",
        ),
        ("ppo", "bacth_size", 8, r"ppo: unknown key\(s\) \['bacth_size'\]"),
    ],
)
def test_bad_params_are_refused_with_the_key_and_rule(section, key, value, message):
    from tasks.common import ParamError, build_dataclass

    raw = {**yaml.safe_load(FIXTURE.read_text())[section], key: value}
    if section == "model":
        raw = {k: v for k, v in raw.items() if k != "hf_path"} | {"vocab_size": 64}
    with pytest.raises(ParamError, match=message):
        build_dataclass(_cls(section), raw, f"params.yaml:{section}")


def test_good_params_build_and_ints_become_floats():
    from tasks.common import build_dataclass

    params = yaml.safe_load(FIXTURE.read_text())
    cfg = build_dataclass(_cls("ppo"), {**params["ppo"], "kl_coef": 0, "cliprange_value": None}, "ppo")
    assert cfg.kl_coef == 0.0 and isinstance(cfg.kl_coef, float) and cfg.cliprange_value is None
    world = build_dataclass(_cls("world"), params["world"], "world")
    assert world.styles.careful == pytest.approx(0.3)


STAGES = {  # module -> (section to break, bad value of its key)
    "tasks.world": ("world", "n_demos", -1),
    "tasks.prepare": ("data", "demos", 3),
    "tasks.tokenizer": ("tokenizer", "vocab_size", 0),
    "tasks.pretrain": ("pretrain", "lr", -1.0),
    "tasks.sft": ("sft", "batch_size", 0),
    "tasks.preferences": ("preferences", "temperature", -1.0),
    "tasks.reward_model": ("reward_model", "val_frac", 2.0),
    "tasks.ppo": ("ppo", "kl_coef", -0.5),
    "tasks.evaluate": ("evaluate", "n_boot", 0),
}


@pytest.fixture
def empty_root(tmp_path_factory):
    """A working root with the tiny params and no data or model at all: a stage that got past its params would
    fail on a missing file instead."""
    root, mp = working_root(tmp_path_factory, "params", FIXTURE.read_text())
    yield root
    mp.undo()


def _main_error(module: str, argv: list[str], capsys) -> str:
    """Run a stage's main as `python -m module argv`; its exit status must be 2 and stderr one line."""
    mod = importlib.import_module(module)
    old, grad = sys.argv, torch.is_grad_enabled()
    sys.argv = [module, *argv]
    try:
        with pytest.raises(SystemExit) as exit_info:
            mod.main()
    finally:  # a stage's main may set process-wide state (preferences turns autograd off): not for the next test
        sys.argv = old
        torch.set_grad_enabled(grad)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("module", sorted(STAGES))
def test_stage_cli_refuses_bad_params_in_one_line_before_loading(module, empty_root, capsys):
    section, key, value = STAGES[module]
    params = yaml.safe_load((empty_root / "params.yaml").read_text())
    params[section][key] = value
    bad = empty_root / "bad.yaml"
    bad.write_text(yaml.safe_dump(params))
    err = _main_error(module, ["--params", str(bad)], capsys)
    assert err.startswith("error: ") and f"{section}.{key}" in err


def test_stage_cli_prints_a_data_error_alone(empty_root, capsys):
    (empty_root / "data/user/demos.jsonl").write_text('{"prompt": "hi", "response": "yo"}\n{"prompt": "x",\n')
    params = yaml.safe_load((empty_root / "params.yaml").read_text())
    (empty_root / "data/user/corpus.txt").write_text("some text\n")
    params["data"].update(corpus="data/user/corpus.txt", demos="data/user/demos.jsonl")
    (empty_root / "params.yaml").write_text(yaml.safe_dump(params))
    err = _main_error("tasks.prepare", [], capsys)
    assert "demos.jsonl: line 2: malformed JSON" in err


def test_validate_cli_prints_a_params_error_alone(empty_root, capsys):
    from tasks import validate

    (empty_root / "params.yaml").write_text(yaml.safe_dump({"validate": {"min_demos": 0, "min_pairs": 100}}))
    with pytest.raises(SystemExit) as exit_info:
        validate.main(["demos", "--input", "x.jsonl", "--tokenizer", "t.json", "--eval-prompts", "e.jsonl"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "validate.min_demos: must be >= 1" in err and "Traceback" not in err
