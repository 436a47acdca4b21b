"""Reward-model training: the spec's Bradley–Terry loss on (prompt, chosen, rejected) pairs.

Shapes: B pairs, T tokens. Chosen and rejected sequences are scored in one forward pass of 2B rows, right-padded;
each score is read at the row's last real token (`ScalarHeadModel.score`), so padding never changes a score.
The loss is `-logsigmoid(r_chosen - r_rejected)`: the spec writes `-log(sigmoid(.))`, which underflows to -inf
once the margin is below about -88 in float32; logsigmoid is the same function computed stably.

Under torchrun (`rlhf.distributed`) each rank scores its contiguous share of every step's pairs through DDP: the
loss is a mean over pairs and the shares are equal, so DDP's gradient average is the global batch's gradient.
Held-out pairs are split across ranks and their sums reduced, so every rank takes the same early-stopping
decision; only rank 0 logs.
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F

from rlhf import distributed
from rlhf.device import CPU, Runtime
from rlhf.lm_train import TrainConfig as _Schedule
from rlhf.lm_train import lr_at, make_optimizer
from rlhf.model import ScalarHeadModel
from rlhf.padding import last_token_index, right_pad
from rlhf.progress import Progress
from rlhf.tokenizer import ChatTokenizer

LogFn = Callable[[dict[str, float], int], None]


@dataclass(frozen=True, kw_only=True)
class RMConfig:
    epochs: int = 2
    """passes over the training pairs (early stopping may end sooner)"""
    batch_size: int = 32
    """pairs per step (a step takes whole prompts: at least this many)"""
    lr: float
    """peak learning rate"""
    warmup_steps: int = 20
    """linear warmup"""
    weight_decay: float = 0.0
    """AdamW decay on matrices"""
    grad_clip: float = 1.0
    """max gradient norm"""
    eval_every: int
    """steps between held-out evaluations"""
    patience: int
    """stop after this many evaluations without a better held-out loss; the best weights are kept"""
    seed: int = 0
    """batch order"""


@dataclass
class Pairs:
    """Tokenised pairs: chosen[i] and rejected[i] are full sequences (prompt + response + EOS); n_prompt[i] is the
    length of their shared prompt (filled by encode_pairs; DPO masks those tokens)."""

    chosen: list[list[int]]
    rejected: list[list[int]]
    n_prompt: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.chosen)


def pair_nll(m: torch.Tensor) -> torch.Tensor:
    """Margins r_chosen − r_rejected (B,) -> each pair's -log σ(m) (B,), computed stably."""
    return -F.logsigmoid(m)


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """(B,), (B,) -> mean of -log σ(r_chosen − r_rejected), computed stably."""
    return pair_nll(r_chosen - r_rejected).mean()


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
        out.n_prompt.append(len(head))
    return out


def encode_frame(tok: ChatTokenizer, df: pd.DataFrame, block_size: int) -> Pairs:
    """Rows of a pairs table (prompt, chosen, rejected) -> tokenised pairs."""
    return encode_pairs(tok, df["prompt"].tolist(), df["chosen"].tolist(), df["rejected"].tolist(), block_size)


