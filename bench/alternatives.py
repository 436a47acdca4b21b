"""The speed-ups tried for #8 and not adopted, each measured against what the project does (bench/RESULTS.md).

    python bench/alternatives.py [--compile]

On the peer's shape (4 layers, width 256, 4 heads, vocab 512), fp32 unless said otherwise:
1. decode forward: the model's modules vs a functional step (no nn.Module, no masks, weights bound once, bias
   fused into addmm), 64 rows, prompt 32 + 63 decode steps; and the cost of sampling;
2. one decoding query over a cache slice: SDPA vs batched matmuls vs an element-wise product and sum;
3. 64-row linears: torch's addmm vs MKL's prepacked weights (`torch.ops.mkl._mkl_linear`, a private op);
4. bf16 on this CPU (AMX): the 1024³ matmul and a training step under autocast vs fp32;
5. with --compile: `torch.compile` (inductor, freezing, C++ wrapper, dynamic shapes) of the forward in generate
   (about a minute of compilation).
Prints one line per measurement; nothing is written.
"""

from __future__ import annotations

import argparse
import functools

import torch
import torch.nn.functional as F
from common import PEER_SHAPE, seconds_per_call, set_threads

from rlhf.generate import SamplingConfig, _sample, generate
from rlhf.lm_train import lm_loss, make_optimizer
from rlhf.model import GPT, KVCache, rope_tables, rotate

B, P, N = 64, 32, 64
C, NH = PEER_SHAPE.n_embd, PEER_SHAPE.n_head
HS = C // NH


def ms(fn, runs: int = 7) -> float:
    """Median milliseconds of single calls (fn is a whole loop)."""
    return 1e3 * seconds_per_call(fn, target_s=0.0, runs=runs)


def us(fn) -> float:
    """Microseconds per call of a small kernel."""
    return 1e6 * seconds_per_call(fn, warmup=20)


def functional_step(model: GPT, tok: torch.Tensor, pos: int, cache: KVCache) -> torch.Tensor:
    """One decode step of `model` without its modules: tok (B,) at position `pos` -> logits (B, V)."""
    tr = model.transformer
    x = tr.wte.weight[tok]  # (B, C)
    rope = rope_tables(torch.tensor([[pos]]), HS)  # (1, 1, 1, hs) each
    t = cache.length
    for i, blk in enumerate(tr.h):
        h = F.layer_norm(x, (C,), blk.ln_1.weight, blk.ln_1.bias)
        q, k, v = torch.addmm(blk.attn.c_attn.bias, h, blk.attn.c_attn.weight.t()).view(B, 3, NH, HS).unbind(1)
        q, k = (rotate(z[:, :, None], rope)[:, :, 0] for z in (q, k))  # (B, nh, hs)
        cache.k[i, :, :, t] = k
        cache.v[i, :, :, t] = v
        y = F.scaled_dot_product_attention(q[:, :, None], cache.k[i, :, :, : t + 1], cache.v[i, :, :, : t + 1])
        x = torch.addmm(blk.attn.c_proj.bias, y.view(B, C), blk.attn.c_proj.weight.t()).add_(x)
        h = F.layer_norm(x, (C,), blk.ln_2.weight, blk.ln_2.bias)
        h = F.gelu(torch.addmm(blk.mlp[0].bias, h, blk.mlp[0].weight.t()))
        x = torch.addmm(blk.mlp[2].bias, h, blk.mlp[2].weight.t()).add_(x)
    cache.length = t + 1
    return F.linear(F.layer_norm(x, (C,), tr.ln_f.weight, tr.ln_f.bias), tr.wte.weight)


@torch.inference_mode()
def decode_forward(model: GPT, prompt: torch.Tensor) -> None:
    def loop(step) -> None:
        cache = KVCache(PEER_SHAPE, B, P + N, torch.device("cpu"), torch.float32)
        model(prompt, cache=cache, last=1)
        tok = torch.randint(4, PEER_SHAPE.vocab_size, (B,))
        for t in range(N - 1):
            step(tok, P + t, cache)

    modules = ms(lambda: loop(lambda tok, pos, cache: model(tok[:, None], None, None, cache, last=1)))
    functional = ms(lambda: loop(lambda tok, pos, cache: functional_step(model, tok, pos, cache)))
    logits, g = torch.randn(B, PEER_SHAPE.vocab_size), torch.Generator()
    cfg = SamplingConfig(max_new_tokens=N, temperature=1.0)
    sampling = ms(lambda: [_sample(logits, cfg, g) for _ in range(N)])
    print(
        f"1. decode forward per step: modules {modules / N:.2f} ms, functional {functional / N:.2f} ms; "
        f"sampling {sampling / N:.3f} ms"
    )


