"""The stages with LoRA on (model.lora.r > 0, gradient checkpointing on), run through their entry points on the
tiny params: each output is a plain (merged) checkpoint the next stage loads as before, with its adapter beside it
naming its base by sha256; PPO's reference (the actor's adapter off) is the SFT model; PPO's reward (the critic's
adapter off) is the reward model; a critic that LoRA cannot build is refused before anything loads."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from rlhf.checkpoint import file_hash, load_model, read_config
from rlhf.lora import AdapterOff, load_adapter
from rlhf.rollout import Rollout, policy_forward
from tests.conftest import working_root
from tests.test_pipeline import FIXTURE

LORA = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": None}


def lora_params() -> str:
    params = yaml.safe_load(FIXTURE.read_text())
    params["model"]["lora"] = dict(LORA)
    params["runtime"] = {"gradient_checkpointing": True}
    return yaml.safe_dump(params)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root, mp = working_root(tmp_path_factory, "lora_pipeline", lora_params())
    from tasks import dpo, merge_feedback, ppo, preferences, prepare, pretrain, reward_model, sft, tokenizer, world
    from tasks.common import Params, load_params

    params = load_params()
    world.run(Params(params).section("world", world.WorldConfig))
    prepare.run(Params(params).section("data", prepare.DataParams))
    tokenizer.run(Params(params).section("tokenizer", tokenizer.TokenizerParams))
    for stage in (pretrain, sft, preferences, merge_feedback, reward_model, dpo, ppo):
        stage.run(params)
    yield root
    mp.undo()


def rollout(vocab: int, seed: int = 0) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, vocab, (3, 6), generator=g)
    responses = torch.randint(3, vocab, (3, 8), generator=g)
    mask = torch.ones(3, 8)
    mask[1, 5:] = 0
    return Rollout(prompt, torch.ones_like(prompt), responses, mask, ["a", "b", "c"])


def test_outputs_are_plain_checkpoints_with_their_adapters(root):
    outputs = {
        "models/sft": ("gpt", "models/base"),
        "models/reward_model": ("scalar", "models/sft"),
        "models/dpo": ("gpt", "models/sft"),
        "models/ppo/actor": ("gpt", "models/sft"),
        "models/ppo/critic": ("scalar", "models/reward_model"),
    }
    for out, (arch, base) in outputs.items():
        load_model(root / out, arch=arch)  # what every downstream stage, evaluation and serving do
        meta = json.loads((root / out / "adapter" / "adapter.json").read_text())
        assert meta["base"]["path"] == base
        assert meta["base"]["sha256"] == file_hash(root / base / "model.safetensors")
        assert meta["lora"]["r"] == LORA["r"]
        assert read_config(root / out)["lora_adapter"] == "adapter"
    assert {"reward_mean", "reward_std"} <= set(read_config(root / "models/reward_model"))
    snapshots = sorted((root / "models/ppo/snapshots").iterdir())
    assert [s.name for s in snapshots] == ["iter_0000", "iter_0001", "iter_0002"]
    for snap in snapshots:
        load_model(snap, arch="gpt")  # merged, not a LoRA training state


def test_ppo_reference_is_sft_and_its_reward_is_the_reward_model(root):
    sft = load_model(root / "models/sft", arch="gpt").eval()
    actor = load_adapter(root / "models/ppo/actor/adapter", root / "models/sft").eval()
    merged = load_model(root / "models/ppo/actor", arch="gpt").eval()
    ro = rollout(sft.cfg.vocab_size)
    with torch.no_grad():
        want, _ = policy_forward(sft, ro, 1.0)
        ref, _ = policy_forward(AdapterOff(actor), ro, 1.0)
        trained, _ = policy_forward(actor, ro, 1.0)
        exported, _ = policy_forward(merged, ro, 1.0)
    torch.testing.assert_close(ref, want, rtol=1e-5, atol=1e-5)  # the SFT body stayed frozen through PPO
    assert (trained - want).abs().max() > 0  # PPO moved the adapter
    torch.testing.assert_close(exported, trained, rtol=1e-4, atol=1e-4)  # the merged export is the adapted actor

    rm = load_model(root / "models/reward_model", arch="scalar").eval()
    critic = load_adapter(root / "models/ppo/critic/adapter", root / "models/reward_model").eval()
    with torch.no_grad():
        reward = AdapterOff(critic).score(ro.ids, ro.attention_mask)
        torch.testing.assert_close(reward, rm.score(ro.ids, ro.attention_mask), rtol=1e-5, atol=1e-5)


def test_sft_adapter_on_its_base_is_the_exported_sft(root):
    sft = load_model(root / "models/sft", arch="gpt").eval()
    adapted = load_adapter(root / "models/sft/adapter", root / "models/base").eval()
    ro = rollout(sft.cfg.vocab_size, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(
            policy_forward(adapted, ro, 1.0)[0], policy_forward(sft, ro, 1.0)[0], rtol=1e-4, atol=1e-4
        )


def test_lora_with_a_critic_on_the_sft_body_fails_before_any_model_loads(tmp_path, monkeypatch):
    from tasks import ppo
    from tasks.common import ParamError

    params = yaml.safe_load(lora_params())
    params["ppo"]["critic_init"] = "sft"
    monkeypatch.setenv("RLHF_ROOT", str(tmp_path))  # an empty root: loading anything would fail otherwise
    monkeypatch.setenv("RLHF_TRACKING", "off")
    with pytest.raises(ParamError, match=r"ppo.critic_init 'sft' needs model.lora.r = 0"):
        ppo.run(params)


@pytest.mark.parametrize(
    ("lora", "message"),
    [
        ({"r": -1}, r"model.lora.r: must be >= 0"),
        ({"alpha": 0}, r"model.lora.alpha: must be > 0"),
        ({"target_modules": "c_attn"}, r"target_modules must be a list"),
        ({"rank": 4}, r"unknown key\(s\) \['rank'\]"),
    ],
)
def test_bad_lora_params_fail_while_configuring(lora, message):
    from tasks import dpo, ppo, reward_model, sft
    from tasks.common import ParamError, Params

    params = yaml.safe_load(lora_params())
    params["model"]["lora"] = {**LORA, **lora}
    for stage in (sft, reward_model, dpo, ppo):
        with pytest.raises(ParamError, match=message):
            stage.configure(Params(params))
