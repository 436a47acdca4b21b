"""The scenarios of tests/test_distributed.py: run by one process (the reference) or by every rank under torchrun.

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.ddp_worker OUT [SCENARIO ...]

Each rank runs every scenario with OUT/run<rank>/ as the only directory the code under test may write to, then
saves what it ended with (parameters, logged metrics, checks) as OUT/rank<rank>.safetensors and .json for the
test to compare. Tiny models (2 layers, width 32, vocabulary 64), a couple of steps each.

The `*_lora` scenarios are the same runs with LoRA adapters (rlhf.lora, r = 4) and gradient checkpointing on:
DDP then wraps a peft model whose base is frozen, PPO's reference is the actor with its adapter off and the
critic is an adapter + value head on the reward model's body, read with its adapter off for the reward.
"""

from __future__ import annotations

import copy
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import rlhf.lora
from rlhf import distributed, ppo
from rlhf.checkpoint import write_model
from rlhf.dpo import DPOConfig, batch_plan, train_dpo
from rlhf.lm_data import EpochSampler
from rlhf.lm_train import TrainConfig, train_lm
from rlhf.lora import LoRAConfig, set_gradient_checkpointing, trainee
from rlhf.model import GPT, GPTConfig, ScalarHeadModel
from rlhf.ppo_run import RunOptions, train_ppo
from rlhf.ppo_trainer import PPOConfig, PPOState, learn, make_state
from rlhf.reward import Pairs, RMConfig, prompt_groups, train_reward_model
from rlhf.rollout import Rollout, policy_forward, value_forward
from rlhf.tokenizer import train_tokenizer

CFG = GPTConfig(vocab_size=64, block_size=24, n_layer=2, n_head=2, n_embd=32)
LORA = LoRAConfig(r=4, alpha=8.0)
Result = tuple[dict[str, torch.Tensor], dict[str, Any]]


def _adapted(model: torch.nn.Module, lora: bool, name: str) -> torch.nn.Module:
    """`model` itself, or with a LoRA adapter `name` and gradient checkpointing (see _trained_a_little)."""
    return _trained_a_little(trainee(model, LORA, name, gradient_checkpointing=True)) if lora else model


def _trained_a_little(model: torch.nn.Module) -> torch.nn.Module:
    """B random rather than 0 (as if trained a little), so that A gets a gradient from the first step and every
    adapter tensor is compared."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _moved(before: dict[str, torch.Tensor], model: torch.nn.Module) -> float:
    """The smallest change of any trained tensor: a scenario whose adapters never moved would compare nothing."""
    after = dict(model.named_parameters())
    return min(float((after[n].detach() - p).abs().max()) for n, p in before.items())


def _sequences(n: int, seed: int, low: int = 6, high: int = 20) -> list[list[int]]:
    """n token lists of varied lengths (ids 3..63; 0 is padding), a pure function of the seed."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high, (n,), generator=g).tolist()
    return [torch.randint(3, CFG.vocab_size, (k,), generator=g).tolist() for k in lengths]


def _recorder() -> tuple[list, Callable[[dict[str, float], int], None]]:
    logged: list = []
    return logged, lambda metrics, step: logged.append([step, metrics])