def attention_matmuls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.matmul(torch.matmul(q, k.transpose(-1, -2)).mul_(HS**-0.5).softmax(-1), v)


def attention_elementwise(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return ((k * q).sum(-1, keepdim=True).mul_(HS**-0.5).softmax(-2) * v).sum(-2, keepdim=True)


@torch.inference_mode()
def decode_attention() -> None:
    k_cache, v_cache, q = torch.randn(B, NH, P + N, HS), torch.randn(B, NH, P + N, HS), torch.randn(B, NH, 1, HS)
    for s in (32, 64, 96):
        qkv = (q, k_cache[:, :, :s], v_cache[:, :, :s])
        t = {
            f.__name__: us(functools.partial(f, *qkv))
            for f in (F.scaled_dot_product_attention, attention_matmuls, attention_elementwise)
        }
        print(
            f"2. one query over {s} cached positions, per layer: SDPA {t['scaled_dot_product_attention']:.0f} µs, "
            f"matmuls {t['attention_matmuls']:.0f} µs, element-wise {t['attention_elementwise']:.0f} µs"
        )


@torch.inference_mode()
def packed_linears() -> None:
    for k, n in ((C, 3 * C), (C, 4 * C), (4 * C, C), (C, C)):
        x, lin = torch.randn(B, k), torch.nn.Linear(k, n)
        packed = torch.ops.mkl._mkl_reorder_linear_weight(lin.weight, B)
        eager = us(functools.partial(lin, x))
        mkl = us(functools.partial(torch.ops.mkl._mkl_linear, x, packed, lin.weight, lin.bias, B))
        gf = 2 * B * k * n / 1e3
        print(f"3. linear {B}x{k} @ {k}x{n}: addmm {gf / eager:.0f} GFLOP/s, MKL prepacked {gf / mkl:.0f} GFLOP/s")


def train_step_ms(autocast_bf16: bool) -> float:
    """Median ms of a training step (B 32 x 128, clipping, AdamW), fp32 or under bf16 autocast."""
    torch.manual_seed(0)
    model = GPT(PEER_SHAPE).train()
    opt = make_optimizer(model, 3e-4, 0.1)
    data = torch.randint(4, PEER_SHAPE.vocab_size, (32, 129))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
            loss = lm_loss(model, data[:, :-1], data[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return ms(step, 10)


def bf16() -> None:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    fp32 = 2 * 1024**3 / us(functools.partial(torch.mm, a, b)) / 1e3
    bf = 2 * 1024**3 / us(functools.partial(torch.mm, a.bfloat16(), b.bfloat16())) / 1e3
    print(
        f"4. 1024³ matmul: fp32 {fp32:.0f}, bf16 {bf:.0f} GFLOP/s; training step B 32 x 128: fp32 "
        f"{train_step_ms(False):.0f} ms, bf16 autocast {train_step_ms(True):.0f} ms"
    )


def compiled_generate(model: GPT, prompt: torch.Tensor) -> None:
    import torch._inductor.config as inductor

    inductor.freezing = True
    inductor.cpp_wrapper = True
    mask, cfg = torch.ones_like(prompt), SamplingConfig(max_new_tokens=N, temperature=1.0)

    def run() -> None:
        generate(model, prompt, mask, cfg, eos_id=-1, pad_id=0, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        eager = ms(run, 5)
        model.forward = torch.compile(model.forward, dynamic=True)
        compiled = ms(run, 5)
    print(f"5. generate, B {B} x {N} new tokens: eager {eager:.0f} ms, torch.compile {compiled:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (about a minute to compile)")
    args = ap.parse_args()
    set_threads()
    torch.manual_seed(0)
    model = GPT(PEER_SHAPE).eval()
    prompt = torch.randint(4, PEER_SHAPE.vocab_size, (B, P))
    decode_forward(model, prompt)
    decode_attention()
    packed_linears()
    bf16()
    if args.compile:
        compiled_generate(model, prompt)


if __name__ == "__main__":
    main()
