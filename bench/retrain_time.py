"""Retraining with one new feedback file: which stages rerun, and what they cost, against the split's absence.

    python bench/retrain_time.py --source CHECKOUT [--dest COPY] [--pairs 150]

CHECKOUT is a repository whose whole pipeline has run (outputs, `.dvc/cache`, `mlflow/`); it is copied to COPY
(default: a new folder under /tmp) and left alone. In the copy, as a user would: one file of new preference pairs
goes into data/incoming/ (the fault drill's pairs: demonstrations as chosen, their first three words as
rejected), `python -m flows.retrain --no-pipeline` gates and accepts it into data/feedback/, `dvc status` says
which stages changed, and `python -m flows.retrain` retrains (DVC skips what did not change), registers and
promotes. Prints the stages with their seconds (the flow's own timings) and the 1-minute load average sampled
during the retrain, and writes them to bench/out/retrain_time.json (the flows' logs: retrain-logs/ beside COPY).

"Before the split" the collection of pairs and the merge of feedback were one stage, so new feedback also reran
the collection: its cost is the `pipeline/seconds/preferences` of the source's pipeline runs that ran it (from
its MLflow database, each printed), added to this retrain's. Times taken on a shared machine are only as good as
its load says; the load is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:  # `python bench/retrain_time.py` from the repo root
    sys.path.insert(0, str(BENCH.parent))

from bench.common import machine_info, write_json  # noqa: E402
from bench.fault_drill import PY, drop_incoming, env_for  # noqa: E402

SKIP = shutil.ignore_patterns(".venv", "__pycache__", ".pytest_cache", ".ruff_cache")


def copy_checkout(source: Path, dest: Path) -> None:
    """The whole checkout but its virtualenv (this interpreter runs the copy's code through PYTHONPATH)."""
    shutil.copytree(source, dest, symlinks=True, ignore=SKIP)


def changed_stages(status: str) -> list[str]:
    """The stage names `dvc status` lists (lines `name:` at the left margin; `changed deps:` lines are indented)."""
    return [line[:-1] for line in status.splitlines() if line.endswith(":") and not line[:1].isspace()]


class LoadSampler(threading.Thread):
    """The 1-minute load average every `every` seconds until stopped."""

    def __init__(self, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.every, self.samples, self._stop_event = every, [], threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop_event.wait(self.every)

    def stop(self) -> dict[str, float]:
        self._stop_event.set()
        self.join()
        s = self.samples
        return {"min": min(s), "mean": round(sum(s) / len(s), 2), "max": max(s), "samples": len(s)}


def collection_seconds(root: Path) -> dict[str, float]:
    """`pipeline/seconds/preferences` of each pipeline run in root's MLflow database that ran the stage (a skipped
    stage takes about a second), by run name: the cost the retrain paid before the split, idle or loaded."""
    db = root / "mlflow/mlflow.db"
    if not db.exists():
        return {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        rows = con.execute(
            "SELECT r.name, m.value FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
            "WHERE m.key = 'pipeline/seconds/preferences' AND m.value > 5 ORDER BY r.start_time"
        ).fetchall()
    return {name: round(value, 1) for name, value in rows}


def flow(root: Path, args: list[str], log: Path) -> tuple[float, str]:
    """Run `python -m flows.retrain ARGS` in root; (seconds, stdout). A failure stops the benchmark."""
    t0 = time.perf_counter()
    with open(log, "w") as err:
        done = subprocess.run(
            [PY, "-m", "flows.retrain", *args],
            cwd=root,
            env=env_for(root),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    if done.returncode:
        sys.exit(f"python -m flows.retrain {' '.join(args)} failed (exit {done.returncode}): see {log}")
    return time.perf_counter() - t0, done.stdout


def last_json(stdout: str) -> dict:
    """The flow's summary: the JSON object its main prints last."""
    return json.loads(stdout[stdout.index("\n{") + 1 :] if not stdout.startswith("{") else stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="a checkout whose pipeline has run (not modified)")
    parser.add_argument("--dest", type=Path, help="where to copy it (default: a new folder under /tmp)")
    parser.add_argument("--pairs", type=int, default=150, help="pairs in the feedback file (at most; default 150)")
    args = parser.parse_args()
    dest = args.dest or Path(tempfile.mkdtemp(prefix="retrain-")) / "repo"
    if dest.exists() and any(dest.iterdir()):
        sys.exit(f"{dest} exists: give a new --dest (the benchmark needs an untouched copy)")
    copy_checkout(args.source.resolve(), dest)
    logs = dest.parent / "retrain-logs"
    logs.mkdir(exist_ok=True)

    n = drop_incoming(dest, args.pairs)
    gate_s, out = flow(dest, ["--no-pipeline"], logs / "accept.log")
    accepted = last_json(out)["accepted"]
    status = subprocess.run(["dvc", "status"], cwd=dest, env=env_for(dest), capture_output=True, text=True).stdout
    sampler = LoadSampler()
    sampler.start()
    retrain_s, out = flow(dest, [], logs / "retrain.log")
    load = sampler.stop()

    pipeline = last_json(out)["pipeline"]
    stages = [{k: r[k] for k in ("stage", "ran", "seconds")} for r in pipeline["stages"]]
    before = collection_seconds(args.source.resolve())
    result = {
        "copy": str(dest),
        "pairs": n,
        "accepted": accepted,
        "gate_seconds": round(gate_s, 1),
        "dvc_status_changed": changed_stages(status),
        "dvc_status": status,
        "ran": [s["stage"] for s in stages if s["ran"]],
        "stages": stages,
        "register_and_promote_seconds": pipeline.get("register_seconds"),
        "flow_seconds": round(pipeline["seconds"], 1),
        "retrain_seconds": round(retrain_s, 1),
        "load_1min": load,
        "collection_seconds_before_split": before,
        "machine": machine_info(),
    }
    write_json("retrain_time", result)
    print(f"{n} pairs; gate + accept {gate_s:.0f} s; dvc status listed {result['dvc_status_changed']}")
    print(f"{'stage':22} {'ran':5} seconds")
    for s in stages:
        print(f"{s['stage']:22} {'yes' if s['ran'] else 'no':5} {s['seconds']:.1f}")
    print(f"retrain (python -m flows.retrain) {retrain_s:.0f} s, load average (1 min) {load['min']}-{load['max']}")
    for run, seconds in before.items():
        print(f"before the split the collection reran too: {seconds:.0f} s in {run!r}, {retrain_s + seconds:.0f} s")


if __name__ == "__main__":
    main()
