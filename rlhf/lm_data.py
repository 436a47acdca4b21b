"""Batches for language-model training: random windows of a corpus (pretraining) and prompt/response pairs (SFT).

Every batch is a pure function of (seed, step), so a resumed run sees exactly the batches an uninterrupted run
would have seen. Targets use -100 (cross-entropy's ignore index) wherever no loss is wanted: on SFT prompt tokens
and on padding. Shapes: B batch, T tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhf.tokenizer import ChatTokenizer

IGNORE = -100
Batch = tuple[torch.Tensor, torch.Tensor]  # inputs (B, T), targets (B, T)


def _generator(seed: int, *salt: int) -> torch.Generator:
    # Distinct, reproducible streams for each (seed, epoch / step) without touching the global RNG.
    return torch.Generator().manual_seed(hash((seed, *salt)) & 0x7FFF_FFFF_FFFF)


def encode_documents(tokenizer: ChatTokenizer, docs: list[str]) -> torch.Tensor:
    """Documents -> one stream of ids with EOS after each document (1-D long tensor)."""
    out: list[int] = []
    for ids in tokenizer.encode_batch(docs):
        out.extend(ids)
        out.append(tokenizer.eos_id)
    return torch.tensor(out, dtype=torch.long)


@dataclass
class WindowSampler:
    """Random windows of block_size + 1 tokens from a stream (nanoGPT's get_batch, made step-addressable)."""

    stream: torch.Tensor
    block_size: int
    batch_size: int
    seed: int

    def __post_init__(self) -> None:
        if len(self.stream) <= self.block_size + 1:
            raise ValueError(f"corpus of {len(self.stream)} tokens is shorter than one window of {self.block_size}")

    def __call__(self, step: int) -> Batch:
        g = _generator(self.seed, step)
        starts = torch.randint(len(self.stream) - self.block_size - 1, (self.batch_size,), generator=g)
        idx = starts[:, None] + torch.arange(self.block_size + 1)  # (B, T + 1)
        chunk = self.stream[idx]
        return chunk[:, :-1], chunk[:, 1:]


def sft_example(tokenizer: ChatTokenizer, prompt: str, response: str, block_size: int, where: str) -> list[int]:
    """One demonstration -> ids; the prompt length is recoverable as the index of <|assistant|> + 1."""
    ids = tokenizer.encode_prompt(prompt) + tokenizer.encode_response(response)
    if len(ids) > block_size:
        raise ValueError(
            f"{where}: prompt + response is {len(ids)} tokens, longer than the context of {block_size} "
            "(rule: sequences must fit the model's block_size; shorten the row or raise model.block_size)"
        )
    return ids


def sft_batch(examples: list[list[int]], n_prompt: list[int], pad_id: int) -> Batch:
    """Right-padded inputs and targets with the loss on response tokens only."""
    T = max(len(e) for e in examples) - 1
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for i, (ids, p) in enumerate(zip(examples, n_prompt, strict=True)):
        ids_t = torch.tensor(ids, dtype=torch.long)
        x[i, : len(ids) - 1] = ids_t[:-1]
        y[i, : len(ids) - 1] = ids_t[1:]
        y[i, : p - 1] = IGNORE  # targets that are prompt tokens: no loss, no gradient
    return x, y


@dataclass
class EpochSampler:
    """Shuffled passes over a list of SFT examples; the permutation of each epoch is seeded by (seed, epoch)."""

    examples: list[list[int]]
    n_prompt: list[int]
    batch_size: int
    seed: int
    pad_id: int

    def __post_init__(self) -> None:
        if not self.examples:
            raise ValueError("no training examples")
        self.per_epoch = max(1, len(self.examples) // self.batch_size)

    def __call__(self, step: int) -> Batch:
        epoch, k = divmod(step, self.per_epoch)
        perm = torch.randperm(len(self.examples), generator=_generator(self.seed, epoch))
        idx = perm[k * self.batch_size : (k + 1) * self.batch_size].tolist()
        return sft_batch([self.examples[i] for i in idx], [self.n_prompt[i] for i in idx], self.pad_id)

    def eval_batches(self) -> list[Batch]:
        """The whole list in fixed order (used for held-out examples)."""
        return [
            sft_batch(self.examples[i : i + self.batch_size], self.n_prompt[i : i + self.batch_size], self.pad_id)
            for i in range(0, len(self.examples), self.batch_size)
        ]


def fixed_batches(sample: Callable[[int], Batch], n: int, offset: int = 10**9) -> list[Batch]:
    """n batches drawn at steps far from training's (a fixed held-out set for window samplers)."""
    return [sample(offset + i) for i in range(n)]
