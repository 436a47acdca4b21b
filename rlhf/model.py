"""A nanoGPT-style GPT and its scalar-head variant (the reward model and the critic).

Shape legend, used in every comment of the project:
    B batch, T time (tokens in this forward pass), S total key length (cache + T), C width (n_embd),
    nh heads, hs head size (C // nh), V vocabulary, L layers.

The body (`Transformer`: token embeddings, pre-LN blocks with rotary positions, final LayerNorm) is shared by the
two heads. Positions are rotary (RoPE, Su et al. 2021; GPT-NeoX's rotate-half layout) rather than nanoGPT's learned
table: attention then sees relative offsets directly, so "copy the name the user gave" and "restate the word asked
about" are learnt within the few minutes of CPU training the default world gets (with a learned table the
pretrained model answered about another entity than asked; see ARCHITECTURE.md).
`GPT` ties its LM head to the token embedding; `ScalarHeadModel` is the spec's "brain surgery": the same body with
a Linear(C, 1) head, read at the last non-pad token (the spec's `x[:, -1]` is wrong on a right-padded batch).

Padding: without an attention mask the model is plainly causal, which is exact for right-padded batches (a valid
token never looks at a later pad). With a mask (1 = real token) pads are hidden from every query and position ids
follow the mask, so a left-padded prompt gives each row the same result as running it alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from rlhf.backends import CausalLM, ScalarModel
from rlhf.padding import has_left_pad, last_token_index


@dataclass(frozen=True, kw_only=True)
class GPTConfig:
    vocab_size: int = 2048
    """tokens in the vocabulary (the tokenizer's size)"""
    block_size: int = 128
    """longest sequence the model reads (prompt + response)"""
    n_layer: int = 4
    """transformer blocks"""
    n_head: int
    """attention heads per block"""
    n_embd: int
    """residual stream width"""
    dropout: float = 0.0
    """dropout in training; RLHF stages run with 0 (dropout breaks ratio == 1 at PPO's first step)"""

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")


class KVCache:
    """Preallocated keys and values for incremental decoding: two (L, B, nh, S_max, hs) buffers."""

    def __init__(self, cfg: GPTConfig, batch: int, max_len: int, device: torch.device, dtype: torch.dtype):
        shape = (cfg.n_layer, batch, cfg.n_head, max_len, cfg.n_embd // cfg.n_head)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled so far


Rope = tuple[torch.Tensor, torch.Tensor]
"""cos and sin of each position's rotation angles, each (B or 1, 1, T, hs)."""


def rope_tables(position_ids: torch.Tensor, head_size: int, base: float = 10000.0) -> Rope:
    """Position ids (B or 1, T) -> the rotary tables; keys are cached already rotated by their position."""
    inv_freq = base ** -(torch.arange(0, head_size, 2, device=position_ids.device, dtype=torch.float32) / head_size)
    angles = position_ids[..., None].float() * inv_freq  # (B, T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, T, hs)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate the pairs (i, i + hs/2) of x (B, nh, T, hs) by their position's angles."""
    cos, sin = (t.to(x.dtype) for t in rope)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # fused q, k, v
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None, layer: int, rope: Rope):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = rotate(q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2), rope)  # (B, nh, T, hs)
        k = rotate(k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2), rope)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            start = cache.length
            cache.k[layer, :, :, start : start + T] = k
            cache.v[layer, :, :, start : start + T] = v
            k = cache.k[layer, :, :, : start + T]  # (B, nh, S, hs)
            v = cache.v[layer, :, :, : start + T]  # (B, nh, S, hs)
        # Without a mask, T > 1 queries are plainly causal (SDPA's fused path) and a single decoding query sees
        # every cached key: the Transformer only leaves the mask out when that is exact.
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None and T > 1,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(), nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None, layer: int, rope: Rope):
        x = x + self.drop(self.attn(self.ln_1(x), mask, cache, layer, rope))
        return x + self.drop(self.mlp(self.ln_2(x)))


def attention_bias(key_mask: torch.Tensor, q_len: int) -> torch.Tensor:
    """Boolean (B, 1, T, S) mask: query i (the last T of S positions) sees key j if j ≤ i and key j is real.

    A query always sees itself, so a pad query has one finite row instead of NaNs (its output is never used).
    """
    _B, S = key_mask.shape
    if q_len == 1:  # one decoding query: causality is implied, only the key mask matters (the hot path)
        allowed = key_mask.bool().clone()
        allowed[:, -1] = True
        return allowed[:, None, None, :]  # (B, 1, 1, S)
    q_pos = torch.arange(S - q_len, S, device=key_mask.device)  # (T,)
    k_pos = torch.arange(S, device=key_mask.device)  # (S,)
    causal = k_pos[None, :] <= q_pos[:, None]  # (T, S)
    allowed = causal[None] & key_mask[:, None, :].bool()  # (B, T, S)
    allowed = allowed | (k_pos[None, :] == q_pos[:, None])[None]
    return allowed[:, None]  # (B, 1, T, S)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding: (B, S) mask -> (B, S) positions (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def default_positions(idx: torch.Tensor, attention_mask: torch.Tensor | None, past: int) -> torch.Tensor:
    """Position ids of idx (B, T) after `past` cached positions: the mask's running count (B, T), so left padding
    does not shift them, or past..past+T-1 (1, T) without a mask."""
    if attention_mask is not None:
        return positions_from_mask(attention_mask)[:, past:]
    return torch.arange(past, past + idx.shape[1], device=idx.device)[None]


def check_context(length: int, block_size: int) -> None:
    """The error for a sequence longer than the model's context (the built-in GPT and the HF adapters alike)."""
    if length > block_size:
        raise ValueError(f"sequence of {length} tokens exceeds the context of {block_size}")


