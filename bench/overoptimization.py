"""The over-optimisation experiment: PPO with a small β for longer, then the proxy-vs-gold curve.

    python bench/overoptimization.py --kl-coef 0.005 --iterations 80

Copies the SFT model, the reward model and the prepared prompts of the workspace into a temporary root, runs the
real `ppo` and `evaluate` stages there with the changed params (the workspace's outputs are untouched) and prints
the curve: RM and gold score (each relative to SFT) against sqrt(KL) along training (Gao et al. 2022). Writes
bench/out/overoptimization_beta<β>.{csv,png} and the evaluation summary JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kl-coef", type=float, default=0.005)
    parser.add_argument("--iterations", type=int, default=80)
    parser.add_argument("--snapshot-every", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rlhf-overopt-"))
    for rel in ("models/sft", "models/reward_model", "data/prepared"):
        shutil.copytree(ROOT / rel, work / rel)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ppo"] |= {"kl_coef": args.kl_coef, "iterations": args.iterations, "snapshot_every": args.snapshot_every}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "RLHF_ROOT": str(work), "RLHF_TRACKING": "off", "PYTHONPATH": str(ROOT)}
    for stage in ("tasks.ppo", "tasks.evaluate"):
        subprocess.run([sys.executable, "-m", stage], cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    tag = f"beta{args.kl_coef:g}"
    shutil.copy(work / "plots/overoptimization.csv", out / f"overoptimization_{tag}.csv")
    shutil.copy(work / "plots/overoptimization.png", out / f"overoptimization_{tag}.png")
    shutil.copy(work / "metrics/eval.json", out / f"eval_{tag}.json")
    print((work / "plots/overoptimization.csv").read_text())
    ev = json.loads((work / "metrics/eval.json").read_text())
    print(
        f"SUMMARY beta={args.kl_coef} iterations={args.iterations} gold win-rate {ev['gold']['win_rate']:.3f} "
        f"[{ev['gold']['ci_low']:.3f}, {ev['gold']['ci_high']:.3f}] rm win-rate {ev['rm']['win_rate']:.3f} "
        f"kl {ev['kl']:.2f} length {ev['length']}"
    )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
