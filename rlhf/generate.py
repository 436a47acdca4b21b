"""Batched sampling with a KV cache: temperature, top-k, top-p, per-row stop at EOS.

Shapes (the project's legend, ARCHITECTURE.md): B batch, P prompt tokens (left-padded), T response (new) tokens,
V vocabulary.

Prompts of different lengths share one batch by left padding: the attention mask hides the pads and position ids
follow the mask, so every row gets the log-probs it would get alone. The log-prob returned for each sampled token
is that of the temperature-scaled distribution *before* top-k/top-p filtering: it is what PPO recomputes in
training (`logits / temperature`, no filtering), so the two agree. With top-k/top-p on, sampling is from the
filtered distribution; PPO's default keeps them off so the samples follow the scored policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhf.model import GPT, KVCache
from rlhf.progress import Progress


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    max_new_tokens: int
    """longest response, in tokens"""
    temperature: float = 1.0
    """logits are divided by it; 0 means greedy"""
    top_k: int = 0
    """keep the k most likely tokens (0: off)"""
    top_p: float = 1.0
    """keep the smallest set of tokens whose probability reaches p (1.0: off)"""


@dataclass
class Generation:
    tokens: torch.Tensor
    """(B, T) sampled ids; pad after EOS"""
    mask: torch.Tensor
    """(B, T) 1.0 on response tokens up to and including EOS, 0.0 after"""
    logprobs: torch.Tensor
    """(B, T) log-prob of each sampled token under logits / temperature; 0 on padding"""


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> ids (B, P) left-padded with pad_id, mask (B, P) with 1 on real tokens."""
    P = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), P), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), P, dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, P - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, P - len(s) :] = 1
    return ids, mask


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """(B, V) logits with everything outside top-k / the top-p nucleus set to -inf."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # tokens after the nucleus is complete
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def generate(
    model: GPT,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    cfg: SamplingConfig,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator | None = None,
) -> Generation:
    """Sample up to cfg.max_new_tokens per row; each row stops at its first EOS (kept, masked 1).

    The decode loop is the hot path of RLHF on a CPU (bench/generate.py): one forward of B tokens per step with
    the KV cache, logits of the last position only, and no attention mask at all when no prompt is padded.
    """
    B, P = prompt_ids.shape
    T = cfg.max_new_tokens
    if model.cfg.block_size < P + T:
        raise ValueError(f"prompt of {P} tokens + {T} new tokens exceeds the context of {model.cfg.block_size}")
    param = next(model.parameters())
    device = param.device
    # A model with its own cache type (rlhf.hf: HF's DynamicCache) provides it; the built-in GPT uses KVCache.
    new_cache = getattr(model, "new_cache", None)
    cache = new_cache(B, P + T) if new_cache else KVCache(model.cfg, B, P + T, device, param.dtype)
    padded = not bool(prompt_mask.all())
    key_mask = torch.ones(B, P + T, dtype=torch.long, device=device)  # (B, S_max); new tokens are always real
    key_mask[:, :P] = prompt_mask
    tokens = torch.full((B, T), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(B, T, device=device)
    logprobs = torch.zeros(B, T, device=device)
    alive = torch.ones(B, dtype=torch.bool, device=device)
    positions = prompt_mask.sum(1, keepdim=True) if padded else None  # (B, 1) position of the first new token

    logits = model(prompt_ids, attention_mask=prompt_mask if padded else None, cache=cache, last=1)[:, 0]
    for t in range(T):
        next_tok, logp = _sample(logits, cfg, generator)  # (B,), (B,)
        tokens[:, t] = torch.where(alive, next_tok, pad_id)
        mask[:, t] = alive
        logprobs[:, t] = torch.where(alive, logp, 0.0)
        alive &= next_tok != eos_id
        if t == T - 1 or not alive.any():
            break
        step_mask = key_mask[:, : P + t + 1] if padded else None
        step_pos = positions + t if padded else None
        logits = model(tokens[:, t : t + 1], step_mask, step_pos, cache, last=1)[:, 0]  # (B, V)
    return Generation(tokens, mask, logprobs)


def _sample(
    logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V) logits -> sampled ids (B,) and their log-probs (B,) under logits / temperature.

    Sampling inverts the CDF with one uniform per row (torch.multinomial draws one exponential per vocabulary
    entry, which cost more than a whole decode step's attention at V = 512).
    """
    if cfg.temperature == 0:
        logp_all = F.log_softmax(logits.float(), dim=-1)
        tok = logits.argmax(-1)
    else:
        scaled = logits.float() / cfg.temperature
        logp_all = F.log_softmax(scaled, dim=-1)
        filtered = filter_logits(scaled, cfg.top_k, cfg.top_p)
        probs = logp_all.exp() if filtered is scaled else filtered.softmax(-1)  # (B, V)
        cdf = probs.cumsum(-1)  # (B, V)
        total = cdf[:, -1:]  # (B, 1), 1 up to rounding
        u = torch.rand(total.shape, device=cdf.device, generator=generator) * total  # (B, 1)
        u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # u < total even after rounding
        # right=True: the first index whose cumulative mass exceeds u, so a zero-probability token never wins
        tok = torch.searchsorted(cdf, u, right=True).squeeze(1)
    return tok, logp_all.gather(1, tok[:, None]).squeeze(1)


def generate_text(
    model: GPT,
    tokenizer,
    prompts: list[str],
    cfg: SamplingConfig,
    seed: int = 0,
    batch_size: int = 64,
    progress: str | None = None,
) -> list[str]:
    """Prompts -> decoded responses, in batches, reproducible for a seed. `progress` names progress lines (rate,
    ETA) on stderr; None (the default) for none."""
    model.eval()
    shown = Progress(progress or "", len(prompts), unit="responses", enabled=progress is not None)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        ids, mask = left_pad([tokenizer.encode_prompt(p) for p in prompts[i : i + batch_size]], tokenizer.pad_id)
        device = next(model.parameters()).device
        g = generate(model, ids.to(device), mask.to(device), cfg, tokenizer.eos_id, tokenizer.pad_id, gen)
        out.extend(tokenizer.decode_response(row.tolist()) for row in g.tokens)
        shown.update(len(g.tokens))
    return out