class Transformer(nn.Module):
    """The body shared by every head: embeddings, blocks, final LayerNorm."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        # runtime.gradient_checkpointing (set by rlhf.lora.set_gradient_checkpointing): recompute each block's
        # activations in backward instead of storing them; a runtime switch, so not part of GPTConfig's checkpoint.
        self.gradient_checkpointing = False

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """idx (B, T) -> hidden states (B, T, C).

        attention_mask (B, S) covers the cached positions and these T (S = cache length + T); position_ids (B, T)
        default to the mask's running count, or to 0..T-1 (after the cache) without a mask.
        """
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        check_context(past + T, self.cfg.block_size)
        if position_ids is None:
            position_ids = default_positions(idx, attention_mask, past)
        mask = None
        if attention_mask is not None:
            mask = attention_bias(attention_mask, T)
        elif past > 0 and T > 1:  # several queries after a cached prefix: causal with an offset
            mask = attention_bias(torch.ones(B, past + T, dtype=torch.bool, device=idx.device), T)
        rope = rope_tables(position_ids, self.cfg.n_embd // self.cfg.n_head)
        x = self.drop(self.wte(idx))  # (B, T, C)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for layer, block in enumerate(self.h):
            if recompute:
                x = torch.utils.checkpoint.checkpoint(block, x, mask, None, layer, rope, use_reentrant=False)
            else:
                x = block(x, mask, cache, layer, rope)
        if cache is not None:
            cache.length = past + T
        return self.ln_f(x)


def _init_weights(module: nn.Module, n_layer: int) -> None:
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            # GPT-2's init; residual projections scaled by 1/sqrt(2L) so the stream's variance stays put.
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") or ".mlp.2." in name else 0.02
            nn.init.normal_(p, mean=0.0, std=std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


class GPT(nn.Module):
    """The language model: body + LM head tied to the token embedding."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = Transformer(cfg)
        _init_weights(self, cfg.n_layer)

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last: int = 0,
    ) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, V), or of the `last` positions only (B, last, V): sampling needs one,
        PPO the response's; the LM head is then not computed where nobody reads it."""
        x = self.transformer(idx, attention_mask, position_ids, cache)  # (B, T, C)
        if last:
            x = x[:, -last:]  # (B, last, C)
        return F.linear(x, self.transformer.wte.weight)  # (B, T, V)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def scalar_head(self, head_std: float | None = None) -> ScalarHeadModel:
        """Brain surgery: a copy of this body with a fresh scalar head."""
        model = ScalarHeadModel(self.cfg, head_std)
        model.transformer.load_state_dict(self.transformer.state_dict())
        return model

    def checkpoint_config(self) -> dict[str, Any]:
        """config.json of a checkpoint of this model (rlhf.checkpoint)."""
        return {"arch": "gpt", "model": asdict(self.cfg)}


def scalar_head(n_embd: int, head_std: float | None = None) -> nn.Linear:
    """A fresh Linear(C, 1) head (init_scalar_head)."""
    head = nn.Linear(n_embd, 1)
    init_scalar_head(head, head_std)
    return head


def init_scalar_head(head: nn.Linear, head_std: float | None = None) -> None:
    """Reward head N(0, 1/sqrt(C+1)) as in lm-human-preferences, zero bias; a critic passes 0 for a zero head."""
    std = 1 / math.sqrt(head.in_features + 1) if head_std is None else head_std
    nn.init.normal_(head.weight, std=std) if std > 0 else nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)


class ScalarHeadModel(nn.Module):
    """Body + Linear(C, 1): the reward model and the critic (the spec's "brain surgery")."""

    def __init__(self, cfg: GPTConfig, head_std: float | None = None):
        super().__init__()
        self.cfg = cfg
        self.transformer = Transformer(cfg)
        self.head = nn.Linear(cfg.n_embd, 1)
        _init_weights(self, cfg.n_layer)
        init_scalar_head(self.head, head_std)

    @staticmethod
    def from_lm(lm: CausalLM, head_std: float | None = None) -> ScalarModel:
        """Brain surgery: keep the LM's body, drop its LM head, add a fresh scalar head (each backend's own)."""
        return lm.scalar_head(head_std)

    def checkpoint_config(self) -> dict[str, Any]:
        return {"arch": "scalar", "model": asdict(self.cfg)}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """idx (B, T) -> one scalar per position (B, T) (the critic's values)."""
        return self.head(self.transformer(idx, attention_mask, position_ids)).squeeze(-1)

    def score(self, idx: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """idx, attention_mask (B, T) -> (B,) the scalar at each row's last real token (left or right padded)."""
        values = self(idx, attention_mask if has_left_pad(attention_mask) else None)  # (B, T)
        return values.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)


def disable_dropout(model: nn.Module) -> nn.Module:
    """Zero every dropout of `model` in place (its nn.Dropout modules and the attention's own rate) and return it.

    PPO and DPO run without dropout whatever the checkpoint says: with dropout the rollout's log-probs (eval mode)
    and the first minibatch's (train mode) differ, so the ratio is not 1 at the first step (TRL's
    `disable_dropout`). Works on the built-in GPT and on Hugging Face modules alike."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        elif isinstance(m, CausalSelfAttention):
            m.dropout = 0.0
    return model


def normalise_head(model: nn.Module, mean: float, std: float) -> nn.Module:
    """Fold (v − mean) / std into a scalar head in place: w ← w / std, b ← (b − mean) / std, and return the model.

    A critic copied from the reward model then starts in the units of PPO's normalised reward: its value at the
    last token is the normalised score instead of a raw one a whole `mean` away (ScalarHeadModel or HF's)."""
    with torch.no_grad():
        model.head.weight.div_(std)
        model.head.bias.sub_(mean).div_(std)
    return model
