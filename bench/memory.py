"""Peak memory of one SFT step and one PPO iteration on a GPT-2-small shape (issue #18): full fine-tuning, LoRA
r=16, and LoRA + gradient checkpointing, for the built-in GPT and a Hugging Face GPT-2 alike.

    python bench/memory.py                     # all 12 runs (2 backends × 3 modes × SFT/PPO), a few minutes
    python bench/memory.py --table             # only the formula's table for 0.5 B / 1 B / 7 B (docs/scale-out.md)

The shape is GPT-2 small (12 layers, 12 heads, width 768, vocab 50,257, context 1,024: 124 M parameters), random
init, built locally from a config (nothing downloaded). Each (backend, mode, phase) runs in its own subprocess
(`--child`), since the peak resident set size (getrusage ru_maxrss) is a process's high-water mark and cannot be
reset. The PPO iteration is the project's (rlhf.ppo_trainer.ppo_iteration) with four models: full fine-tuning
holds actor and critic with gradients and AdamW states plus a frozen reference and reward model; LoRA holds two
frozen bodies (the reference is the actor's adapter off, the reward the critic's adapter off, rlhf.lora).

Every run also records `predicted_mb`, the formula of `predict_mb` (weights + gradients + AdamW states +
activations, over the process's RSS before any model was built), so docs/scale-out.md can say how close it came.
Memory figures are valid on a loaded machine; the seconds are not (2 shared cores): they are recorded as
measured but are no speed claim. Writes bench/out/memory.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
from common import ROOT, machine_info, set_threads, write_json

BACKENDS = ("builtin", "hf")
MODES = ("full", "lora", "lora_gc")
PHASES = ("sft", "ppo")
LORA_R = 16
F32 = 4


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_embd: int
    vocab: int
    mlp: int  # hidden width of the MLP (4·C for GPT-2; Llama's SwiGLU has three matrices of this width)
    params: int  # total parameters


GPT2_SMALL = Shape(12, 768, 50257, 3072, 124_439_808)


built_mb = [0.0]  # peak RSS once the models are built, before the step (set by run_sft / run_ppo)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- the formula ------------------------------------------------------------------------------------------


def layer_activation_values(shape: Shape, tokens: int) -> float:
    """Values a block keeps for backward per token: LayerNorm outputs (2C), fused qkv (3C) and their per-head views
    (3C), attention output (2C), projection (C), MLP in, GELU and out (2·mlp + C), residuals (2C): 14·C + 2·mlp.
    The attention scores are not kept (SDPA's fused kernels); `tokens` = batch × sequence."""
    return tokens * (14 * shape.n_embd + 2 * shape.mlp)


def activation_bytes(shape: Shape, tokens: int, logit_tokens: int, checkpointing: bool, bytes_per: int) -> float:
    """Activations of one training forward: every block's (or with checkpointing, each block's input plus one
    block recomputed at a time), and the logits with their log-softmax and gradient (3 × tokens × V)."""
    per_layer = layer_activation_values(shape, tokens)
    blocks = shape.n_layer * tokens * shape.n_embd + per_layer if checkpointing else shape.n_layer * per_layer
    return (blocks + 3 * logit_tokens * shape.vocab) * bytes_per


def predict_mb(
    shape: Shape, phase: str, trainable: float, tokens: int, logit_tokens: int, checkpointing: bool, bf16: bool = False
) -> float:
    """MiB for the models of one phase: weights + gradients + AdamW (two fp32 states per trainable parameter) +
    activations. `trainable` = trainable parameters per trained model (all of them when fully fine-tuned).

    SFT trains one model; PPO trains actor and critic (their activations both live in one backward) and keeps a
    reference and a reward model: four bodies when fully fine-tuned, two with LoRA (the reference and the reward
    are adapters switched off). bf16: frozen weights, activations and gradients in 2 bytes; trained parameters keep
    an fp32 master copy beside their bf16 weights (mixed precision, 2 + 4 + 4 + 4 + 2 = 16 bytes each)."""
    w = 2 if bf16 else F32
    lora = trainable < shape.params
    trained = bodies = 1 if phase == "sft" else 2  # with LoRA the trained models' bodies are the frozen ones
    frozen_models = 0 if phase == "sft" or lora else 2  # PPO's reference and reward model, full fine-tuning
    per_trained = trainable * (w + (F32 if bf16 else 0) + 2 * F32)  # gradient (+ master copy) + AdamW m, v
    weights = (bodies + frozen_models) * shape.params * w + (trainable * w * trained if lora else 0)
    acts = activation_bytes(shape, tokens, logit_tokens, checkpointing, w)
    if phase == "ppo":  # the critic's forward (no logits) lives in the same backward as the actor's
        acts += activation_bytes(shape, tokens, 0, checkpointing, w)
    return (weights + trained * per_trained + acts) / 2**20


# --- one run (child process) ------------------------------------------------------------------------------


class RandomPrompts:
    """What sample_rollout needs of a tokenizer: a prompt's ids (seeded by the prompt), EOS and pad."""

    eos_id = pad_id = 0

    def __init__(self, vocab: int, length: int):
        self.vocab, self.length = vocab, length

    def encode_prompt(self, prompt: str) -> list[int]:
        g = torch.Generator().manual_seed(int(prompt))
        return torch.randint(1, self.vocab, (self.length,), generator=g).tolist()


def build_lm(backend: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if backend == "builtin":
        from rlhf.model import GPT, GPTConfig

        return GPT(GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0))
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhf.hf import HFCausalLM, HFModelConfig

    cfg = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, bos_token_id=0)
    cfg.eos_token_id, cfg.resid_pdrop, cfg.embd_pdrop, cfg.attn_pdrop = 0, 0.0, 0.0, 0.0
    return HFCausalLM(GPT2LMHeadModel(cfg).eval(), HFModelConfig(50257, 1024, 12, 12, 768))


