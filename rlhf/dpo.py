"""Direct Preference Optimization (Rafailov et al. 2023): the policy learns from preference pairs directly, with
the reference model's log-probs in place of a reward model.

Shapes: B pairs, T tokens. A pair's sequence log-prob is summed over its response tokens only (prompt and padding
masked), from `rlhf.lm_data.sft_batch` (the SFT targets: IGNORE on prompt and padding) and
`rlhf.ppo.logprobs_from_logits`. With π the policy, π_ref the frozen reference (SFT),

    logits = (log π(y_c) − log π(y_r)) − (log π_ref(y_c) − log π_ref(y_r))
    sigmoid (DPO):  −(1−ε) log σ(β·logits) − ε log σ(−β·logits)      (ε: label smoothing, "conservative DPO")
    ipo:            (logits − 1/(2β))²

The implicit reward of a response is β (log π(y) − log π_ref(y)). The reference's log-probs are computed once
before training (`reference_logps`): the reference never runs again.

A step takes the pairs of whole prompts, as the reward model's do (`rlhf.reward.epoch_steps`), and scores each
distinct response once (`grouped_logps`): K ranked responses make up to K(K−1)/2 pairs but K rows of the pass.

Under torchrun (`rlhf.distributed`) each rank trains on its contiguous share of every step's pairs through DDP:
the loss is a mean over pairs, each rank's weighted by its share, so DDP's gradient average is the global batch's.
Held-out pairs are split across ranks and their sums reduced, so every rank takes the same early-stopping decision.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from rlhf import distributed
from rlhf.checkpoint import fingerprint, load_resumable, save_resumable
from rlhf.device import CPU, Runtime, model_device
from rlhf.lm_data import IGNORE, _generator, sft_batch
from rlhf.lm_train import LogFn, TrainConfig, lr_at, make_optimizer
from rlhf.model import GPT, disable_dropout
from rlhf.ppo import logprobs_from_logits
from rlhf.progress import Progress
from rlhf.reward import Pairs, distinct_sequences, epoch_steps, pair_wins, prompt_groups

LOSS_TYPES = ("sigmoid", "ipo")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, dict[str, float]]:
    """(B,) sequence log-probs of each side under the policy and the reference -> (mean loss, stats).

    stats: the mean implicit rewards of chosen and rejected (`chosen_reward`, `rejected_reward`), their mean
    difference (`margin`) and the share of pairs whose chosen reward is the higher (`accuracy`).
    For IPO pass length-normalised log-probs (mean per response token), as TRL does: IPO's target margin
    1/(2β) is a fixed number, and a summed log-prob grows with the response, so the same margin would mean a
    different strength of preference for a 5-token and a 50-token answer.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got '{loss_type}'")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    logits = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)  # (B,)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * logits) - label_smoothing * F.logsigmoid(-beta * logits)
    else:
        losses = (logits - 1 / (2 * beta)) ** 2
    chosen = (beta * (policy_chosen_logps - ref_chosen_logps)).detach()
    rejected = (beta * (policy_rejected_logps - ref_rejected_logps)).detach()
    stats = {
        "chosen_reward": float(chosen.mean()),
        "rejected_reward": float(rejected.mean()),
        "margin": float((chosen - rejected).mean()),
        "accuracy": float(pair_wins(chosen - rejected).mean()),  # ties ½, as the reward model's accuracy
    }
    return losses.mean(), stats