def split(df: pd.DataFrame, val_frac: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held-out) rows of a pairs table by a stable hash of the prompt: no prompt on both sides, and the
    reward model and DPO hold out the very same prompts."""
    held = df["prompt"].map(lambda p: zlib.crc32(p.encode()) % 10_000 < val_frac * 10_000)
    return df[~held].reset_index(drop=True), df[held].reset_index(drop=True)


def pair_wins(m: torch.Tensor) -> torch.Tensor:
    """Margins r_chosen − r_rejected (N,) -> 1 for a correct order, ½ for a tie, 0 otherwise (N,): the count of
    `rlhf.stats.pairwise_accuracy`, so training, validation and the final metric agree."""
    return (m > 0).float() + 0.5 * (m == 0).float()


def sequence_scores(model: torch.nn.Module, seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    """One forward pass -> the score of each sequence (N,).

    `model` is a ScalarHeadModel or a DDP wrapper of one. It is called through its forward (what DDP hooks), then
    read at each row's last real token: `ScalarHeadModel.score` for right-padded rows, which need no attention mask.
    """
    ids, mask = right_pad(seqs, pad_id)
    device = next(model.parameters()).device
    values = model(ids.to(device))  # (N, T)
    return values.gather(1, last_token_index(mask.to(device))[:, None]).squeeze(1)  # (N,)


def distinct_sequences(pairs: Pairs, idx: list[int]) -> tuple[list[tuple[int, tuple[int, ...]]], torch.Tensor]:
    """The distinct sequences of pairs `idx`, as (prompt length, tokens) in first-seen order (U,), and each pair's
    rows of its chosen and rejected sequence among them (B, 2): a prompt's K responses make up to K(K−1)/2 pairs
    but K rows of a forward pass."""
    rows: dict[tuple[int, tuple[int, ...]], int] = {}
    at = []
    for i in idx:
        n = pairs.n_prompt[i] if pairs.n_prompt else 0
        at.append([rows.setdefault((n, tuple(seq)), len(rows)) for seq in (pairs.chosen[i], pairs.rejected[i])])
    return list(rows), torch.tensor(at, dtype=torch.long).reshape(-1, 2)


def grouped_margins(model: torch.nn.Module, pairs: Pairs, idx: list[int], pad_id: int) -> torch.Tensor:
    """r_chosen − r_rejected of the pairs idx (B,), each distinct sequence scored once (`distinct_sequences`)."""
    seqs, at = distinct_sequences(pairs, idx)
    scores = sequence_scores(model, [list(s) for _, s in seqs], pad_id)  # (U,)
    at = at.to(scores.device)
    return scores[at[:, 0]] - scores[at[:, 1]]


def prompt_groups(pairs: Pairs) -> list[list[int]]:
    """Pair indices grouped by their shared prompt tokens, in first-seen order (a pair without n_prompt is its
    own group)."""
    groups: dict[object, list[int]] = {}
    for i, seq in enumerate(pairs.chosen):
        key = tuple(seq[: pairs.n_prompt[i]]) if pairs.n_prompt else i
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def epoch_steps(groups: list[list[int]], batch_size: int, g: torch.Generator) -> list[list[int]]:
    """One epoch's steps: prompts in random order, each step the pairs of whole prompts, at least batch_size.

    InstructGPT (Ouyang et al. 2022, sec. 3.5) trains on all K-choose-2 comparisons of a prompt as one batch
    element: shuffled as independent pairs, each response recurs in K−1 steps of an epoch and the model overfits
    within one epoch; together, each response is scored once per epoch. Pairs keep equal weight (the loss is their
    mean, the spec's average over D_prefs), where InstructGPT weighs prompts equally (1/C(K,2) each): with a
    borrowed response and dropped duplicates a prompt has 6 to 10 pairs here. The remainder joins the last step, so
    every step has at least batch_size pairs (and at least one per process under torchrun).
    """
    steps: list[list[int]] = []
    step: list[int] = []
    for j in torch.randperm(len(groups), generator=g).tolist():
        step += groups[j]
        if len(step) >= batch_size:
            steps.append(step)
            step = []
    if step:
        if steps:
            steps[-1] += step
        else:
            steps.append(step)
    return steps


@torch.no_grad()
def margins(
    model: ScalarHeadModel, pairs: Pairs, pad_id: int, batch_size: int = 128, runtime: Runtime = CPU
) -> torch.Tensor:
    """r_chosen − r_rejected for every pair (N,), fp32 on the CPU; a response shared by pairs of one chunk is
    scored once."""
    model.eval()
    out = [torch.zeros(0)]  # a rank's share of the held-out pairs may be empty
    for i in range(0, len(pairs), batch_size):
        with runtime.autocast():
            m = grouped_margins(model, pairs, list(range(i, min(i + batch_size, len(pairs)))), pad_id)
        out.append(m.float().cpu())
    return torch.cat(out)


def evaluate_pairs(model: ScalarHeadModel, pairs: Pairs, pad_id: int, runtime: Runtime = CPU) -> dict[str, float]:
    """Held-out loss, accuracy and mean margin; under torchrun each rank scores a part and the sums are reduced."""
    if distributed.is_distributed():
        part = distributed.split_slice(len(pairs))
        m = margins(model, Pairs(pairs.chosen[part], pairs.rejected[part]), pad_id, runtime=runtime)
        sums = torch.stack([pair_nll(m).sum(), pair_wins(m).sum(), m.sum(), torch.tensor(len(m))])
        loss, correct, margin, n = distributed.all_reduce_sum(sums.double()).tolist()
        return {"loss": loss / n, "accuracy": correct / n, "margin": margin / n}
    m = margins(model, pairs, pad_id, runtime=runtime)
    return {
        "loss": float(pair_nll(m).mean()),
        "accuracy": float(pair_wins(m).mean()),
        "margin": float(m.mean()),
    }


def train_reward_model(
    model: ScalarHeadModel,
    train: Pairs,
    val: Pairs,
    cfg: RMConfig,
    pad_id: int,
    log: LogFn,
    runtime: Runtime = CPU,
) -> dict[str, float]:
    """Train in place (on the model's device) with early stopping on held-out loss; the model ends with its best
    weights. A step is the pairs of whole prompts (`epoch_steps`, at least cfg.batch_size pairs); under torchrun
    each rank trains on its share of every step's pairs."""
    distributed.shard_slice(cfg.batch_size)  # a batch that does not split evenly over the ranks is an error
    if len(train) < distributed.world_size():  # every rank needs a pair in every step (DDP's hooks)
        raise ValueError(f"reward model: {len(train)} training pairs for {distributed.world_size()} processes")
    net = distributed.wrap(model)
    g = torch.Generator().manual_seed(cfg.seed)
    groups = prompt_groups(train)
    plan = [step for _ in range(cfg.epochs) for step in epoch_steps(groups, cfg.batch_size, g)]
    steps = len(plan)
    schedule = _Schedule(steps=steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps, checkpoint_every=0, min_lr_ratio=0.0)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    best = {"loss": math.inf}
    best_state, bad_evals = copy.deepcopy(model.state_dict()), 0
    progress = Progress("reward_model", steps, unit="step", enabled=distributed.is_main())
    for step, batch in enumerate(plan):
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, schedule)
        idx = batch[distributed.split_slice(len(batch))]  # this rank's pairs of the step's batch
        with runtime.autocast():
            m = grouped_margins(net, train, idx, pad_id).float()
        # Shares differ by one pair at most; weighting each rank's sum by W/N makes DDP's gradient average (and the
        # mean of the logged values over ranks) the whole batch's mean.
        weight = distributed.world_size() / len(batch)
        loss = pair_nll(m).sum() * weight
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        metrics = {"rm/loss": loss.item(), "rm/train_accuracy": float(pair_wins(m).sum()) * weight}
        metrics = distributed.all_reduce_mean(metrics)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == steps:
            ev = evaluate_pairs(model, val, pad_id, runtime)
            metrics |= {f"rm/val_{k}": v for k, v in ev.items()}
            if ev["loss"] < best["loss"]:
                best, best_state, bad_evals = ev, copy.deepcopy(model.state_dict()), 0
            else:
                bad_evals += 1
        if distributed.is_main():
            log(metrics, step + 1)
        progress.update(1, loss=metrics["rm/loss"])
        if not math.isfinite(metrics["rm/loss"]):
            raise FloatingPointError(f"reward model: loss became {metrics['rm/loss']} at step {step + 1}")
        if bad_evals >= cfg.patience:
            if distributed.is_main():
                print(f"[reward_model] early stop at step {step + 1}: no better held-out loss in {cfg.patience} evals")
            break
    model.load_state_dict(best_state)
    return {**best, "steps": step + 1}
