"""Kernel floors of #8's three ratio targets: the time of a step's matmuls and attention alone, nothing else.

    python bench/floors.py [--compare bench/out/compare.json]

Every figure times the exact kernels of the peer's shape (4 layers, width 256, 4 heads, vocab 512), fp32, in this
process, with no LayerNorm, GELU, residual, cross-entropy, optimizer, sampling or Python around them:

- training step (B 32 × T 128): each linear's forward and its two backward matmuls at the step's shapes, plus
  SDPA's causal forward + backward. `matmul_efficiency` is the matmuls' own GFLOP/s over the ceiling;
  `mfu_if_only_matmuls_and_attention` is the MFU a step would reach if everything else took no time at all (the
  FLOP count of bench/train.py and the peer, attention included).
- decode step (B 64, prompt 32, 64 new tokens): the four linears per layer and the LM head at 64 rows, and SDPA
  with one query over the cache at every length the run visits, averaged.
- PPO update (64 rollouts × 64 tokens, 4 epochs, actor and critic): the same for the update's shapes.

With `--compare` (bench/compare.py's output) it also prints the budget each target leaves: HF's ms per decode step
/ 3, and 0.55 × TRL's iteration minus our own generation and scoring time. Writes bench/out/floors.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from common import (
    PEER_SHAPE,
    machine_info,
    matmul_gflops,
    matmul_params,
    median,
    seconds_per_call,
    set_threads,
    write_json,
)

from rlhf.model import GPT

C, L, NH, V = PEER_SHAPE.n_embd, PEER_SHAPE.n_layer, PEER_SHAPE.n_head, PEER_SHAPE.vocab_size
HS = C // NH
LAYER_LINEARS = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]  # (in, out): qkv, attention proj, fc, fc proj


def linear_seconds(rows: int, k: int, n: int, backward: bool) -> float:
    """x (rows, k) @ W (k, n); with backward also dX = dY @ Wᵀ and dW = xᵀ @ dY."""
    x, w, dy = torch.randn(rows, k), torch.randn(k, n), torch.randn(rows, n)
    t = seconds_per_call(lambda: torch.mm(x, w))
    if backward:
        wt, xt = w.t().contiguous(), x.t().contiguous()
        t += seconds_per_call(lambda: torch.mm(dy, wt)) + seconds_per_call(lambda: torch.mm(xt, dy))
    return t


def attention_seconds(batch: int, seq: int) -> float:
    """SDPA causal forward + backward on (batch, heads, seq, head size)."""
    q, k, v = (torch.randn(batch, NH, seq, HS, requires_grad=True) for _ in range(3))
    grad = torch.randn(batch, NH, seq, HS)

    def step() -> None:
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad)

    return seconds_per_call(step)


@torch.inference_mode()
def decode_attention_seconds(batch: int, lengths: range) -> float:
    """Mean over cache lengths of SDPA with one query per row, on a slice of a preallocated cache."""
    cache_k = torch.randn(batch, NH, lengths.stop, HS)
    cache_v = torch.randn(batch, NH, lengths.stop, HS)
    q = torch.randn(batch, NH, 1, HS)
    times = [
        seconds_per_call(lambda s=s: F.scaled_dot_product_attention(q, cache_k[:, :, :s], cache_v[:, :, :s]), 0.05, 3)
        for s in lengths
    ]
    return sum(times) / len(times)


def train_floor(batch: int, seq: int, peak: float) -> dict:
    rows = batch * seq
    mm = L * sum(linear_seconds(rows, k, n, True) for k, n in LAYER_LINEARS) + linear_seconds(rows, C, V, True)
    attn = L * attention_seconds(batch, seq)
    n_matmul = L * sum(k * n for k, n in LAYER_LINEARS) + C * V  # the weights the timed matmuls multiply by
    flops = rows * (6 * matmul_params(GPT(PEER_SHAPE)) + 12 * L * C * seq)  # bench/train.py's and the peer's count
    return {
        "matmul_ms": 1e3 * mm,
        "attention_ms": 1e3 * attn,
        "matmul_efficiency": rows * 6 * n_matmul / mm / 1e9 / peak,
        "mfu_if_only_matmuls_and_attention": flops / (mm + attn) / 1e9 / peak,
    }


def decode_floor(batch: int, prompt: int, new: int) -> dict:
    mm = L * sum(linear_seconds(batch, k, n, False) for k, n in LAYER_LINEARS) + linear_seconds(batch, C, V, False)
    attn = L * decode_attention_seconds(batch, range(prompt + 1, prompt + new + 1))
    return {"matmul_ms": 1e3 * mm, "attention_ms": 1e3 * attn, "kernels_ms_per_step": 1e3 * (mm + attn)}


def ppo_update_floor(batch: int, prompt: int, response: int, epochs: int) -> dict:
    seq = prompt + response
    rows = batch * seq
    body = L * sum(linear_seconds(rows, k, n, True) for k, n in LAYER_LINEARS)
    head = linear_seconds(batch * (response + 1), C, V, True)  # logits on the response positions only
    attn = L * attention_seconds(batch, seq)
    per_epoch = 2 * body + head + 2 * attn  # actor and critic
    return {"matmul_s": epochs * (2 * body + head), "attention_s": epochs * 2 * attn, "kernels_s": epochs * per_epoch}


def budgets(compare: Path) -> dict:
    """The time each target leaves, from bench/compare.py's rounds (medians over rounds)."""
    rounds = json.loads(compare.read_text())["rounds"]

    def med(bench: str, side: str, key: str) -> float:
        return median([r[side][key] for r in rounds if r["bench"] == bench])

    ours_ppo = Path(compare.parent, "ppo.json")
    rest = json.loads(ours_ppo.read_text())["median_after_warmup"] if ours_ppo.exists() else None
    out = {"decode_ms_per_step_at_3x_hf": 1e3 * 64 / med("generate", "peer", "cached_tok_s") / 3}
    out["ppo_iter_s_at_0.55x_trl"] = 0.55 * med("ppo", "peer", "iter_s")
    if rest:
        out["ppo_update_s_left_after_our_rollout"] = (
            out["ppo_iter_s_at_0.55x_trl"] - rest["generate_s"] - rest["score_and_forward_s"]
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--compare", type=Path, default=Path(__file__).parent / "out" / "compare.json")
    args = ap.parse_args()
    set_threads()
    torch.manual_seed(0)
    peak = matmul_gflops(1024, runs=7)
    res = {
        "machine": machine_info(),
        "matmul_peak_gflops": peak,
        "train_step": train_floor(32, 128, peak),
        "decode_step": decode_floor(64, 32, 64),
        "ppo_update": ppo_update_floor(64, 32, 32, 4),
    }
    if args.compare.exists():
        res["budgets"] = budgets(args.compare)
    for part in ("train_step", "decode_step", "ppo_update", "budgets"):
        if part in res:
            print(f"{part}: " + ", ".join(f"{k} {v:.3f}" for k, v in res[part].items()), flush=True)
    path = write_json("floors", res)
    t, d, p = res["train_step"], res["decode_step"], res["ppo_update"]
    print(
        f"SUMMARY floors: peak {peak:.0f} GFLOP/s; train MFU ≤ {100 * t['mfu_if_only_matmuls_and_attention']:.0f}% "
        f"with nothing but matmuls + attention; decode kernels {d['kernels_ms_per_step']:.2f} ms/step; PPO update "
        f"kernels {p['kernels_s']:.2f} s; json={path}"
    )


if __name__ == "__main__":
    main()
