"""Training throughput and MFU of our LM training step on the peer's shape (bench-peer/bench_train.py, our side).

    python bench/train.py [--steps 12 --warmup 3 --batch 32 --seq 128]

The step is the one `rlhf.lm_train.train_lm` runs: `lm_loss` forward, backward, global-norm gradient clipping,
AdamW (`make_optimizer`: decay on matrices), zero_grad; random ids, batch 32 × 128 tokens. FLOPs per token are
the peer's nanoGPT estimate 6·N + 12·L·C·T with N the parameters doing matmul work (all but the position table),
and MFU divides the achieved rate by the fp32 1024³ matmul median measured in the same process. Writes
bench/out/train.json.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import PEER_SHAPE, machine_info, matmul_gflops, matmul_params, median, set_threads, write_json

from rlhf.lm_train import lm_loss, make_optimizer
from rlhf.model import GPT


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    set_threads()
    peak = matmul_gflops(1024, runs=7)
    torch.manual_seed(0)
    model = GPT(PEER_SHAPE).train()
    opt = make_optimizer(model, lr=3e-4, weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    data = torch.randint(4, PEER_SHAPE.vocab_size, (args.steps + args.warmup, args.batch, args.seq + 1), generator=g)
    times, losses = [], []
    for i in range(args.steps + args.warmup):
        x, y = data[i, :, :-1], data[i, :, 1:]
        t0 = time.perf_counter()
        loss = lm_loss(model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if i >= args.warmup:
            times.append(dt)
    cfg = PEER_SHAPE
    flops_per_token = 6 * matmul_params(model) + 12 * cfg.n_layer * cfg.n_embd * args.seq
    med = median(times)
    tok_s = args.batch * args.seq / med
    gflops = flops_per_token * tok_s / 1e9
    res = {
        "machine": machine_info(),
        "config": vars(args),
        "matmul_peak_gflops": peak,
        "step_times_s": times,
        "median_step_s": med,
        "tokens_per_s": tok_s,
        "flops_per_token": flops_per_token,
        "achieved_gflops": gflops,
        "mfu": gflops / peak,
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }
    path = write_json("train", res)
    print(
        f"SUMMARY train: B={args.batch} T={args.seq} fwd+bwd+clip+AdamW: {tok_s:.0f} tok/s, {gflops:.1f} GFLOP/s, "
        f"MFU {100 * res['mfu']:.1f}% of {peak:.1f} GFLOP/s (median step {1000 * med:.0f} ms; loss "
        f"{losses[0]:.3f}->{losses[-1]:.3f}); json={path}"
    )


if __name__ == "__main__":
    main()
