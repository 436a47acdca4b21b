"""Time the pipeline's stages on the default params, each as its own process (as DVC runs them).

    python bench/stage_times.py                      # world -> ... -> evaluate
    python bench/stage_times.py --until sft          # the core issue's budget: pretrain + SFT <= 5 min

Runs in a temporary working root (RLHF_ROOT) so the repo's outputs are untouched; tracking off. Prints one line
per stage and a SUMMARY line; writes bench/out/stage_times.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = [
    ("world", ["tasks.world"]),
    ("prepare", ["tasks.prepare"]),
    ("tokenizer", ["tasks.tokenizer"]),
    (
        "validate_demos",
        [
            "tasks.validate",
            "demos",
            "--input",
            "data/prepared/demos.jsonl",
            "--tokenizer",
            "data/tokenizer/tokenizer.json",
            "--eval-prompts",
            "data/prepared/prompts_eval.jsonl",
        ],
    ),
    ("pretrain", ["tasks.pretrain"]),
    ("sft", ["tasks.sft"]),
    ("preferences", ["tasks.preferences"]),
    ("merge_feedback", ["tasks.merge_feedback"]),
    (
        "validate_preferences",
        [
            "tasks.validate",
            "preferences",
            "--input",
            "data/preferences/pairs.parquet",
            "--tokenizer",
            "data/tokenizer/tokenizer.json",
            "--eval-prompts",
            "data/prepared/prompts_eval.jsonl",
        ],
    ),
    ("reward_model", ["tasks.reward_model"]),
    ("ppo", ["tasks.ppo"]),
    ("evaluate", ["tasks.evaluate"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--until", default="evaluate", choices=[s for s, _ in STAGES])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--keep", type=Path, default=None, help="work in this dir and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="rlhf-bench-"))
    for d in ("data/user", "data/feedback"):
        (work / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(args.params, work / "params.yaml")
    env = {**os.environ, "RLHF_ROOT": str(work), "RLHF_TRACKING": "off", "PYTHONPATH": str(ROOT)}
    times: dict[str, float] = {}
    for name, cmd in STAGES:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", *cmd], cwd=work, env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        times[name] = time.perf_counter() - t0
        print(f"{name:22s} {times[name]:7.1f} s", flush=True)
        if name == args.until:
            break
    metrics = {p.stem: json.loads(p.read_text()) for p in sorted((work / "metrics").glob("*.json"))}
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "seconds": times,
        "total_seconds": sum(times.values()),
        "metrics": metrics,
    }
    out = ROOT / "bench" / "out" / "stage_times.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    core = times.get("pretrain", 0) + times.get("sft", 0)
    print(f"SUMMARY total {result['total_seconds']:.0f} s; pretrain+sft {core:.0f} s; stages {len(times)}; {out}")
    if args.keep is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
