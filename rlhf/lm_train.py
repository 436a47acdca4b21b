"""The language-model training loop shared by base pretraining and SFT.

AdamW (decay on matrices only), linear warmup then cosine decay, gradient clipping, held-out loss, progress with
rate and ETA, and resumable checkpoints: a training state saved every `checkpoint_every` steps restores optimizer,
RNG and step, and batches are a pure function of the step, so a resumed run ends with the same weights as an
uninterrupted one.

Under torchrun (`rlhf.distributed`) each rank trains on its contiguous share of every step's batch through DDP,
with the loss weighted by the rank's share of the batch's target tokens, so W processes take the step one
process takes on the whole batch; held-out batches are split across ranks and their losses summed; only rank 0
logs and writes training states.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rlhf import distributed
from rlhf.checkpoint import fingerprint, load_resumable, save_resumable
from rlhf.device import CPU, Runtime
from rlhf.lm_data import IGNORE, Batch
from rlhf.model import GPT
from rlhf.progress import Progress

LogFn = Callable[[dict[str, float], int], None]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    steps: int
    """optimizer steps"""
    batch_size: int = 32
    """sequences per step"""
    lr: float
    """peak learning rate"""
    min_lr_ratio: float = 0.1
    """the cosine decays to lr * min_lr_ratio"""
    warmup_steps: int
    """linear warmup from 0 to lr"""
    weight_decay: float = 0.1
    """AdamW decay, applied to matrices only (not biases, LayerNorms)"""
    grad_clip: float = 1.0
    """max global gradient norm (0: off)"""
    eval_every: int = 100
    """steps between held-out evaluations"""
    checkpoint_every: int
    """steps between resumable training states (0: never)"""
    seed: int = 0
    """seeds initialisation and batch order"""


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine to cfg.lr * min_lr_ratio at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel over all tensors instead of a dozen foreach passes (5x faster on CPU at our sizes)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)


def lm_loss(model: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over targets that are not IGNORE."""
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)


@torch.no_grad()
def evaluate_loss(model: GPT, batches: list[Batch], runtime: Runtime = CPU) -> float:
    """Token-weighted mean loss over fixed held-out batches (each rank takes a part; the sums are reduced)."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for x, y in batches[distributed.split_slice(len(batches))]:
        n = int((y != IGNORE).sum())
        with runtime.autocast():
            total += float(lm_loss(model, x.to(device), y.to(device))) * n
        count += n
    model.train()
    if distributed.is_distributed():
        total, count = distributed.all_reduce_sum(torch.tensor([total, count], dtype=torch.float64)).tolist()
    return total / max(count, 1)


def train_lm(
    model: GPT,
    sample: Callable[[int], Batch],
    eval_batches: list[Batch],
    cfg: TrainConfig,
    state_dir: Path,
    log: LogFn,
    name: str = "train",
    stop_at: int | None = None,
    runtime: Runtime = CPU,
    inputs: dict | None = None,
    start_over: Path | None = None,
) -> dict[str, float]:
    """Train `model` (on its device) in place for cfg.steps, resuming from state_dir if it holds a state of this run.

    `sample(step)` gives the global batch of a step; under torchrun each rank trains on its shard of it.
    `stop_at` ends the run early after that step (with a training state written), as an interruption would;
    the test of resume equivalence uses it. `inputs` (params, hashes of the model and data trained from) join
    cfg in the fingerprint a training state must match to be resumed (rlhf.checkpoint.resumable_meta); a refusal
    names `start_over` (default state_dir) as the directory to delete.
    Returns the final metrics (the same on every rank).
    """
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    fp = fingerprint(cfg, inputs)
    start = _maybe_resume(model, opt, state_dir, fp, name, start_over or state_dir)
    distributed.check_agree(start, f"the step {name} resumes from")
    net = distributed.wrap(model)  # DDP under torchrun, `model` itself in one process
    device = next(model.parameters()).device
    progress = Progress(name, cfg.steps, unit="step", enabled=distributed.is_main())
    progress.done = start
    model.train()
    metrics: dict[str, float] = {}
    t0, tokens = time.perf_counter(), 0
    for step in range(start, cfg.steps):
        # 1. learning rate of this step, 2. this rank's share of the step's batch, 3. forward/backward, 4. clip, step
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = (distributed.shard(t).to(device) for t in sample(step))
        loss, grad_norm = _step(net, model, opt, x, y, cfg.grad_clip, runtime)
        tokens += int((y != IGNORE).sum())
        metrics = {f"{name}/loss": loss, f"{name}/lr": lr_at(step, cfg), f"{name}/grad_norm": grad_norm}
        metrics = distributed.all_reduce_mean(metrics)  # the loss becomes the global batch's token mean
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            metrics[f"{name}/val_loss"] = evaluate_loss(model, eval_batches, runtime)
            all_tokens = float(distributed.all_reduce_sum(torch.tensor(tokens, dtype=torch.float64)))
            metrics[f"{name}/tokens_per_s"] = all_tokens / (time.perf_counter() - t0)
        if distributed.is_main():
            log(metrics, done)
        loss_value = metrics[f"{name}/loss"]
        progress.update(1, loss=loss_value)
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"{name}: loss became {loss_value} at step {done}; no state was saved")
        checkpoint = cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == stop_at)
        if checkpoint and done < cfg.steps and distributed.is_main():
            _save_state(model, opt, state_dir, fp, done)
        if stop_at is not None and done >= stop_at:
            break
    return metrics


def _step(
    net: torch.nn.Module,
    model: GPT,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    grad_clip: float,
    runtime: Runtime,
) -> tuple[float, float]:
    """One optimizer step on this rank's inputs and targets (B, T); returns (loss × share, gradient norm).

    The loss is weighted by the rank's share of the batch's target tokens, so DDP's average of the ranks'
    gradients is the gradient of the mean over all of them (1 in one process: the plain token mean).
    """
    share = distributed.token_share(int((y != IGNORE).sum()))
    with runtime.autocast():
        loss = lm_loss(net, x, y)
    opt.zero_grad(set_to_none=True)
    (loss * share).backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    opt.step()
    return loss.item() * share, grad_norm.item()


def _save_state(model: GPT, opt: torch.optim.Optimizer, state_dir: Path, inputs: dict, step: int) -> None:
    save_resumable(state_dir, {"": model}, {"opt": opt}, {"step": step, "inputs": inputs})


def _maybe_resume(
    model: GPT, opt: torch.optim.Optimizer, state_dir: Path, inputs: dict, name: str, start_over: Path
) -> int:
    """Restore model, optimizer and RNG from state_dir when it holds a state started from these inputs."""
    meta = load_resumable(state_dir, {"": model}, {"opt": opt}, inputs, start_over)
    if meta is None:
        return 0
    print(f"[{name}] resumed from {state_dir} at step {meta['step']}")
    return int(meta["step"])
