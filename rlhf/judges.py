"""Judges: anything that scores (prompt, response) pairs, loaded by import path or built from a reward model.

A judge is a callable `(prompts: list[str], responses: list[str]) -> list[float]`, one score per pair, higher is
better. Evaluation compares models with one; PPO may use one as its reward source instead of the trained reward
model. A user's judge (say, a function calling an external LLM) is named by import path, `"package.module:function"`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from rlhf.device import model_device
from rlhf.model import ScalarHeadModel
from rlhf.padding import right_pad
from rlhf.tokenizer import ChatTokenizer

Judge = Callable[[list[str], list[str]], list[float]]


def import_callable(spec: str) -> Callable:
    """ "module:function" -> the function, checked to be callable (a ValueError naming what is wrong)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"judge '{spec}': expected an import path 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"judge '{spec}': cannot import module '{module_name}': {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"judge '{spec}': '{module_name}' has no callable '{attr}'")
    return fn


def load_judge(spec: str) -> Judge:
    """ "module:function" -> the judge, whose every answer is checked to be one finite float per pair."""
    fn = import_callable(spec)

    def checked(prompts: list[str], responses: list[str]) -> list[float]:
        # a user's judge is checked on every answer, here once, so no caller checks again
        return check_scores(spec, fn(prompts, responses), len(prompts))

    return checked


def check_scores(spec: str, scores: list[float], n: int) -> list[float]:
    """A judge's answer must be one finite number per pair."""
    out = [float(s) for s in scores]
    if len(out) != n:
        raise ValueError(f"judge '{spec}' returned {len(out)} scores for {n} pairs")
    if not all(torch.isfinite(torch.tensor(out))):
        raise ValueError(f"judge '{spec}' returned a non-finite score")
    return out


def pack_pairs(
    tokenizer: ChatTokenizer, prompts: list[str], responses: list[str], block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt, response) texts -> right-padded ids (B, T) and mask (B, T); over-long responses are cut at the
    context (documented truncation: the score is then read at the last token that fits)."""
    seqs = [
        (tokenizer.encode_prompt(p) + tokenizer.encode_response(r))[:block_size]
        for p, r in zip(prompts, responses, strict=True)
    ]
    return right_pad(seqs, tokenizer.pad_id)


class RewardModelJudge:
    """A trained reward model as a judge (raw scores, or normalised by the mean/std saved with it)."""

    def __init__(self, model: ScalarHeadModel, tokenizer: ChatTokenizer, mean: float = 0.0, std: float = 1.0):
        self.model, self.tokenizer, self.mean, self.std = model.eval(), tokenizer, mean, std

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str], batch_size: int = 128) -> list[float]:
        out: list[float] = []
        for i in range(0, len(prompts), batch_size):
            ids, mask = pack_pairs(
                self.tokenizer,
                prompts[i : i + batch_size],
                responses[i : i + batch_size],
                self.model.cfg.block_size,
            )
            device = model_device(self.model)  # a reward model read with the critic's adapter off has no weights
            out += ((self.model.score(ids.to(device), mask.to(device)).float() - self.mean) / self.std).tolist()
        return out