def run_sft(backend: str, mode: str, args: argparse.Namespace) -> tuple[float, int, int, int]:
    """One SFT step (forward, backward, clip, AdamW); returns seconds, trainable params, tokens, logit tokens."""
    from rlhf.lm_train import lm_loss, make_optimizer
    from rlhf.lora import LoRAConfig, apply_lora, set_gradient_checkpointing

    model = build_lm(backend)
    if mode != "full":
        model = apply_lora(model, LoRAConfig(r=LORA_R, alpha=2.0 * LORA_R))
    set_gradient_checkpointing(model, mode == "lora_gc").train()
    opt = make_optimizer(model, lr=1e-4, weight_decay=0.1)
    built_mb[0] = rss_mb()
    g = torch.Generator().manual_seed(1)
    data = torch.randint(1, 50257, (args.batch, args.seq + 1), generator=g)
    t0 = time.perf_counter()
    loss = lm_loss(model, data[:, :-1], data[:, 1:])
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens = args.batch * args.seq
    return time.perf_counter() - t0, trainable, tokens, tokens


def ppo_models(backend: str, mode: str) -> tuple:
    """(actor, critic, reference, reward model) as the PPO stage would hold them."""
    import copy

    from rlhf import lora as L
    from rlhf.device import freeze
    from rlhf.model import ScalarHeadModel

    lm = build_lm(backend)
    rm = freeze(ScalarHeadModel.from_lm(lm))
    if mode == "full":
        actor, ref = lm, freeze(copy.deepcopy(lm))
        critic = copy.deepcopy(rm).train().requires_grad_(True)
        reward = rm
    else:
        actor, ref, critic, reward = L.ppo_models(lm, rm, L.LoRAConfig(r=LORA_R, alpha=2.0 * LORA_R), 0.0, 1.0)
    L.set_gradient_checkpointing(actor, mode == "lora_gc")
    L.set_gradient_checkpointing(critic, mode == "lora_gc")
    return actor, critic, ref, reward


def run_ppo(backend: str, mode: str, args: argparse.Namespace) -> tuple[float, int, int, int]:
    """One PPO iteration (rollout, scores, the four forwards, one epoch of one minibatch)."""
    from rlhf.ppo_trainer import PPOConfig, make_state, ppo_iteration
    from rlhf.rollout import reward_model_scores

    actor, critic, ref, reward = ppo_models(backend, mode)
    cfg = PPOConfig(
        iterations=1, batch_size=args.ppo_batch, mini_batches=1, ppo_epochs=1, max_new_tokens=args.response, seed=0
    )
    state = make_state(actor, critic, cfg)
    built_mb[0] = rss_mb()
    tok = RandomPrompts(50257, args.prompt)
    prompts = [str(i) for i in range(args.ppo_batch)]
    t0 = time.perf_counter()
    ppo_iteration(state, ref, lambda ro: reward_model_scores(reward, ro), tok, prompts, cfg)
    trainable = sum(p.numel() for p in actor.parameters() if p.requires_grad)
    tokens = args.ppo_batch * (args.prompt + args.response)
    return time.perf_counter() - t0, trainable, tokens, args.ppo_batch * (args.response + 1)


def child(args: argparse.Namespace) -> None:
    set_threads()
    if args.backend == "hf":
        import transformers  # noqa: F401  (its import is part of the baseline, not of the models)
    import peft  # noqa: F401

    baseline = rss_mb()
    run = run_sft if args.phase == "sft" else run_ppo
    seconds, trainable, tokens, logit_tokens = run(args.backend, args.mode, args)
    peak = rss_mb()
    predicted = predict_mb(GPT2_SMALL, args.phase, trainable, tokens, logit_tokens, args.mode == "lora_gc")
    out = {
        "backend": args.backend,
        "mode": args.mode,
        "phase": args.phase,
        "peak_rss_mb": round(peak, 1),
        "baseline_rss_mb": round(baseline, 1),
        "built_rss_mb": round(built_mb[0], 1),
        "models_mb": round(peak - baseline, 1),
        "predicted_mb": round(predicted, 1),
        "predicted_over_measured": round(predicted / (peak - baseline), 3),
        "seconds_per_iter": round(seconds, 2),
        "trainable_params": trainable,
    }
    print("RESULT " + json.dumps(out), flush=True)


