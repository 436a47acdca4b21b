"""Seconds per PPO iteration of rlhf.ppo_trainer on the peer's config (bench-peer/bench_ppo.py, our side).

    python bench/ppo.py [--iters 10 --warmup 2]

Four models of the peer's shape (actor, a separate frozen reference, a reward model and a critic with scalar
heads, all random init), 64 prompts of exactly 32 random tokens (no padding), responses of exactly 32 tokens (no
EOS: eos_id=-1, as TRL's stop_token=None, so no missing-EOS penalty either), 4 PPO epochs × 1 minibatch, TRL's
defaults where the two share a knob (temperature 0.7, β 0.05, k1, clip 0.2, vf_coef 0.1, value clip 0.2, γ 1,
λ 0.95). The iteration is `rlhf.ppo_trainer.ppo_iteration` itself; its time/ metrics split it into generation,
scoring + forward passes, and the update. Writes bench/out/ppo.json.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from common import PEER_SHAPE, machine_info, median, set_threads, write_json

from rlhf.model import GPT, ScalarHeadModel
from rlhf.ppo_trainer import PPOConfig, make_state, ppo_iteration
from rlhf.rollout import reward_model_scores


class FixedPrompts:
    """The slice of ChatTokenizer that PPO uses, over prompts that already are token ids (named by index)."""

    pad_id = 0
    eos_id = -1  # never sampled: every response runs the full length, as the peer's

    def __init__(self, prompts: torch.Tensor):
        self.table = {str(i): row.tolist() for i, row in enumerate(prompts)}

    def encode_prompt(self, prompt: str) -> list[int]:
        return self.table[prompt]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=10, help="iterations in total, warm-up included")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--response-len", type=int, default=32)
    ap.add_argument("--ppo-epochs", type=int, default=4)
    ap.add_argument("--mini-batches", type=int, default=1)
    args = ap.parse_args()
    set_threads()
    torch.manual_seed(0)
    actor = GPT(PEER_SHAPE)
    ref = copy.deepcopy(actor).eval().requires_grad_(False)
    rm = ScalarHeadModel(PEER_SHAPE).eval().requires_grad_(False)
    critic = ScalarHeadModel(PEER_SHAPE)
    g = torch.Generator().manual_seed(1)
    n_prompts = max(4 * args.batch, 256)
    tok = FixedPrompts(torch.randint(4, PEER_SHAPE.vocab_size, (n_prompts, args.prompt_len), generator=g))
    cfg = PPOConfig(
        iterations=args.iters,
        batch_size=args.batch,
        mini_batches=args.mini_batches,
        ppo_epochs=args.ppo_epochs,
        lr=3e-6,
        critic_lr=3e-6,
        max_new_tokens=args.response_len,
        temperature=0.7,
        kl_coef=0.05,
        vf_coef=0.1,
        ent_coef=0.0,
        missing_eos_penalty=0.0,
    )
    state = make_state(actor, critic, cfg)
    prompts = list(tok.table)
    rows = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        ro, stats = ppo_iteration(state, ref, lambda r: reward_model_scores(rm, r), tok, prompts, cfg)
        assert ro.responses.shape == (args.batch, args.response_len) and bool(ro.mask.all())
        rows.append(
            {
                "iter_s": time.perf_counter() - t0,
                "generate_s": stats["time/rollout"],
                "score_and_forward_s": stats["time/score_and_forward"],
                "update_s": stats["time/update"],
            }
        )
    timed = rows[args.warmup :]
    med = {k: median([r[k] for r in timed]) for k in rows[0]}
    res = {"machine": machine_info(), "config": vars(args), "per_iter": rows, "median_after_warmup": med}
    path = write_json("ppo", res)
    print(
        f"SUMMARY ppo: {args.batch} rollouts x {args.response_len} resp tok (prompt {args.prompt_len}), "
        f"{args.ppo_epochs} epochs x {args.mini_batches} minibatch: median {med['iter_s']:.2f} s/iter (generate "
        f"{med['generate_s']:.2f}s, score+forwards {med['score_and_forward_s']:.2f}s, update {med['update_s']:.2f}s) "
        f"over {len(timed)} iters after {args.warmup} warm-up; json={path}"
    )


if __name__ == "__main__":
    main()
