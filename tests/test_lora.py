"""LoRA adapters (rlhf.lora) on the built-in GPT and a tiny HF GPT-2 built from a config, and gradient checkpointing.

The reference is the actor with its adapter off and equals the untouched SFT model; only adapters and heads train
and the optimizer holds nothing else; adapter checkpoints round-trip, refuse another base, and merge into a plain
checkpoint with the same outputs; checkpointed blocks give the loss and gradients of stored ones; PPO with LoRA
raises a toy reward.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

from rlhf.checkpoint import load_model, save_model
from rlhf.lora import (
    AdapterBaseMismatch,
    AdapterOff,
    LoRAConfig,
    apply_lora,
    critic_on_reward_model,
    default_targets,
    export_merged,
    load_adapter,
    ppo_models,
    save_adapter,
    set_gradient_checkpointing,
)
from rlhf.model import GPT, GPTConfig, ScalarHeadModel
from rlhf.padding import right_pad
from rlhf.ppo_trainer import PPOConfig, make_state
from rlhf.rollout import Rollout, policy_forward

LORA = LoRAConfig(r=4, alpha=8.0)
VOCAB = 64


def builtin_lm() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=2, n_embd=32))


def hf_lm():
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhf.hf import HFCausalLM, HFModelConfig

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0
    return HFCausalLM(GPT2LMHeadModel(cfg).eval(), HFModelConfig(VOCAB, 32, 2, 2, 32))


BACKENDS = {"builtin": builtin_lm, "hf": hf_lm}


def train_adapter_a_little(model: torch.nn.Module, seed: int = 1) -> None:
    """Stand-in for training: random values in every trainable tensor (B = 0 at init would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def rollout(seed: int = 0) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, VOCAB, (3, 5), generator=g)
    pmask = torch.ones_like(prompt)
    pmask[0, :2] = 0  # a left-padded prompt, as rollouts have
    responses = torch.randint(3, VOCAB, (3, 6), generator=g)
    mask = torch.ones(3, 6)
    mask[1, 4:] = 0
    return Rollout(prompt, pmask, responses, mask, ["a", "b", "c"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_is_the_actor_with_its_adapter_off(backend):
    sft = BACKENDS[backend]()
    untouched = copy.deepcopy(sft)
    actor = apply_lora(sft, LORA)
    train_adapter_a_little(actor)
    ref = AdapterOff(actor)
    ro = rollout()
    with torch.no_grad():
        want, _ = policy_forward(untouched, ro, 0.7)
        got, _ = policy_forward(ref, ro, 0.7)
        trained, _ = policy_forward(actor, ro, 0.7)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert (trained - want).abs().max() > 1e-3  # the adapter is on outside the view
    assert list(ref.parameters()) == []  # no second copy of the weights
    ref.eval().requires_grad_(False)  # freezing the view leaves the trainee's adapter trainable
    assert any(p.requires_grad for p in actor.parameters())


def test_default_targets_per_architecture():
    assert default_targets(builtin_lm()) == ["c_attn", "c_proj", "mlp.0", "mlp.2"]
    assert default_targets(hf_lm()) == ["c_attn"]  # peft's GPT-2 default
    with pytest.raises(ValueError, match=r"model\.lora\.r must be >= 0"):
        LoRAConfig(r=-1)
    with pytest.raises(ValueError, match="list of module names"):
        LoRAConfig(r=4, target_modules="c_attn")
    assert not LoRAConfig().enabled and LoRAConfig(r=16).enabled


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_adapters_and_heads_train_and_the_optimizer_holds_only_them(backend):
    sft = BACKENDS[backend]()
    rm = ScalarHeadModel.from_lm(copy.deepcopy(sft))
    untouched_rm = copy.deepcopy(rm)
    actor, ref, critic, reward = ppo_models(sft, rm, LORA, mean=0.3, std=2.0)
    assert ref.peft_model is actor
    train_adapter_a_little(critic)
    trainable = {n for m in (actor, critic) for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save.critic" in n for n in trainable)
    assert sum("modules_to_save" in n for n in trainable) == 2  # the value head's weight and bias
    n_lora = sum(p.numel() for p in actor.parameters() if p.requires_grad)
    assert n_lora < 0.2 * sum(p.numel() for p in actor.parameters())
    cfg = PPOConfig(batch_size=4, mini_batches=2, lr=1e-4, critic_lr=3e-4, max_new_tokens=8)
    state = make_state(actor, critic, cfg)
    in_opt = {id(p) for g in state.optimizer.param_groups for p in g["params"]}
    want = {id(p) for m in (actor, critic) for p in m.parameters() if p.requires_grad}
    assert in_opt == want
    # one body: the reward is the critic's module with its adapter off (the original reward head included)
    ids, mask = torch.randint(3, VOCAB, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(reward.score(ids, mask), untouched_rm.score(ids, mask), rtol=1e-5, atol=1e-6)
        assert (critic.score(ids, mask) - reward.score(ids, mask)).abs().max() > 1e-3


def test_adapter_init_is_a_function_of_the_seed_alone():
    """A stage run by one process and by rank 0 under torchrun must draw the same adapter, whatever the global
    RNG went through before (models built, draws taken); and drawing it leaves the caller's random stream alone."""
    torch.manual_seed(123)
    first = apply_lora(builtin_lm(), LORA, seed=7)
    after = torch.rand(3)
    torch.manual_seed(123)
    torch.rand(1000)  # another history of the global generator
    second = apply_lora(builtin_lm(), LORA, seed=7)
    torch.manual_seed(123)
    other_seed = apply_lora(builtin_lm(), LORA, seed=8)
    torch.testing.assert_close(torch.rand(3), after)  # the stream resumes where apply_lora found it
    a = {n: p for n, p in first.named_parameters() if "lora_A" in n}
    b, c = dict(second.named_parameters()), dict(other_seed.named_parameters())
    assert a and all(torch.equal(p, b[n]) for n, p in a.items())
    assert all(not torch.equal(p, c[n]) for n, p in a.items())


def test_critic_starts_at_the_normalised_reward_or_zero():
    rm = ScalarHeadModel.from_lm(builtin_lm())
    untouched_rm = copy.deepcopy(rm)
    critic, _ = critic_on_reward_model(rm, LORA, mean=0.3, std=2.0)
    ids, mask = torch.randint(3, VOCAB, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    with torch.no_grad():
        want = (untouched_rm.score(ids, mask) - 0.3) / 2.0
        torch.testing.assert_close(critic.score(ids, mask), want, rtol=1e-5, atol=1e-6)
        judge_critic, _ = critic_on_reward_model(ScalarHeadModel.from_lm(builtin_lm()), LORA)
        assert judge_critic(ids).abs().max() == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_adapter_round_trip_wrong_base_and_merged_export(backend, tmp_path):
    base = BACKENDS[backend]()
    save_model(tmp_path / "sft", base)
    model = ScalarHeadModel.from_lm(base)  # a reward model trained from the SFT LM: adapter + head
    model = apply_lora(model, LORA, name="reward")
    train_adapter_a_little(model)
    save_adapter(tmp_path / "rm_adapter", model, tmp_path / "sft")
    ids, mask = torch.randint(3, VOCAB, (3, 9)), torch.ones(3, 9, dtype=torch.long)
    loaded = load_adapter(tmp_path / "rm_adapter", tmp_path / "sft")
    with torch.no_grad():
        want = model.score(ids, mask)
        torch.testing.assert_close(loaded.score(ids, mask), want, rtol=0, atol=0)
    # another base: refused, naming both
    other = BACKENDS[backend]()
    train_adapter_a_little(other.requires_grad_(True), seed=5)
    save_model(tmp_path / "other", other)
    with pytest.raises(AdapterBaseMismatch, match=r"trained on .*sft \(sha256 [0-9a-f]{12}…\), but the base given"):
        load_adapter(tmp_path / "rm_adapter", tmp_path / "other")
    # merged export: a plain checkpoint, same outputs up to float rounding
    export_merged(tmp_path / "rm_adapter", tmp_path / "rm_merged", tmp_path / "sft")
    merged = load_model(tmp_path / "rm_merged", "scalar")
    assert not any("lora" in k for k in merged.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(merged.score(ids, mask), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_loss_and_grads(backend, lora):
    import torch.nn.functional as F

    def loss_and_grads(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = BACKENDS[backend]()
        if lora:
            model = apply_lora(model, LORA)
            train_adapter_a_little(model)
        set_gradient_checkpointing(model, checkpointing).train()
        ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
        loss = F.cross_entropy(model(ids)[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    loss, grads = loss_and_grads(False)
    loss_ckpt, grads_ckpt = loss_and_grads(True)
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == grads_ckpt.keys() and all(g is not None for g in grads_ckpt.values())
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_checkpointing_recomputes_the_blocks(backend, monkeypatch):
    """The switch really takes the checkpoint path in training (and not under no_grad, nor once switched off), so
    the test above is not comparing a model with itself."""
    import torch.utils.checkpoint as ckpt
    import transformers.modeling_utils as mu

    calls = []
    real = ckpt.checkpoint
    counting = lambda *a, **k: calls.append(1) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(ckpt, "checkpoint", counting)
    monkeypatch.setattr(mu, "checkpoint", counting)  # what HF binds when checkpointing is enabled
    model = set_gradient_checkpointing(BACKENDS[backend](), True).train()
    ids = torch.randint(3, VOCAB, (1, 5))
    model(ids)
    assert len(calls) == model.cfg.n_layer
    if backend == "builtin":  # HF passes no-grad forwards through checkpoint too (which then saves nothing)
        with torch.no_grad():
            model(ids)
        assert len(calls) == model.cfg.n_layer
    set_gradient_checkpointing(model, False)
    model(ids)
    assert len(calls) == model.cfg.n_layer


def warm_started(tok, words: list[str], prompts: list[str]) -> GPT:
    """A tiny GPT after a few supervised steps on responses of random words ("yes" among them): adapters can only
    move a model whose logits mean something; an untrained tied head gives near-uniform logits that a low-rank
    update on the blocks cannot sharpen (full fine-tuning grows the embedding itself)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32))
    rng = random.Random(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        seqs = [
            tok.encode_prompt(p) + tok.encode_response(" ".join(rng.choice(words) for _ in range(3)))
            for p in rng.sample(prompts, 16)
        ]
        ids, mask = right_pad(seqs, tok.pad_id)
        logits = model(ids[:, :-1])  # (B, T-1, V)
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_ppo_with_lora_raises_a_toy_reward(tmp_path):
    from rlhf.ppo_run import RunOptions, train_ppo
    from rlhf.tokenizer import train_tokenizer
    from tests.test_ppo_trainer import PROMPTS, TOY_REWARD_CFG, WORDS, _score_fn

    tok = train_tokenizer([" ".join(WORDS)] * 10 + [f"say {w}" for w in WORDS], vocab_size=300)
    sft = warm_started(tok, WORDS, PROMPTS)
    critic_base = ScalarHeadModel.from_lm(copy.deepcopy(sft), head_std=0.0)
    actor = apply_lora(sft, LoRAConfig(r=8, alpha=16.0))
    critic = apply_lora(critic_base, LoRAConfig(r=8, alpha=16.0), name="critic")
    cfg = TOY_REWARD_CFG
    state = make_state(actor, critic, cfg)
    log = lambda m, s: None  # noqa: E731
    hist = train_ppo(state, AdapterOff(actor), _score_fn(tok), tok, PROMPTS, cfg, log, RunOptions(tmp_path, 0))
    assert hist[0]["ppo/policy/first_approxkl"] < 1e-10 and abs(hist[0]["objective/kl"]) < 1e-5
    first = sum(h["objective/rm_score"] for h in hist[:3]) / 3
    last = sum(h["objective/rm_score"] for h in hist[-5:]) / 5
    assert last > first + 0.15, (first, last)  # 0.0 -> 0.29 "yes" per response on an AMD EPYC
    assert hist[-1]["objective/kl"] > 0.01  # the reference stayed the SFT model while the actor moved


def test_ppo_with_lora_resumes_to_the_same_metrics(tmp_path):
    """A PPO checkpoint of LoRA models (a training state) resumes to the metrics of an uninterrupted run."""
    from rlhf.ppo_run import RunOptions, train_ppo
    from rlhf.tokenizer import train_tokenizer
    from tests.test_ppo_trainer import CFG, PROMPTS, WORDS, _score_fn

    tok = train_tokenizer([" ".join(WORDS)] * 10 + [f"say {w}" for w in WORDS], vocab_size=300)

    def run(name: str, stop_at: int | None = None) -> list[dict]:
        torch.manual_seed(0)
        sft = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32))
        critic = apply_lora(ScalarHeadModel.from_lm(copy.deepcopy(sft), head_std=0.0), LORA, name="critic")
        actor = apply_lora(sft, LORA)
        state = make_state(actor, critic, CFG)
        log = lambda m, s: None  # noqa: E731
        opts = RunOptions(tmp_path / name, checkpoint_every=2, stop_at=stop_at)
        return train_ppo(state, AdapterOff(actor), _score_fn(tok), tok, PROMPTS, CFG, log, opts)

    straight = run("a")
    run("b", stop_at=3)
    resumed = run("b")
    assert len(resumed) == len(straight) == CFG.iterations
    for a, b in zip(straight, resumed, strict=True):
        for key in ("objective/rm_score", "objective/kl", "ppo/policy/pg_loss", "ppo/val/vf_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
