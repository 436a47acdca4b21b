"""Generation throughput of rlhf.generate on the peer's shape (bench-peer/bench_generate.py, our side).

    python bench/generate.py [--runs 7] [--batch 64 --prompt-len 32 --new-tokens 64]

Random-init model of the peer's shape, batch 64 × prompt 32 random ids, exactly 64 new tokens (EOS never stops a
row: eos_id=-1, as the peer's eos_token_id=None), plain multinomial sampling at temperature 1, no top-k/top-p.
With the KV cache (`rlhf.generate.generate`) and without (every step recomputes the whole sequence, as the
peer's use_cache=False). Prints a SUMMARY line; writes bench/out/generate.json.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import PEER_SHAPE, machine_info, median, set_threads, write_json

from rlhf.generate import SamplingConfig, _sample, generate
from rlhf.model import GPT


@torch.inference_mode()
def generate_no_cache(model: GPT, ids: torch.Tensor, n_new: int, gen: torch.Generator) -> torch.Tensor:
    """Reference decoder: one full forward pass per new token (only the last position's logits are used)."""
    cfg = SamplingConfig(max_new_tokens=n_new, temperature=1.0)
    for _ in range(n_new):
        logits = model(ids, last=1)[:, 0]
        tok, _ = _sample(logits, cfg, gen)
        ids = torch.cat([ids, tok[:, None]], 1)
    return ids


def time_runs(fn, runs: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--no-cache-runs", type=int, default=3, help="0 skips the recompute reference")
    args = ap.parse_args()
    set_threads()
    torch.manual_seed(0)
    model = GPT(PEER_SHAPE).eval()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(4, PEER_SHAPE.vocab_size, (args.batch, args.prompt_len), generator=g)
    mask = torch.ones_like(prompt)
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0)

    def cached() -> None:
        out = generate(model, prompt, mask, sampling, eos_id=-1, pad_id=0, generator=g)
        assert out.tokens.shape == (args.batch, args.new_tokens) and bool(out.mask.all())

    res = {"machine": machine_info(), "config": vars(args), "results": {}}
    variants = [("use_cache", cached, args.runs)]
    if args.no_cache_runs:
        variants.append(("no_cache", lambda: generate_no_cache(model, prompt, args.new_tokens, g), args.no_cache_runs))
    for name, fn, runs in variants:
        times = time_runs(fn, runs)
        med = median(times)
        res["results"][name] = {
            "times_s": times,
            "median_s": med,
            "new_tokens_per_s": args.batch * args.new_tokens / med,
            "ms_per_decode_step": 1000 * med / args.new_tokens,
        }
        r = res["results"][name]
        print(f"generate {name}: median {med:.3f}s -> {r['new_tokens_per_s']:.0f} tok/s", flush=True)
    path = write_json("generate", res)
    parts = [f"{k} {v['new_tokens_per_s']:.0f} tok/s ({v['median_s']:.3f}s)" for k, v in res["results"].items()]
    shape = f"B={args.batch} prompt={args.prompt_len} new={args.new_tokens}"
    print(f"SUMMARY generate: {shape}: {'; '.join(parts)}; json={path}")


if __name__ == "__main__":
    main()
