"""Evaluation of policies: samples, judge scores, KL from the reference, and head-to-head win-rates.

A policy is sampled on evaluation prompts (n samples per prompt, the same decoding for every policy), each sample
is judged, and two policies are compared sample by sample: win = 1, tie = ½, loss = 0, with a bootstrap CI that
resamples prompts (rlhf.stats.win_rate). KL of a policy from the reference is measured on its own samples:
the sum over response tokens of log π(y_t) − log π_ref(y_t), averaged over responses (the k1 estimate of
KL(π || π_ref) per response). Both sides are read at the sampling temperature, so it is a KL estimate of the two
*tempered* policies; the quantity PPO's penalty controls is the one at temperature 1 (PPO's rollouts), which
evaluation measures on samples of its own at temperature 1 (`tasks/evaluate.py`). Greedy decoding gives no KL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from rlhf.generate import SamplingConfig
from rlhf.judges import Judge
from rlhf.model import GPT
from rlhf.progress import Progress
from rlhf.rollout import policy_forward, sample_rollout
from rlhf.stats import win_rate
from rlhf.tokenizer import ChatTokenizer


@dataclass
class PolicySamples:
    """n samples per prompt of one policy, flattened: row i answers prompts[i]."""

    prompts: list[str]
    prompt_ids: list[str]
    responses: list[str]
    lengths: np.ndarray  # (M,) response tokens
    kl: np.ndarray | None = None  # (M,) per-response KL from the reference
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # judge name -> (M,)


@torch.no_grad()
def sample_policy(
    model: GPT,
    tok: ChatTokenizer,
    prompts: list[str],
    prompt_ids: list[str],
    sampling: SamplingConfig,
    n_samples: int,
    seed: int,
    ref: GPT | None = None,
    batch_size: int = 128,
    progress: str | None = "sampling",
) -> PolicySamples:
    """Sample n_samples responses per prompt (seeded); with `ref` and a temperature above 0, also each response's
    KL from it at that temperature (a greedy policy has no log-probs to estimate a KL with). `progress` names the
    progress lines (rate, ETA) on stderr; None for none."""
    flat = [p for p in prompts for _ in range(n_samples)]
    flat_ids = [i for i in prompt_ids for _ in range(n_samples)]
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)  # sampling draws on its device
    texts: list[str] = []
    lengths, kls = [], []
    model.eval()
    shown = Progress(progress or "", len(flat), unit="responses", enabled=progress is not None)
    for start in range(0, len(flat), batch_size):
        ro = sample_rollout(model, tok, flat[start : start + batch_size], sampling, gen)
        texts += ro.texts(tok)
        lengths.append(ro.mask.sum(1).cpu())
        if ref is not None and sampling.temperature > 0:
            logp, _ = policy_forward(model, ro, sampling.temperature)
            ref_logp, _ = policy_forward(ref, ro, sampling.temperature)
            kls.append(((logp - ref_logp) * ro.mask).sum(1).cpu())
        shown.update(len(flat[start : start + batch_size]))
    return PolicySamples(
        flat,
        flat_ids,
        texts,
        torch.cat(lengths).numpy(),
        torch.cat(kls).numpy() if kls else None,
    )


def judge_samples(samples: PolicySamples, judges: dict[str, Judge], batch_size: int = 256) -> None:
    """Fill samples.scores[name] for every judge (in batches, so a remote judge sees bounded requests). A user's
    judge comes checked from rlhf.judges.load_judge: one finite score per pair, or an error naming it."""
    for name, judge in judges.items():
        out: list[float] = []
        for i in range(0, len(samples.prompts), batch_size):
            out += [float(s) for s in judge(samples.prompts[i : i + batch_size], samples.responses[i : i + batch_size])]
        samples.scores[name] = np.asarray(out, dtype=float)


def compare(
    cand: PolicySamples,
    base: PolicySamples,
    judge: str,
    families: dict[str, str] | None,
    n_boot: int,
    seed: int,
) -> dict:
    """Win-rate of cand over base under one judge, overall and per prompt family (when families are known)."""
    result = win_rate(cand.scores[judge], base.scores[judge], cand.prompt_ids, n_boot=n_boot, seed=seed)
    if families:
        fam = np.array([families.get(i, "unknown") for i in cand.prompt_ids])
        result["by_family"] = {
            f: win_rate(
                cand.scores[judge][fam == f],
                base.scores[judge][fam == f],
                [i for i, keep in zip(cand.prompt_ids, fam == f, strict=True) if keep],
                n_boot=n_boot,
                seed=seed,
            )
            for f in sorted(set(fam))
        }
    return result
