"""LoRA against full fine-tuning on the default world (issue #18): gold win-rate, KL and time of each.

    python bench/lora_vs_full.py                       # LoRA r=16 vs the workspace's own (full) run
    python bench/lora_vs_full.py --r 16 --alpha 32 --gradient-checkpointing
    python bench/lora_vs_full.py --full                # run the full side here too (same machine, same load)
    python bench/lora_vs_full.py --workspace DIR --full  # another working root (its base model, data, params)

Starts from the workspace's base model and prepared data (pretrain does not read model.lora, so both sides share
it) and runs the real stages from sft to evaluate, as `dvc exp run -S model.lora.r=16` would, each as its own
process in a temporary working root (tracking off; the workspace's outputs are untouched): sft, preferences (the
pairs are sampled from the LoRA SFT model), validate_preferences, reward_model, ppo, evaluate. The full side is
the workspace's metrics/*.json unless --full runs it too. Prints one table and writes bench/out/lora_vs_full.json.
Timing claims need an otherwise idle machine: the seconds are wall time of each stage's process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, write_json
from stage_times import STAGES

INPUTS = ("models/base", "data/prepared", "data/tokenizer", "data/user", "data/feedback")
RUN = [(name, cmd) for name, cmd in STAGES[[s for s, _ in STAGES].index("sft") :]]
TIMED = ("sft", "reward_model", "ppo")


def run_side(workspace: Path, lora: dict, gradient_checkpointing: bool) -> dict:
    """The stages from sft to evaluate with these `model.lora` values, in a temporary copy of the inputs."""
    work = Path(tempfile.mkdtemp(prefix="rlhf-lora-vs-full-"))
    try:
        for rel in INPUTS:
            if (workspace / rel).exists():
                shutil.copytree(workspace / rel, work / rel)
            else:
                (work / rel).mkdir(parents=True)
        params = yaml.safe_load((workspace / "params.yaml").read_text())
        params["model"]["lora"] = lora
        params.setdefault("runtime", {})["gradient_checkpointing"] = gradient_checkpointing
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {**os.environ, "RLHF_ROOT": str(work), "RLHF_TRACKING": "off", "PYTHONPATH": str(ROOT)}
        wall = {}
        for name, cmd in RUN:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", *cmd], cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
            wall[name] = time.perf_counter() - t0
            print(f"  {name:22s} {wall[name]:7.1f} s", flush=True)
        return {**summary(work), "wall_seconds": wall}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summary(root: Path) -> dict:
    """What the comparison reads from a root's metrics: gold win-rate with its CI, KL, and per training stage
    its seconds and peak memory."""
    metric = {s: json.loads((root / f"metrics/{s}.json").read_text()) for s in (*TIMED, "eval")}
    ev = metric["eval"]
    return {
        "gold": ev.get("gold"),
        "kl": ev.get("kl"),
        "ppo_gold_score": metric["ppo"].get("gold_score"),
        "seconds": {s: metric[s].get("seconds") for s in TIMED},
        "peak_memory_mb": {s: metric[s].get("peak_memory_mb") for s in TIMED},
    }


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def table(sides: dict[str, dict]) -> str:
    rows = ["| side | gold win-rate [95% CI] | KL | " + " | ".join(f"{s} s / peak MiB" for s in TIMED) + " |"]
    rows.append("| --- | --- | ---: |" + " ---: |" * len(TIMED))
    for name, m in sides.items():
        g = m["gold"] or {}
        cells = [f"{fmt(m['seconds'][s], '.0f')} / {fmt(m['peak_memory_mb'][s], ',.0f')}" for s in TIMED]
        win = f"{fmt(g.get('win_rate'))} [{fmt(g.get('ci_low'))}, {fmt(g.get('ci_high'))}]"
        rows.append(f"| {name} | {win} | {fmt(m['kl'], '.2f')} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--r", type=int, default=16, help="model.lora.r of the LoRA side")
    parser.add_argument("--alpha", type=float, default=32.0, help="model.lora.alpha of the LoRA side")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on the LoRA side")
    parser.add_argument("--full", action="store_true", help="run the full side here too, not read the workspace's")
    parser.add_argument("--workspace", type=Path, default=ROOT, help="the working root to start from")
    args = parser.parse_args()
    if args.r < 1:
        parser.error("--r must be >= 1 (the LoRA side)")
    lora = {"r": args.r, "alpha": args.alpha, "dropout": 0.0, "target_modules": None}
    sides = {}
    print(f"LoRA r={args.r} alpha={args.alpha:g} gradient_checkpointing={args.gradient_checkpointing}", flush=True)
    sides[f"LoRA r={args.r}"] = run_side(args.workspace, lora, args.gradient_checkpointing)
    if args.full:
        print("full fine-tuning", flush=True)
        sides["full"] = run_side(args.workspace, {**lora, "r": 0}, False)
    else:
        sides["full (workspace)"] = summary(args.workspace)
    write_json("lora_vs_full", sides)
    print(table(sides))


if __name__ == "__main__":
    main()
