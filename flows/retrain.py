"""The retraining flow: preference data dropped in data/incoming/ -> validated -> data/feedback/ -> pipeline.

Its first task exports the rankings finished in the labeling app (bin/label) into data/incoming/.

Each incoming file (.jsonl, .json, .parquet, .csv) goes through the data gate (`python -m tasks.validate
preferences --input FILE --import-format auto --existing ...`, non-zero exit = rejected): the file is imported
exactly as the preferences stage will import it (TRL, Anthropic-HH or ranked), and its pairs are checked with
the preference suite and against the pairs already accepted (data/preferences/pairs.parquet and
data/feedback/, including files accepted earlier in the same run): a repeat of an accepted pair or the opposite
judgement of one rejects the file; failures name lines of the user's file. Accepted files move into
data/feedback/ and are tracked
by DVC one by one (`dvc add`, then `git add` the .dvc file); the merge_feedback stage merges that folder, so DVC
sees its deps changed and the pipeline flow retrains from there on, evaluates, registers and promotes.
Rejected files move to data/incoming/rejected/ beside their validation report, so a schedule does not retry
them forever, and the good files of the same batch go on. With no new file nothing runs, unless feedback
accepted earlier has not been trained on yet (its pipeline failed or was killed): then the pipeline runs again.

    python -m flows.retrain                                # once, now
    python -m flows.retrain --serve --cron "0 3 * * *"     # a deployment with a schedule (needs a Prefect
                                                           # server: `prefect server start`, PREFECT_API_URL)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import prefect
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import results as pages
from flows.pipeline import COMPARATOR, dvc, pipeline_flow, publish, run_logged, run_logger, stage_env
from rlhf.checkpoint import file_hash
from tasks.common import workdir

INCOMING, FEEDBACK = "data/incoming", "data/feedback"
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
PAIRS = "data/preferences/pairs.parquet"
GATE_INPUTS = {"tokenizer": "data/tokenizer/tokenizer.json", "eval_prompts": "data/prepared/prompts_eval.jsonl"}
# The preference gate on one file; a feedback file may be small, hence --min-rows 1 (validate.min_pairs is
# for the whole merged set, which the validate_preferences stage checks again).
VALIDATE_CMD = (
    "python -m tasks.validate preferences --input {input} --import-format auto --tokenizer {tokenizer} "
    "--eval-prompts {eval_prompts} --min-rows 1 --report-dir {reports} --existing {existing}"
)
"""{input} and {reports} are filled in per file, {tokenizer} and {eval_prompts} from the pipeline, {existing}
(several arguments) with the preference files already accepted"""


def incoming_files(root: Path, where: str = INCOMING) -> list[Path]:
    """The preference files in `where` (default data/incoming/), sorted."""
    folder = root / where
    return sorted(p for p in folder.glob("*") if p.is_file() and p.suffix in SUFFIXES) if folder.exists() else []


@task(name="validate-incoming", cache_policy=NO_CACHE, persist_result=False)
def validate_file(file: str, root: str, validate_cmd: list[str]) -> dict[str, Any]:
    """Run the data gate on one file; its report goes to reports/validation/incoming/<file stem>/."""
    reports = Path(root) / "reports" / "validation" / "incoming" / Path(file).stem
    reports.mkdir(parents=True, exist_ok=True)
    fill = {"input": file, "reports": reports, **GATE_INPUTS}
    cmd = []
    for arg in validate_cmd:
        cmd += accepted_files(Path(root)) if arg == "{existing}" else [arg.format(**fill)]
    code, _ = run_logged(cmd, Path(root), stage_env(Path(root), None))  # the gate's report reaches the run's logs
    if code != 0:
        run_logger().warning(f"[retrain] rejected {file} (report: {reports})")
    return {"file": file, "valid": code == 0, "reports": str(reports)}


def accepted_files(root: Path) -> list[str]:
    """The preference data already accepted: the last merged pairs and every feedback file (some of them are
    in both; the gate counts a pair once)."""
    files = [PAIRS] if (root / PAIRS).exists() else []
    return files + [str(p.relative_to(root)) for p in incoming_files(root, FEEDBACK)]


def feedback_name(file: Path) -> str:
    """data/feedback/<content hash>_<name>: never overwrites feedback, and a file sent twice lands once."""
    return f"{FEEDBACK}/{file_hash(file)[:12]}_{file.name}"


def feedback_pending(root: Path) -> bool:
    """Feedback accepted by an earlier run whose pipeline did not finish (failed or killed, at any stage): with
    feedback present and the pipeline not up to date (`dvc status`), this run retrains although nothing new
    arrived."""
    if not incoming_files(root, FEEDBACK):
        return False
    code, lines = dvc(["status", "--json"], root)
    return code == 0 and json.loads("".join(lines) or "{}") != {}


@task(name="accept-feedback", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=2)
def accept(file: str, dest: str, root: str) -> str:
    """Move a valid file to `dest` in data/feedback/ and track it with DVC (safe to retry)."""
    rootp = Path(root)
    src, target = Path(file), rootp / dest
    target.parent.mkdir(parents=True, exist_ok=True)
    if src.exists():
        shutil.move(src, target)
    code, lines = dvc(["add", "--quiet", dest], rootp)
    if code != 0:
        raise RuntimeError(f"`dvc add {dest}` failed:\n" + "\n".join(lines[-20:]))
    # Staged, not committed: the .dvc file and the .gitignore entry belong in the next commit.
    git = shutil.which("git")
    if git and (rootp / ".git").exists():
        gitignore = str(Path(dest).parent / ".gitignore")
        subprocess.run([git, "add", f"{dest}.dvc", gitignore], cwd=rootp, check=False, capture_output=True)
    return dest


@task(name="reject-incoming", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=2)
def reject(file: str, reports: str, root: str) -> str:
    """Move an invalid file and its validation report to data/incoming/rejected/<name>/ (safe to retry)."""
    dest = Path(root) / INCOMING / "rejected" / Path(file).name
    dest.mkdir(parents=True, exist_ok=True)
    if Path(file).exists():
        shutil.move(file, dest / Path(file).name)
    shutil.copytree(reports, dest / "validation", dirs_exist_ok=True)
    return str(dest.relative_to(root))


@task(name="export-labels", cache_policy=NO_CACHE, persist_result=False)
def export_labels(root: str) -> dict[str, Any]:
    """Rankings finished in the labeling app (bin/label) since the last export -> data/incoming/, so a
    scheduled run needs no person; nothing when there is no labeling database."""
    from tasks.labeling.export import export_all

    return export_all(root=Path(root))


@flow(name="rlhf-retrain", persist_result=False)
def retrain_flow(
    root: str = str(workdir()),
    validate_cmd: list[str] | None = None,
    run_pipeline: bool = True,
    comparator: str | None = COMPARATOR,
) -> dict[str, Any]:
    """Export new labels, validate and accept the incoming preference files; if any was accepted, run the
    pipeline."""
    labels = export_labels(root)
    files = incoming_files(Path(root))
    missing = [p for p in GATE_INPUTS.values() if not (Path(root) / p).exists()]
    if files and validate_cmd is None and missing:
        raise FileNotFoundError(
            f"the data gate needs {missing}: run the pipeline once first (python -m flows.pipeline)"
        )
    summary: dict[str, Any] = {"labels": labels, "accepted": [], "rejected": []}
    for f in files:
        checked = validate_file(str(f), root, validate_cmd or VALIDATE_CMD.split())
        if checked["valid"]:
            summary["accepted"].append(accept(str(f), feedback_name(f), root))
        else:
            summary["rejected"].append(reject(str(f), checked["reports"], root))
    if run_pipeline and (summary["accepted"] or feedback_pending(Path(root))):
        summary["pipeline"] = pipeline_flow(root=root, comparator=comparator)
    elif not files:
        print(f"[retrain] nothing new in {INCOMING}/", file=sys.stderr)
    publish(pages.publish_retrain, summary, Path(root))
    return summary


def deployment(cron: str) -> Any:
    """The retraining flow as a deployment on a cron schedule, one run at a time (two runs at once would
    contend for DVC's repository lock; a run due while one is going waits for it)."""
    return retrain_flow.to_deployment(name="rlhf-retrain", cron=cron, concurrency_limit=1)


def serve(cron: str) -> None:
    """Serve the scheduled deployment from this process (blocks; Ctrl-C pauses the schedule and stops)."""
    if not os.environ.get("PREFECT_API_URL"):
        sys.exit(
            "Scheduling needs a running Prefect server (the ephemeral one cannot schedule): start "
            "`prefect server start --host 127.0.0.1` and set PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    prefect.serve(deployment(cron))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", action="store_true", help="serve a scheduled deployment instead of one run")
    parser.add_argument("--cron", default="0 3 * * *", help="schedule of --serve (default: 03:00 daily)")
    parser.add_argument("--no-pipeline", action="store_true", help="only validate and accept the files")
    args = parser.parse_args()
    if args.serve:
        serve(args.cron)
    else:
        print(json.dumps(retrain_flow(run_pipeline=not args.no_pipeline), indent=2, default=str))


if __name__ == "__main__":
    main()
