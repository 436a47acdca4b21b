"""Fault drill: kill -9 during `ppo` inside the retraining flow, rerun the flow, check it is as if nothing happened.

    python bench/fault_drill.py --tiny             # a fresh clone at the test suite's toy sizes (a few minutes)
    python bench/fault_drill.py --root COPY        # a copy of a repository whose pipeline has run (default world)

Steps: (1) with --tiny, run the pipeline flow once; (2) drop new preference pairs into data/incoming/ (demonstrations
as chosen, their first three words as rejected) and start `python -m flows.retrain`; (3) as soon as PPO has written
a checkpoint, kill -9 the `python -m tasks.ppo` process of that root (found by its working directory, never by
name alone); (4) check that the flow failed saying the last good outputs are back, and that they are; (5) rerun
the flow: it must resume PPO and finish; (6) print the MLflow runs (none left RUNNING, the PPO run whole) and the
actor's registry versions; (7) rerun PPO uninterrupted in a copy (`dvc repro -f --single-item ppo`, tracking off)
and compare the weights and metrics with the resumed run's. Logs and the summary go to <root>/../drill/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def env_for(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RLHF_ROOT", "RLHF_PARAMS", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONPATH=str(root), PREFECT_HOME=str(root.parent / "prefect"), PREFECT_LOGGING_LEVEL="WARNING")
    env["PATH"] = f"{Path(PY).parent}{os.pathsep}{env['PATH']}"
    return {**env, **extra}


def run(root: Path, args: list[str], log: Path, **extra: str) -> int:
    t0 = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run([PY, *args], cwd=root, env=env_for(root, **extra), stdout=out, stderr=out).returncode
    print(f"$ python {' '.join(args)} -> exit {code} ({time.perf_counter() - t0:.0f} s; {log})", flush=True)
    return code


def tiny_clone(where: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.test_dvc import fresh_clone

    clone = fresh_clone(where)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["ppo"].update({"iterations": 12, "checkpoint_every": 4, "snapshot_every": 4})
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return clone


def drop_incoming(root: Path, n: int = 60) -> int:
    demos = [json.loads(line) for line in (root / "data/prepared/demos.jsonl").read_text().splitlines() if line]
    rows = [
        {"prompt": d["prompt"], "chosen": d["response"], "rejected": " ".join(d["response"].split()[:3])}
        for d in demos[-n:]
        if len(d["response"].split()) > 4
    ]
    (root / "data/incoming").mkdir(parents=True, exist_ok=True)
    (root / "data/incoming/drill_pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def ppo_pid(root: Path) -> int | None:
    """The `python -m tasks.ppo` process working in `root` (other checkouts' PPO runs are left alone)."""
    for entry in Path("/proc").iterdir():
        try:
            cmd, cwd = (entry / "cmdline").read_bytes().split(b"\0"), os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == str(root) and b"tasks.ppo" in cmd:
            return int(entry.name)
    return None


def kill_during_ppo(root: Path, log: Path) -> dict:
    state = root / "state/ppo/checkpoint/state.json"
    with open(log, "w") as out:
        flow = subprocess.Popen([PY, "-m", "flows.retrain"], cwd=root, env=env_for(root), stdout=out, stderr=out)
        while not (state.exists() and (pid := ppo_pid(root))):
            if flow.poll() is not None:
                raise RuntimeError(f"the retraining flow ended before PPO wrote a checkpoint: {log}")
            time.sleep(0.5)
        iteration = json.loads(state.read_text())["meta"]["iteration"]
        os.kill(pid, signal.SIGKILL)
        code = flow.wait()
    said = [line for line in log.read_text().splitlines() if "failed (dvc exit code" in line]
    return {"killed_pid": pid, "checkpoint_iteration": iteration, "flow_exit": code, "message": said[:1]}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def mlflow_summary(root: Path) -> dict:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow/mlflow.db'}")
    exp = client.get_experiment_by_name("rlhf")
    runs = client.search_runs([exp.experiment_id], max_results=500, order_by=["attributes.start_time ASC"])
    ppo = [r for r in runs if r.info.run_name == "ppo"][-1]
    steps = sorted(m.step for m in client.get_metric_history(ppo.info.run_id, "objective/kl"))
    versions = client.search_model_versions("name = 'rlhf-actor'")
    return {
        "runs": [f"{r.info.run_name} {r.info.status} resumed={r.data.tags.get('rlhf.resumed', '-')}" for r in runs],
        "running": sum(r.info.status == "RUNNING" for r in runs),
        "last_ppo_run_steps": steps,
        "actor_versions": {
            str(v.version): {k: v.tags.get(f"promotion.{k}") for k in ("promote", "baseline", "superseded_by")}
            | {"aliases": list(v.aliases)}
            for v in versions
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--tiny", type=Path, metavar="DIR", help="work in DIR (created): a toy-size fresh clone")
    group.add_argument("--root", type=Path, help="a copy of a repository whose pipeline has run")
    args = parser.parse_args()
    root = tiny_clone(args.tiny) if args.tiny else args.root.resolve()
    logs = root.parent / "drill"
    logs.mkdir(exist_ok=True)
    if args.tiny:
        run(root, ["-m", "flows.pipeline"], logs / "1_pipeline.log")
    before = {p: sha(root / p) for p in ("models/ppo/actor/model.safetensors", "metrics/ppo.json")}
    summary: dict = {"new_pairs": drop_incoming(root), "killed": kill_during_ppo(root, logs / "2_killed.log")}
    summary["outputs_restored"] = {p: sha(root / p) == h for p, h in before.items() if (root / p).exists()}
    summary["rerun_exit"] = run(root, ["-m", "flows.retrain"], logs / "3_rerun.log")
    summary["mlflow"] = mlflow_summary(root)
    twin = root.parent / "uninterrupted"
    shutil.rmtree(twin, ignore_errors=True)
    shutil.copytree(root, twin, symlinks=True, ignore=shutil.ignore_patterns("state"))
    run(twin, ["-m", "dvc", "repro", "-f", "--single-item", "ppo"], logs / "4_uninterrupted.log", RLHF_TRACKING="off")
    out = ("models/ppo/actor/model.safetensors", "metrics/ppo.json")
    summary["resumed_equals_uninterrupted"] = {p: sha(root / p) == sha(twin / p) for p in out[:1]}
    a, b = (json.loads((r / out[1]).read_text()) for r in (root, twin))
    summary["ppo_metrics"] = {k: (a[k], b[k]) for k in ("kl", "rm_score", "gold_score", "iterations") if k in a}
    (logs / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
