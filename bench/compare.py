"""Ours against the peer (HF transformers / TRL), alternately in one sitting: A B A B …, then the ratios.

    python bench/compare.py [--rounds 3] [--only generate train ppo]

Each round runs the peer's script and ours for each benchmark back to back, in a fresh process each (the peer's
from ../shared/bench-peer with /tmp/peer-venv, set up by its setup_venv.sh), alternating which goes first, and
reads the JSON each writes. Ratios are per round (the machine drifts 10–25 % between hours, far less between
neighbours); the summary gives their median and range. Writes bench/out/compare.json and bench/out/compare.md
(the table of bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import OUT_DIR, ROOT, machine_info, write_json

PEER_DIR = ROOT.parent / "shared" / "bench-peer"
PEER_PY = Path(os.environ.get("PEER_PYTHON", "/tmp/peer-venv/bin/python"))
PEER_OUT = OUT_DIR / "peer"

# name -> (the peer's script and arguments, ours)
BENCHES = {
    "generate": (["bench_generate.py", "--runs", "5"], ["generate.py", "--runs", "5", "--no-cache-runs", "1"]),
    "train": (["bench_train.py", "--steps", "8"], ["train.py", "--steps", "8"]),
    "ppo": (["bench_ppo.py", "--iters", "6", "--warmup", "2"], ["ppo.py", "--iters", "6", "--warmup", "2"]),
}


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    summary = [line for line in proc.stdout.splitlines() if line.startswith("SUMMARY")]
    print(f"  {summary[-1] if summary else cmd}", flush=True)


def read(name: str, side: str) -> dict[str, float]:
    """The figures compared, from the JSON each side wrote."""
    d = json.loads(((PEER_OUT if side == "peer" else OUT_DIR) / f"{name}.json").read_text())
    if name == "generate":
        return {"cached_tok_s": d["results"]["use_cache"]["new_tokens_per_s"]}
    if name == "train":
        if side == "peer":  # the peer's like-for-like variant: dropout 0, SDPA attention
            v = d["variants"]["dropout0"]
            return {"tok_s": v["tokens_per_s"], "mfu": v["mfu_vs_matmul_peak"]}
        return {"tok_s": d["tokens_per_s"], "mfu": d["mfu"]}
    med = d["median_after_warmup"]
    return {"iter_s": med["iter_s"], "update_s": med["update_s"]}


def ratios(name: str, peer: dict[str, float], ours: dict[str, float]) -> dict[str, float]:
    if name == "generate":
        return {"gen_speedup": ours["cached_tok_s"] / peer["cached_tok_s"]}
    if name == "train":
        return {"train_speedup": ours["tok_s"] / peer["tok_s"], "our_mfu": ours["mfu"], "peer_mfu": peer["mfu"]}
    return {"ppo_time_ratio": ours["iter_s"] / peer["iter_s"], "update_time_ratio": ours["update_s"] / peer["update_s"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", nargs="+", choices=list(BENCHES), default=list(BENCHES))
    args = ap.parse_args()
    if not PEER_PY.exists():
        raise SystemExit(f"{PEER_PY} missing: run `bash {PEER_DIR}/setup_venv.sh` first")
    env = os.environ | {"PEER_OUT_DIR": str(PEER_OUT), "PYTHONDONTWRITEBYTECODE": "1"}
    rows: list[dict] = []
    for r in range(args.rounds):
        for name in args.only:
            peer_cmd, our_cmd = BENCHES[name]
            sides = [
                ("peer", [str(PEER_PY), *peer_cmd], PEER_DIR),
                ("ours", [sys.executable, *our_cmd], ROOT / "bench"),
            ]
            if r % 2:
                sides.reverse()  # A B, then B A: neither side always runs on the warmer machine
            got = {}
            for side, cmd, cwd in sides:
                print(f"round {r + 1} {name} {side}", flush=True)
                run(cmd, cwd, env)
                got[side] = read(name, side)
            rows.append({"round": r + 1, "bench": name, **got, "ratios": ratios(name, got["peer"], got["ours"])})
    summary = {}
    for name in args.only:
        per = [row["ratios"] for row in rows if row["bench"] == name]
        for key in per[0]:
            vals = [p[key] for p in per]
            summary[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "values": vals}
    write_json("compare", {"machine": machine_info(), "rounds": rows, "summary": summary})
    lines = ["| ratio | median | range | per round |", "| --- | --- | --- | --- |"]
    for key, s in summary.items():
        per = ", ".join(f"{v:.2f}" for v in s["values"])
        lines.append(f"| {key} | **{s['median']:.2f}** | {s['min']:.2f}–{s['max']:.2f} | {per} |")
    (OUT_DIR / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    for key, s in summary.items():
        print(f"SUMMARY compare {key}: median {s['median']:.3f} (range {s['min']:.3f}-{s['max']:.3f})")


if __name__ == "__main__":
    main()