def response_logps(token_logps: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (B, T) and SFT-style targets (B, T) -> summed log-prob (B,) and response tokens (B,)
    over the positions whose target is not IGNORE (prompt and padding contribute nothing)."""
    keep = targets != IGNORE
    return (token_logps * keep).sum(1), keep.sum(1)


def sequence_logps(
    model: torch.nn.Module, seqs: list[list[int]], n_prompt: list[int], pad_id: int, average: bool = False
) -> torch.Tensor:
    """Summed (or, with `average`, per-token mean) response log-prob of each full sequence (B,), with gradients.

    `model` is a GPT, a DDP wrapper of one or a LoRA adapter-off view; rows are right-padded, which a causal model
    needs no mask for.
    """
    x, y = sft_batch(seqs, n_prompt, pad_id)
    device = model_device(model)  # the reference may be a LoRA policy's adapter-off view (rlhf.lora.AdapterOff)
    x, y = x.to(device), y.to(device)
    logits = model(x).float()  # (B, T, V)
    total, count = response_logps(logprobs_from_logits(logits, y.clamp(min=0)), y)
    return total / count.clamp(min=1) if average else total


@torch.no_grad()
def reference_logps(
    model: torch.nn.Module,
    pairs: Pairs,
    idx: list[int],
    pad_id: int,
    average: bool = False,
    batch_size: int = 128,
    runtime: Runtime = CPU,
    progress: str | None = None,
) -> torch.Tensor:
    """(N, 2) chosen/rejected log-probs of pairs `idx` (fp32, CPU): row k belongs to pair idx[k]. With a
    `progress` name, a progress line (rate, ETA) on the main process.

    Each distinct sequence is scored once, in batches of `batch_size` sequences of similar length: the K
    responses of a prompt make K(K-1)/2 pairs, so a pair-by-pair pass scored each response K-1 times (and padded
    every batch to its longest row). Another batch layout rounds differently, so the log-probs match a
    pair-by-pair pass to float tolerance, not bit for bit.
    """
    model.eval()
    seqs, at = distinct_sequences(pairs, idx)
    order = sorted(range(len(seqs)), key=lambda u: len(seqs[u][1]))  # batches of similar length: little padding
    flat = torch.zeros(len(seqs))
    shown = Progress(progress or "", len(seqs), unit="sequence", enabled=bool(progress) and distributed.is_main())
    for j in range(0, len(order), batch_size):
        chunk = order[j : j + batch_size]
        batch = [seqs[u] for u in chunk]
        with runtime.autocast():
            logps = sequence_logps(model, [list(s) for _, s in batch], [n for n, _ in batch], pad_id, average)
        flat[chunk] = logps.float().cpu()
        shown.update(len(chunk))
    return flat[at]


@torch.no_grad()
def evaluate_dpo(
    model: torch.nn.Module,
    pairs: Pairs,
    ref: torch.Tensor,
    beta: float,
    pad_id: int,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
    runtime: Runtime = CPU,
) -> dict[str, float]:
    """Held-out loss, accuracy and margin over all pairs (ref: their (N, 2) reference log-probs); under torchrun
    each rank scores a part and the sums are reduced."""
    part = distributed.split_slice(len(pairs)) if distributed.is_distributed() else slice(0, len(pairs))
    idx = list(range(len(pairs)))[part]
    pol = reference_logps(model, pairs, idx, pad_id, loss_type == "ipo", runtime=runtime)  # same pass, policy
    n = len(idx)
    if n:
        loss, st = dpo_loss(pol[:, 0], pol[:, 1], ref[part, 0], ref[part, 1], beta, label_smoothing, loss_type)
        sums = torch.tensor([float(loss) * n, st["accuracy"] * n, st["margin"] * n, n], dtype=torch.float64)
    else:
        sums = torch.zeros(4, dtype=torch.float64)
    if distributed.is_distributed():
        sums = distributed.all_reduce_sum(sums)
    loss_sum, correct, margin, total = sums.tolist()
    return {"loss": loss_sum / total, "accuracy": correct / total, "margin": margin / total}


# --- training ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DPOConfig:
    steps: int
    """optimizer steps at most (early stopping may end sooner)"""
    batch_size: int = 32
    """pairs per step at least: a step takes all pairs of whole prompts (rlhf.reward.epoch_steps)"""
    lr: float
    """peak learning rate"""
    warmup_steps: int = 10
    """linear warmup, then cosine decay to 0"""
    weight_decay: float = 0.0
    """AdamW decay on matrices"""
    grad_clip: float = 1.0
    """max gradient norm"""
    beta: float = 0.1
    """strength of the implicit KL leash to the reference"""
    label_smoothing: float = 0.0
    """assumed share of flipped labels (conservative DPO); sigmoid loss only"""
    loss_type: str = "sigmoid"
    """sigmoid (DPO) | ipo"""
    eval_every: int
    """steps between held-out evaluations"""
    patience: int
    """stop after this many evaluations without a better held-out loss; the best weights are kept"""
    checkpoint_every: int
    """steps between resumable training states (0: never)"""
    seed: int = 0
    """batch order"""

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"dpo.loss_type must be one of {LOSS_TYPES}, got '{self.loss_type}'")
        if self.beta <= 0 or not 0 <= self.label_smoothing < 0.5:
            raise ValueError(
                f"dpo: need beta > 0 and 0 <= label_smoothing < 0.5, got {self.beta} and {self.label_smoothing}"
            )
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ValueError("dpo.label_smoothing applies to the sigmoid loss only")


def batch_plan(groups: list[list[int]], cfg: DPOConfig) -> list[list[int]]:
    """The pairs of each of cfg.steps steps: whole prompts (`rlhf.reward.epoch_steps`, at least cfg.batch_size
    pairs), epochs shuffled by (seed, epoch); a pure function of its arguments, so a resumed run takes the same
    batches."""
    if not groups:
        raise ValueError("dpo: no training pairs to take steps of")
    plan: list[list[int]] = []
    epoch = 0
    while len(plan) < cfg.steps:
        plan += epoch_steps(groups, cfg.batch_size, _generator(cfg.seed, epoch))
        epoch += 1
    return plan[: cfg.steps]


def grouped_logps(
    model: torch.nn.Module, pairs: Pairs, idx: list[int], pad_id: int, average: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected log-probs (B,), (B,) of pairs `idx`, with gradients, each distinct sequence in one
    row of one forward pass: a step of whole prompts has K responses per prompt but up to K(K-1)/2 pairs."""
    seqs, at = distinct_sequences(pairs, idx)
    logps = sequence_logps(model, [list(s) for _, s in seqs], [n for n, _ in seqs], pad_id, average)  # (U,)
    at = at.to(logps.device)
    return logps[at[:, 0]], logps[at[:, 1]]


def train_dpo(
    model: GPT,
    reference: torch.nn.Module,
    train: Pairs,
    val: Pairs,
    cfg: DPOConfig,
    pad_id: int,
    state_dir: Path,
    log: LogFn,
    runtime: Runtime = CPU,
    stop_at: int | None = None,
    inputs: dict | None = None,
    start_over: Path | None = None,
) -> dict[str, float]:
    """Train `model` in place with early stopping on held-out loss; it ends with its best weights.
    A training state is resumed only if it was started from the same `cfg` and `inputs` (the stage's params and
    the hashes of what it read: rlhf.checkpoint.resumable_meta); otherwise ResumeRefused names what changed.

    The reference's log-probs of every pair the run will visit are computed first and kept: `reference` is not
    called again (a resumed run computes them again, the same numbers). A training state every
    `checkpoint_every` steps (and at `stop_at`, as an interruption would) restores weights, optimizer, RNG,
    the best weights so far and the early-stopping count.
    """
    distributed.shard_slice(cfg.batch_size)  # a batch that does not split evenly over the ranks is an error
    disable_dropout(model)  # the policy's log-probs must be the same function as the reference's (TRL does too)
    average = cfg.loss_type == "ipo"  # see dpo_loss: IPO on per-token means
    if len(train) < distributed.world_size():  # every rank needs a pair in every step (DDP's hooks)
        raise ValueError(f"dpo: {len(train)} training pairs for {distributed.world_size()} processes")
    plan = batch_plan(prompt_groups(train), cfg)
    visited = sorted({i for batch in plan for i in batch})
    ref_train = torch.full((len(train), 2), math.nan)
    every = [(train, visited), (val, list(range(len(val))))]
    ref_train[visited], ref_val = (
        reference_logps(reference, p, i, pad_id, average, runtime=runtime, progress="dpo reference") for p, i in every
    )
    schedule = TrainConfig(
        steps=cfg.steps,
        lr=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        checkpoint_every=cfg.checkpoint_every,
        min_lr_ratio=0.0,
    )
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    run = _RunState(best={"loss": math.inf}, best_state=copy.deepcopy(model.state_dict()))
    fp = fingerprint(cfg, inputs)
    start = _resume(model, opt, run, state_dir, fp, start_over or state_dir)
    distributed.check_agree(start, "the step dpo resumes from")
    net, device = distributed.wrap(model), next(model.parameters()).device
    progress = Progress("dpo", cfg.steps, unit="step", enabled=distributed.is_main())
    progress.done = start
    done, metrics = start, {"dpo/loss": math.nan}
    for step in range(start, cfg.steps):
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, schedule)
        batch = plan[step]
        idx = batch[distributed.split_slice(len(batch))]  # this rank's pairs of the step's batch
        with runtime.autocast():
            pc, pr = grouped_logps(net, train, idx, pad_id, average)
        ref = ref_train[idx].to(device)
        loss, st = dpo_loss(pc.float(), pr.float(), ref[:, 0], ref[:, 1], cfg.beta, cfg.label_smoothing, cfg.loss_type)
        # Shares differ by one pair at most; weighting each rank's mean by its share times W makes DDP's gradient
        # average (and the mean of the logged values over ranks) the whole batch's mean.
        weight = len(idx) * distributed.world_size() / len(batch)
        loss, st = loss * weight, {k: v * weight for k, v in st.items()}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        metrics = {"dpo/loss": loss.item(), "dpo/lr": lr_at(step, schedule)}
        metrics |= {f"dpo/train_{k}": v for k, v in st.items()}
        metrics = distributed.all_reduce_mean(metrics)  # weighted shares: the mean over ranks is the batch's
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            ev = evaluate_dpo(model, val, ref_val, cfg.beta, pad_id, cfg.label_smoothing, cfg.loss_type, runtime)
            metrics |= {f"dpo/val_{k}": v for k, v in ev.items()}
            run.record(ev, model)
        if distributed.is_main():
            log(metrics, done)
        progress.update(1, loss=metrics["dpo/loss"])
        if not math.isfinite(metrics["dpo/loss"]):
            raise FloatingPointError(f"dpo: loss became {metrics['dpo/loss']} at step {done}; no state was saved")
        if run.bad_evals >= cfg.patience:
            if distributed.is_main():
                print(f"[dpo] early stop at step {done}: no better held-out loss in {cfg.patience} evaluations")
            break
        checkpoint = cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == stop_at)
        if checkpoint and done < cfg.steps and distributed.is_main():
            _save_state(model, opt, run, state_dir, fp, done)
        if stop_at is not None and done >= stop_at:
            break
    model.load_state_dict(run.best_state)
    return {**run.best, "train_loss": metrics["dpo/loss"], "steps": done}