def hf_gpt2() -> torch.nn.Module:
    """A GPT-2 of transformers' (rlhf.hf) with CFG's sizes, built from a config (nothing downloaded)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhf.hf import HFCausalLM, HFModelConfig

    c = CFG
    hf = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer)
    hf.n_head, hf.bos_token_id, hf.eos_token_id = c.n_head, 0, 0
    hf.resid_pdrop = hf.embd_pdrop = hf.attn_pdrop = 0.0
    return HFCausalLM(GPT2LMHeadModel(hf), HFModelConfig(c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd))


def sft_scenario(workdir: Path, lora: bool = False, hf: bool = False) -> Result:
    """Two SFT steps on batches of 4 whose rows have different numbers of target tokens; 3 held-out batches.
    `hf`: on the Hugging Face backend (LoRA on its c_attn, transformers' non-reentrant checkpointing)."""
    examples = _sequences(12, seed=1)
    n_prompt = [max(2, len(e) // 3) for e in examples]  # prompt tokens carry no loss: unequal token counts
    sampler = EpochSampler(examples, n_prompt, batch_size=4, seed=0, pad_id=0)
    held = EpochSampler(examples[:6], n_prompt[:6], batch_size=2, seed=0, pad_id=0).eval_batches()
    cfg = TrainConfig(steps=2, batch_size=4, lr=1e-3, warmup_steps=1, eval_every=1, checkpoint_every=1, seed=0)
    torch.manual_seed(0)
    model = _adapted(hf_gpt2() if hf else GPT(CFG), lora, "sft")
    before = _trainable(model)
    logged, log = _recorder()
    train_lm(model, sampler, held, cfg, workdir / "sft_state", log, name="sft")
    return model.state_dict(), {"logged": logged, "moved": _moved(before, model)}


def rm_scenario(workdir: Path) -> Result:
    """Two Bradley–Terry steps on 4 pairs each; 5 held-out pairs (split 2/3 over two ranks) scored every step.

    In float64: the loss is blind to a shift of every score, so the gradients of the head's bias and of the final
    LayerNorm's bias are exactly 0 in theory and rounding noise in practice. In fp32 that noise is ~1e-9, near
    AdamW's eps, and Adam's normalisation turns it into steps of the order of the learning rate whose sign depends
    on the order of the sums: one process and two disagree there by up to 1e-3 while every other weight agrees to
    1e-6. In float64 the noise is far below eps and the comparison is meaningful again.
    """
    seqs = _sequences(26, seed=2)
    train, val = Pairs(seqs[0:8], seqs[8:16]), Pairs(seqs[16:21], seqs[21:26])
    cfg = RMConfig(epochs=1, batch_size=4, lr=1e-2, warmup_steps=1, eval_every=1, patience=10, seed=0)
    torch.manual_seed(0)
    model = ScalarHeadModel(CFG).double()
    logged, log = _recorder()
    best = train_reward_model(model, train, val, cfg, pad_id=0, log=log)
    return model.state_dict(), {"logged": logged, "best": best}


def dpo_scenario(workdir: Path, lora: bool = False) -> Result:
    """Two DPO steps of whole prompts, 2 pairs at least (unequal lengths; the first three training pairs share
    one prompt, so the first step is those 3 pairs, split 1/2 over two ranks); 5 held-out pairs (split 2/3)
    evaluated every step; a reference unlike the policy, so the first step's loss is not log 2. With LoRA the
    reference is the policy's adapter off (tasks/dpo.py), unlike the policy as its adapter's B is not 0."""
    seqs = _sequences(26, seed=3)
    chosen, rejected = seqs[0:8] + seqs[16:21], seqs[8:16] + seqs[21:26]
    n_prompt = [max(2, min(len(c), len(r)) // 3) for c, r in zip(chosen, rejected, strict=True)]
    shared = [5, 6, 7]
    for i in range(3):
        chosen[i], rejected[i], n_prompt[i] = shared + chosen[i], shared + rejected[i], len(shared)
    train, val = Pairs(chosen[:8], rejected[:8], n_prompt[:8]), Pairs(chosen[8:], rejected[8:], n_prompt[8:])
    cfg = DPOConfig(
        steps=2, batch_size=2, lr=1e-2, warmup_steps=1, eval_every=1, patience=10, checkpoint_every=1, seed=1
    )
    assert [len(b) for b in batch_plan(prompt_groups(train), cfg)] == [3, 2], "the scenario's premise"
    torch.manual_seed(1)
    reference = GPT(CFG)
    torch.manual_seed(0)
    model = _adapted(GPT(CFG), lora, "dpo")
    reference = rlhf.lora.AdapterOff(model) if lora else reference
    before = _trainable(model)
    logged, log = _recorder()
    best = train_dpo(model, reference, train, val, cfg, pad_id=0, state_dir=workdir / "dpo_state", log=log)
    return model.state_dict(), {"logged": logged, "best": best, "moved": _moved(before, model)}


def fixed_rollout(actor: GPT, critic: ScalarHeadModel, B: int = 8, P: int = 5, N: int = 7) -> Rollout:
    """A rollout of B rows with left-padded prompts and responses of varied lengths, built without sampling."""
    g = torch.Generator().manual_seed(3)
    prompt_ids = torch.randint(3, CFG.vocab_size, (B, P), generator=g)
    prompt_mask = (torch.arange(P) >= torch.randint(0, 3, (B, 1), generator=g)).long()  # (B, P) left padding
    prompt_ids = torch.where(prompt_mask.bool(), prompt_ids, 0)
    lengths = torch.randint(1, N + 1, (B, 1), generator=g)
    mask = (torch.arange(N) < lengths).float()  # (B, N) responses of 1..N tokens
    responses = torch.where(mask.bool(), torch.randint(3, CFG.vocab_size, (B, N), generator=g), 0)
    ro = Rollout(prompt_ids, prompt_mask, responses, mask, [f"p{i}" for i in range(B)])
    with torch.no_grad():
        ro.logprobs, _ = policy_forward(actor, ro, 1.0)
        ro.values = value_forward(critic, ro)
    ro.returns = torch.randn(B, N, generator=g) * mask
    ro.advantages = ppo.masked_whiten(torch.randn(B, N, generator=g), mask)
    return ro


def ppo_models() -> tuple[GPT, ScalarHeadModel]:
    torch.manual_seed(0)
    actor = GPT(CFG)
    return actor, ScalarHeadModel.from_lm(actor)


def lora_ppo_models(actor: torch.nn.Module, rm: ScalarHeadModel, mean: float | None) -> tuple[torch.nn.Module, ...]:
    """rlhf.lora.ppo_models (actor, reference, critic, reward) as tasks/ppo.py builds them, with gradient
    checkpointing and the adapters' B random (see _adapted)."""
    actor, ref, critic, reward = rlhf.lora.ppo_models(actor, rm, LORA, mean, None if mean is None else 2.0)
    for model in (actor, critic):
        set_gradient_checkpointing(_trained_a_little(model), True)
    return actor, ref, critic, reward


PPO_CFG = PPOConfig(
    iterations=1, batch_size=8, mini_batches=1, ppo_epochs=2, lr=1e-3, critic_lr=1e-3, max_new_tokens=48, seed=0
)


def ppo_scenario(workdir: Path, lora: bool = False) -> Result:
    """Two PPO steps (2 epochs of one minibatch) on a fixed rollout of 8, each rank learning on its 8 / W rows.

    With LoRA, after learning: the reference (the actor's adapter off) must still be the untouched SFT model and
    the reward (the critic's adapter off) the untouched reward model, on every rank."""
    actor, critic = ppo_models()
    checks: dict[str, float] = {}
    if lora:
        sft, rm = copy.deepcopy(actor), copy.deepcopy(critic)
        actor, ref, critic, reward = lora_ppo_models(actor, critic, mean=0.3)
    ro = fixed_rollout(actor, critic)
    rows = torch.arange(len(ro.prompts))[distributed.shard_slice(len(ro.prompts))]
    state = make_state(actor, critic, PPO_CFG)
    before = _trainable(actor) | {f"critic.{k}": v for k, v in _trainable(critic).items()}
    stats = learn(state, ro.select(rows), PPO_CFG, lr_frac=1.0)
    if lora:
        with torch.inference_mode():
            ref_diff = (policy_forward(ref, ro, 1.0)[0] - policy_forward(sft, ro, 1.0)[0]).abs().max()
            rm_diff = (reward.score(ro.ids, ro.attention_mask) - rm.score(ro.ids, ro.attention_mask)).abs().max()
        moved = min(
            _moved({k: v for k, v in before.items() if not k.startswith("critic.")}, actor),
            _moved({k[7:]: v for k, v in before.items() if k.startswith("critic.")}, critic),
        )
        checks = {"ref_diff": float(ref_diff), "reward_diff": float(rm_diff), "moved": moved}
    params = {f"actor.{k}": v for k, v in actor.state_dict().items()}
    return params | {f"critic.{k}": v for k, v in critic.state_dict().items()}, {"stats": stats, **checks}


def global_stats_scenario(workdir: Path) -> Result:
    """Whitening, token mean and explained variance of each rank's rows against the single-process numbers."""
    g = torch.Generator().manual_seed(4)
    x, v = torch.randn(8, 7, generator=g), torch.randn(8, 7, generator=g)
    mask = (torch.arange(7) < torch.randint(1, 8, (8, 1), generator=g)).float()
    part, red = distributed.shard_slice(8), distributed.reducer()
    diff = (ppo.masked_whiten(x[part], mask[part], reduce=red) - ppo.masked_whiten(x, mask)[part]).abs().max()
    checks = {
        "whiten_max_diff": float(diff),
        "mean_diff": abs(float(ppo.masked_mean(x[part], mask[part], reduce=red) - ppo.masked_mean(x, mask))),
        "explained_var_diff": abs(
            ppo.explained_variance(v[part], x[part], mask[part], reduce=red) - ppo.explained_variance(v, x, mask)
        ),
    }
    return {}, checks


def ppo_loop_scenario(workdir: Path, lora: bool = False) -> Result:
    """Two full PPO iterations with sampling, adaptive KL, checkpoints and snapshots: who writes, who agrees.

    With LoRA the reference is the actor's adapter off, and a snapshot is the merged actor, as tasks/ppo.py
    writes it (a copy of the peft model that DDP wraps)."""
    words = ["yes", "no", "cat", "dog", "red", "blue", "one", "two"]
    tok = train_tokenizer([" ".join(words)] * 10 + [f"say {w}" for w in words], vocab_size=300)
    torch.manual_seed(0)
    actor = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32))
    critic, ref = ScalarHeadModel.from_lm(actor, head_std=0.0), copy.deepcopy(actor).eval()
    if lora:
        actor, ref, critic, _ = lora_ppo_models(actor, critic, mean=None)
    cfg = PPOConfig(
        iterations=2,
        batch_size=4,
        mini_batches=1,
        ppo_epochs=1,
        lr=5e-5,
        critic_lr=1e-4,
        max_new_tokens=4,
        adaptive_kl=True,
    )
    target = tok.encode("yes")[0]

    def score(ro: Rollout) -> torch.Tensor:  # how often the response says "yes"
        return ((ro.responses == target).float() * ro.mask).sum(1)

    def snapshot(state: PPOState) -> None:
        (workdir / "snapshots" / str(state.iteration)).mkdir(parents=True)
        if lora:
            write_model(workdir / "snapshots" / str(state.iteration), rlhf.lora.servable(state.actor), None, {})

    state = make_state(actor, critic, cfg)
    logged, log = _recorder()
    history = train_ppo(
        state,
        ref,
        score,
        tok,
        [f"say {w}" for w in words],
        cfg,
        log,
        RunOptions(
            workdir / "checkpoint",
            checkpoint_every=1,
            gold=lambda prompts, responses: [float(len(r)) for r in responses],
            on_snapshot=snapshot,
            snapshot_every=1,
        ),
    )
    params = {f"actor.{k}": v for k, v in actor.state_dict().items()}
    report = {"logged": logged, "history": history, "kl_coef": state.kl_ctl.value}
    return params | {f"critic.{k}": v for k, v in critic.state_dict().items()}, report


SCENARIOS: dict[str, Callable[[Path], Result]] = {
    "sft": sft_scenario,
    "rm": rm_scenario,
    "dpo": dpo_scenario,
    "ppo": ppo_scenario,
    "stats": global_stats_scenario,
    "ppo_loop": ppo_loop_scenario,
    "sft_lora": functools.partial(sft_scenario, lora=True),
    "sft_lora_hf": functools.partial(sft_scenario, lora=True, hf=True),
    "dpo_lora": functools.partial(dpo_scenario, lora=True),
    "ppo_lora": functools.partial(ppo_scenario, lora=True),
    "ppo_loop_lora": functools.partial(ppo_loop_scenario, lora=True),
}


def run_all(out: Path, names: list[str] | None = None) -> None:
    """Every scenario on this rank; results beside (never inside) the run directory."""
    rank = distributed.rank()
    run_dir = out / f"run{rank}"
    tensors: dict[str, torch.Tensor] = {}
    reports: dict[str, Any] = {}
    for name in names or list(SCENARIOS):
        params, report = SCENARIOS[name](run_dir / name)
        # cloned: a tied HF model shares wte and lm_head, which safetensors refuses to save twice
        tensors |= {f"{name}.{k}": t.detach().clone().contiguous() for k, t in params.items()}
        reports[name] = report
    save_file(tensors, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps(reports))


if __name__ == "__main__":
    torch.set_num_threads(1)
    distributed.init(torch.device("cpu"))
    try:
        run_all(Path(sys.argv[1]), sys.argv[2:] or None)  # optional scenario names: run only those
    finally:
        distributed.shutdown()
