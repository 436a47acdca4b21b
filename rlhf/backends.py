"""The three interfaces every model backend implements: a causal LM, a scalar-head model, a chat tokenizer.

The built-in classes (rlhf.model.GPT, rlhf.model.ScalarHeadModel, rlhf.tokenizer.ChatTokenizer) and the Hugging Face
ones (rlhf.hf.HFCausalLM, HFScalarHeadModel, HFChatTokenizer) implement them; the core is written against these
names, so nothing asks an object what it is (no `hasattr`). One loader reads any checkpoint
(rlhf.checkpoint.load_model, by its config.json's "backend") and one any tokenizer (rlhf.tokenizer.ChatTokenizer.load,
by the files beside it). This module imports neither backend, so neither imports the other.

Shapes: B batch, T tokens, V vocabulary, C width (the project's legend: ARCHITECTURE.md, "Shapes").
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class CausalLM(Protocol):
    """A policy: next-token logits, a KV cache for sampling, brain surgery into a scalar-head model."""

    cfg: Any
    """`block_size`, `vocab_size`, `n_embd` at least"""

    def __call__(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        last: int = 0,
    ) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, V), or of the `last` positions only (B, last, V)."""
        ...

    def scalar_head(self, head_std: float | None = None) -> ScalarModel:
        """A copy of the body with a fresh scalar head (the reward model's and the critic's start)."""
        ...

    def checkpoint_config(self) -> dict[str, Any]:
        """What config.json must hold to rebuild this model (rlhf.checkpoint)."""
        ...

    def num_params(self) -> int: ...


@runtime_checkable
class ScalarModel(Protocol):
    """A reward model or a critic: one scalar per position, and the score at each row's last real token."""

    cfg: Any
    head: torch.nn.Linear

    def __call__(
        self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """idx (B, T) -> values (B, T)."""
        ...

    def score(self, idx: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """idx, attention_mask (B, T) -> (B,)."""
        ...

    def checkpoint_config(self) -> dict[str, Any]: ...

    def num_params(self) -> int: ...


class Tokenizer(ABC):
    """A tokenizer with the chat format policies are trained in: a prompt turn, a response ended by EOS."""

    pad_id: int
    eos_id: int

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Plain text -> ids (special-token strings inside the text become their special ids)."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, special tokens kept."""

    @abstractmethod
    def decode_plain(self, ids: list[int]) -> str:
        """Ids -> text, special tokens dropped."""

    @abstractmethod
    def encode_prompt(self, prompt: str) -> list[int]:
        """The tokens a policy is conditioned on: the user turn and the assistant header."""

    @abstractmethod
    def save(self, path: str | Path) -> None: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def control_strings(self) -> list[str]:
        """Every string this tokenizer encodes as a special token when it appears in text."""

    @abstractmethod
    def _vocab(self) -> Iterable[str]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_response(self, response: str) -> list[int]:
        return [*self.encode(response), self.eos_id]

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters one token can stand for: a byte-level token's string has one character per byte,
        and text has at most as many characters as bytes (a bound on a text's tokens without encoding it)."""
        return max(len(t) for t in self._vocab())

    def decode_response(self, ids: Iterable[int]) -> str:
        """Response ids -> text, stopping at the first EOS and dropping pads and any other control token (a
        sampled `<|user|>` would otherwise become text that the gate refuses and that re-encodes as a marker)."""
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            if i != self.pad_id:
                out.append(i)
        return self.decode_plain(out)