# --- the parent -------------------------------------------------------------------------------------------


def table() -> list[dict]:
    """The formula for the sizes users bring (docs/scale-out.md): one PPO minibatch of 8 × 512 tokens (the logits
    of half of them, the responses), LoRA r=16 on every attention and MLP matrix, with and without checkpointing."""
    shapes = {
        "0.5B (Qwen2.5-0.5B: 24 × 896, vocab 151,936)": Shape(24, 896, 151936, 4864 * 3 // 2, 494_000_000),
        "1B (Llama-3.2-1B: 16 × 2048, vocab 128,256)": Shape(16, 2048, 128256, 8192 * 3 // 2, 1_236_000_000),
        "7B (Llama-2-7B: 32 × 4096, vocab 32,000)": Shape(32, 4096, 32000, 11008 * 3 // 2, 6_738_000_000),
    }
    rows = []
    for name, s in shapes.items():
        # LoRA on q, k, v, o (C×C each, GQA ignored) and the three MLP matrices: r·(in + out) per matrix
        lora = s.n_layer * LORA_R * (4 * 2 * s.n_embd + 3 * (s.n_embd + s.mlp * 2 // 3))
        for bf16 in (False, True):
            row = {"model": name, "dtype": "bf16" if bf16 else "fp32"}

            def gb(trainable: float, tokens: int, gc: bool, s: Shape = s, bf16: bool = bf16) -> float:
                return round(predict_mb(s, "ppo", trainable, tokens, tokens // 2, gc, bf16) / 1024, 1)

            row["static_full_gb"], row["static_lora_gb"] = gb(s.params, 0, False), gb(lora, 0, False)
            row["activations_gb"] = round(gb(lora, 8 * 512, False) - row["static_lora_gb"], 1)
            row["activations_gc_gb"] = round(gb(lora, 8 * 512, True) - row["static_lora_gb"], 1)
            row["ppo_full_gb"], row["ppo_lora_gb"] = gb(s.params, 8 * 512, False), gb(lora, 8 * 512, False)
            row["ppo_lora_gc_gb"] = gb(lora, 8 * 512, True)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--backend", choices=BACKENDS)
    ap.add_argument("--mode", choices=MODES)
    ap.add_argument("--phase", choices=PHASES)
    ap.add_argument("--batch", type=int, default=4, help="SFT sequences")
    ap.add_argument("--seq", type=int, default=128, help="SFT tokens per sequence")
    ap.add_argument("--ppo-batch", type=int, default=4, help="PPO rollouts (one minibatch)")
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--response", type=int, default=16)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.table:
        for row in table():
            print(row)
        return None
    runs = []
    for backend in BACKENDS:
        for phase in PHASES:
            for mode in MODES:
                cmd = [sys.executable, __file__, "--child", "--backend", backend, "--mode", mode, "--phase", phase]
                cmd += ["--batch", str(args.batch), "--seq", str(args.seq), "--ppo-batch", str(args.ppo_batch)]
                cmd += ["--prompt", str(args.prompt), "--response", str(args.response)]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    raise RuntimeError(f"{backend} {mode} {phase} failed:\n{proc.stderr[-3000:]}")
                runs.append(json.loads(line[len("RESULT ") :]))
                r = runs[-1]
                print(
                    f"{backend:8s} {phase:4s} {mode:8s} peak {r['peak_rss_mb']:7.0f} MiB "
                    f"(models {r['models_mb']:6.0f}, formula {r['predicted_mb']:6.0f}) "
                    f"{r['seconds_per_iter']:6.1f} s  [{time.perf_counter() - t0:.0f} s with setup]",
                    flush=True,
                )
    ratios = {}
    for backend in BACKENDS:
        for phase in PHASES:
            full = next(r for r in runs if (r["backend"], r["phase"], r["mode"]) == (backend, phase, "full"))
            for mode in ("lora", "lora_gc"):
                r = next(r for r in runs if (r["backend"], r["phase"], r["mode"]) == (backend, phase, mode))
                ratios[f"{backend}/{phase}/{mode}_over_full"] = round(r["peak_rss_mb"] / full["peak_rss_mb"], 3)
    payload = {
        "params": GPT2_SMALL.params,
        "shape": "GPT-2 small: 12 layers, 12 heads, width 768, vocab 50257, context 1024; random init, fp32",
        "workload": vars(args) | {"lora_r": LORA_R, "ppo": "1 iteration, 1 epoch, 1 minibatch"},
        "note": (
            "peak_rss_mb is the subprocess's peak resident set size (getrusage), valid under load; models_mb "
            "subtracts the RSS after imports. seconds_per_iter was measured on a shared 2-core machine under load "
            "and is no speed claim."
        ),
        "machine": machine_info(),
        "ratios": ratios,
        "runs": runs,
    }
    print(f"wrote {write_json('memory', payload)}")
    return None


if __name__ == "__main__":
    main()
