"""The default pipeline end to end, per stage, with the orchestration overhead separated.

    python bench/pipeline.py --from-scratch      # delete dvc.lock first, so every stage reruns (in this repo)
    python bench/pipeline.py                     # whatever is stale

Runs the README's `bin/pipeline` (Prefect flow -> `dvc repro` per stage -> MLflow registration), timing the whole
process, then runs it again with nothing to do. Split of the wall time:
- stages: each stage's `dvc repro --single-item` subprocess (the flow's `[pipeline] <stage>: ran (… s)` figures);
- registration: registering the models and the challenger-vs-champion decision (real work, an evaluation);
- Prefect + MLflow: the rest of the first run (server start, flow and task machinery, parent-run logging);
- DVC: per stage, what a no-op `dvc repro` of it costs (hashing, lock checks), measured by the second run.
Overhead = Prefect + MLflow + DVC. Writes bench/out/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time

from common import ROOT, machine_info, write_json


def run_flow(extra: list[str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(ROOT / "bin" / "pipeline"), *extra],  # the README's command: environment and all
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"flows.pipeline failed with exit code {proc.returncode}")
    # The flow's summary is the last thing it prints: a JSON object starting on a line of its own.
    start = proc.stdout.rfind("\n{\n") + 1
    return wall, json.loads(proc.stdout[start:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--from-scratch", action="store_true", help="remove dvc.lock and the run cache: every stage reruns")
    ap.add_argument("--no-register", action="store_true")
    args = ap.parse_args()
    if args.from_scratch:  # no lock and no run cache: DVC cannot restore any stage, every one reruns
        (ROOT / "dvc.lock").unlink(missing_ok=True)
        shutil.rmtree(ROOT / ".dvc" / "cache" / "runs", ignore_errors=True)
    extra = ["--no-register"] if args.no_register else []
    wall, summary = run_flow(extra)
    noop_wall, noop = run_flow(["--no-register"])
    stages = {s["stage"]: s["seconds"] for s in summary["stages"]}
    dvc_noop = {s["stage"]: s["seconds"] for s in noop["stages"]}
    register = summary.get("register_seconds", 0.0)
    prefect = wall - sum(stages.values()) - register
    dvc = sum(dvc_noop.values())
    overhead = prefect + dvc
    res = {
        "machine": machine_info(),
        "wall_s": wall,
        "stages_s": stages,
        "registration_s": register,
        "prefect_mlflow_s": prefect,
        "dvc_noop_s": dvc_noop,
        "overhead_s": overhead,
        "overhead_frac": overhead / wall,
        "noop_run_wall_s": noop_wall,
    }
    path = write_json("pipeline", res)
    for name, s in stages.items():
        print(f"  {name:<22}{s:7.1f} s")
    print(
        f"SUMMARY pipeline: {wall:.0f} s end to end ({wall / 60:.1f} min): stages {sum(stages.values()):.0f} s, "
        f"registration {register:.0f} s, overhead {overhead:.0f} s = {100 * overhead / wall:.1f}% (Prefect+MLflow "
        f"{prefect:.0f} s, DVC {dvc:.0f} s); no-op rerun {noop_wall:.0f} s; json={path}"
    )


if __name__ == "__main__":
    main()
