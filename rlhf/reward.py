"""Reward-model training: the spec's Bradley–Terry loss on (prompt, chosen, rejected) pairs.

Shapes: B pairs, T tokens. Chosen and rejected sequences are scored in one forward pass of 2B rows, right-padded;
each score is read at the row's last real token (`ScalarHeadModel.score`), so padding never changes a score.
The loss is `-logsigmoid(r_chosen - r_rejected)`: the spec writes `-log(sigmoid(.))`, which underflows to -inf
once the margin is below about -88 in float32; logsigmoid is the same function computed stably.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhf.lm_train import TrainConfig as _Schedule
from rlhf.lm_train import lr_at, make_optimizer
from rlhf.model import ScalarHeadModel
from rlhf.progress import Progress
from rlhf.tokenizer import ChatTokenizer

LogFn = Callable[[dict[str, float], int], None]


@dataclass(frozen=True)
class RMConfig:
    epochs: int = 2
    """passes over the training pairs (early stopping may end sooner)"""
    batch_size: int = 32
    """pairs per step"""
    lr: float = 3e-4
    """peak learning rate"""
    warmup_steps: int = 20
    """linear warmup"""
    weight_decay: float = 0.0
    """AdamW decay on matrices"""
    grad_clip: float = 1.0
    """max gradient norm"""
    eval_every: int = 50
    """steps between held-out evaluations"""
    patience: int = 4
    """stop after this many evaluations without a better held-out loss; the best weights are kept"""
    seed: int = 0
    """batch order"""


@dataclass
class Pairs:
    """Tokenised pairs: chosen[i] and rejected[i] are full sequences (prompt + response + EOS)."""

    chosen: list[list[int]]
    rejected: list[list[int]]

    def __len__(self) -> int:
        return len(self.chosen)


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """(B,), (B,) -> mean of -log σ(r_chosen − r_rejected), computed stably."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def encode_pairs(
    tok: ChatTokenizer, prompts: list[str], chosen: list[str], rejected: list[str], block_size: int
) -> Pairs:
    """Texts -> token lists; sequences longer than the context are an error (the validation gate checks it)."""
    out = Pairs([], [])
    for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected, strict=True)):
        head = tok.encode_prompt(p)
        seq_c, seq_r = head + tok.encode_response(c), head + tok.encode_response(r)
        if max(len(seq_c), len(seq_r)) > block_size:
            raise ValueError(f"pair {i}: {max(len(seq_c), len(seq_r))} tokens exceed the context of {block_size}")
        out.chosen.append(seq_c)
        out.rejected.append(seq_r)
    return out


def pair_batch(chosen: list[list[int]], rejected: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B pairs -> ids (2B, T) and mask (2B, T), right-padded: rows 0..B-1 chosen, B..2B-1 rejected."""
    seqs = chosen + rejected
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def pair_scores(model: ScalarHeadModel, chosen, rejected, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass over both sides -> r_chosen (B,), r_rejected (B,)."""
    ids, mask = pair_batch(chosen, rejected, pad_id)
    scores = model.score(ids, mask)  # (2B,)
    return scores[: len(chosen)], scores[len(chosen) :]


@torch.no_grad()
def margins(model: ScalarHeadModel, pairs: Pairs, pad_id: int, batch_size: int = 128) -> torch.Tensor:
    """r_chosen − r_rejected for every pair (N,)."""
    model.eval()
    out = []
    for i in range(0, len(pairs), batch_size):
        rc, rr = pair_scores(model, pairs.chosen[i : i + batch_size], pairs.rejected[i : i + batch_size], pad_id)
        out.append(rc - rr)
    return torch.cat(out)


def evaluate_pairs(model: ScalarHeadModel, pairs: Pairs, pad_id: int) -> dict[str, float]:
    m = margins(model, pairs, pad_id)
    return {
        "loss": float(-F.logsigmoid(m).mean()),
        "accuracy": float((m > 0).float().mean()),
        "margin": float(m.mean()),
    }


def train_reward_model(
    model: ScalarHeadModel, train: Pairs, val: Pairs, cfg: RMConfig, pad_id: int, log: LogFn
) -> dict[str, float]:
    """Train in place with early stopping on held-out loss; the model ends with its best weights."""
    per_epoch = max(1, len(train) // cfg.batch_size)
    steps = per_epoch * cfg.epochs
    schedule = _Schedule(steps=steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps, min_lr_ratio=0.0)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    best = {"loss": math.inf}
    best_state, bad_evals = copy.deepcopy(model.state_dict()), 0
    progress = Progress("reward_model", steps, unit="step")
    for step in range(steps):
        if step % per_epoch == 0:
            order = torch.randperm(len(train), generator=g).tolist()
        idx = order[(step % per_epoch) * cfg.batch_size : (step % per_epoch + 1) * cfg.batch_size]
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, schedule)
        rc, rr = pair_scores(model, [train.chosen[i] for i in idx], [train.rejected[i] for i in idx], pad_id)
        loss = bt_loss(rc, rr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        metrics = {"rm/loss": loss.item(), "rm/train_accuracy": float((rc > rr).float().mean())}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == steps:
            ev = evaluate_pairs(model, val, pad_id)
            metrics |= {f"rm/val_{k}": v for k, v in ev.items()}
            if ev["loss"] < best["loss"]:
                best, best_state, bad_evals = ev, copy.deepcopy(model.state_dict()), 0
            else:
                bad_evals += 1
        log(metrics, step + 1)
        progress.update(1, loss=metrics["rm/loss"])
        if not math.isfinite(metrics["rm/loss"]):
            raise FloatingPointError(f"reward model: loss became {metrics['rm/loss']} at step {step + 1}")
        if bad_evals >= cfg.patience:
            print(f"[reward_model] early stop at step {step + 1}: no better held-out loss in {cfg.patience} evals")
            break
    model.load_state_dict(best_state)
    return {**best, "steps": step + 1}