@dataclass
class _RunState:
    """Early stopping's memory: the best held-out metrics, their weights, evaluations since."""

    best: dict[str, float]
    best_state: dict[str, torch.Tensor]
    bad_evals: int = 0

    def record(self, ev: dict[str, float], model: torch.nn.Module) -> None:
        if ev["loss"] < self.best["loss"]:
            self.best, self.best_state, self.bad_evals = ev, copy.deepcopy(model.state_dict()), 0
        else:
            self.bad_evals += 1


def _save_state(model: GPT, opt: torch.optim.Optimizer, run: _RunState, state_dir: Path, fp: dict, step: int) -> None:
    meta = {"step": step, "inputs": fp, "best": run.best, "bad_evals": run.bad_evals}
    save_resumable(state_dir, {"": model}, {"opt": opt}, meta, {"best.safetensors": run.best_state})


def _resume(model: GPT, opt: torch.optim.Optimizer, run: _RunState, state_dir: Path, fp: dict, start_over: Path) -> int:
    """Restore everything _save_state wrote when state_dir holds a state of these very inputs; else step 0."""
    meta = load_resumable(state_dir, {"": model}, {"opt": opt}, fp, start_over)  # refuses a state of other inputs
    if meta is None:
        return 0
    device = next(model.parameters()).device
    run.best_state = {k: v.to(device) for k, v in load_file(str(state_dir / "best.safetensors")).items()}
    run.best, run.bad_evals = meta["best"], int(meta["bad_evals"])
    print(f"[dpo] resumed from {state_dir} at step {meta['step']}")
    return int(meta["step"])
