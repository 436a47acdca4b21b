"""The pipeline flow: every DVC stage in order as a named Prefect task, then registration and promotion.

DVC decides what runs: each task is `dvc repro --single-item <stage>` in a subprocess, so a stage whose deps,
params and outs match dvc.lock is skipped whether `dvc repro` or this flow ran last, and the lock stays the
single record of what was built from what. A validation stage that fails stops the flow: nothing after it
runs. A training or data stage that fails (or is killed) leaves the workspace as it was: DVC deletes a stage's
outputs before running it, so the flow restores them, the cached ones with `dvc checkout <stage>` (from the DVC
cache, as dvc.lock records them) and the uncached ones (metrics, plots) from a copy taken before the stage ran.
After the last stage, the reward model, critic and the PPO and DPO actors are registered in MLflow, the actor
with the better gold win-rate against SFT becomes the challenger and its promotion is decided
(tasks/registry.py). One MLflow parent run covers the pipeline run; each stage process that runs opens
its child run under it (RLHF_PARENT_RUN_ID).

    python -m flows.pipeline                     # the whole pipeline, register, promote
    python -m flows.pipeline --no-register       # stages only
    python -m flows.pipeline --stages world prepare
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows import results as pages
from tasks import registry, tracking
from tasks.common import ROOT, workdir
from tasks.summary import numbers as headline_numbers

STAGES = (
    "world",
    "prepare",
    "tokenizer",
    "validate_demos",
    "pretrain",
    "sft",
    "preferences",
    "merge_feedback",
    "validate_preferences",
    "reward_model",
    "dpo",
    "ppo",
    "evaluate",
    "compare_methods",
    "summary",
)
EVAL_METRICS = {"ppo": "eval.json", "dpo": "eval_dpo.json"}
"""each method's actor against SFT, under metrics/ (the evaluate and compare_methods stages)"""
VALIDATION_REPORTS = {
    "validate_demos": "reports/validation/demos.json",
    "validate_preferences": "reports/validation/preferences.json",
}
COMPARATOR = "evaluate"
"""the challenger-vs-champion evaluation: "evaluate" (the evaluate stage's CLI on two checkpoints), or the
import path "module:function" of a (candidate dir, baseline dir) -> eval metrics function"""


class StageFailed(RuntimeError):
    """A stage's command failed; the message carries the end of its output."""


class ValidationFailed(StageFailed):
    """A data validation gate failed: the data needs fixing before anything trains on it."""


def stage_env(root: Path, parent_run_id: str | None) -> dict[str, str]:
    """Environment of the DVC subprocesses: nested MLflow runs, this interpreter's `python` first on PATH."""
    env = tracking.child_env(parent_run_id)
    # DVC runs stage commands with the first `python` on PATH: make it this virtualenv's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    paths = dict.fromkeys([str(root), str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["RLHF_ROOT"] = str(root)  # the stages read and write under the flow's root, whichever checkout it is
    return env


def run_logged(cmd: list[str], root: Path, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run `cmd` in `root`, each output line (stdout and stderr) forwarded as it comes: to the Prefect run's logger
    inside a flow or task run (the UI's Logs tab of that run), else to stdout. Returns the exit code and the lines."""
    log = run_logger()
    lines: list[str] = []
    with subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            if log is not None:
                log.info(line)
            else:
                sys.stdout.write(raw)  # outside Prefect the stage's progress stays visible as it happens
    return proc.returncode, lines


def run_logger() -> Any:
    """The current Prefect flow or task run's logger, or None outside a run. Its level is INFO whatever
    PREFECT_LOGGING_LEVEL says (WARNING quiets Prefect's own chatter): the stages' lines are the runs' news."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        log = get_run_logger()
    except MissingContextError:
        return None
    log.logger.setLevel(min(log.logger.getEffectiveLevel(), logging.INFO))
    return log


def dvc(args: list[str], root: Path, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run `dvc <args>` in `root`, its output forwarded line by line (run_logged)."""
    return run_logged([str(Path(sys.executable).parent / "dvc"), *args], root, env)


def uncached_outputs(root: Path, stage: str) -> list[str]:
    """The outputs of `stage` in dvc.yaml that DVC does not cache (`cache: false`: metrics, plots), which
    `dvc checkout` cannot bring back."""
    spec = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {}).get(stage, {})
    found = []
    for kind in ("outs", "metrics", "plots"):
        for item in spec.get(kind) or []:
            if isinstance(item, dict):
                [(out, opts)] = item.items()
                if (opts or {}).get("cache", True) is False:
                    found.append(out)
    return found


def restore_outputs(stage: str, root: Path, backup: Path) -> str:
    """After `stage` failed: its last good outputs back in place; returns what the failure message should say."""
    code, lines = dvc(["checkout", "--force", stage], root)
    for saved in backup.rglob("*"):
        if saved.is_file():
            target = root / saved.relative_to(backup)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(saved, target)
    if code != 0:
        return (
            f"its uncached outputs were put back, but `dvc checkout {stage}` failed (no earlier run in dvc.lock, or "
            f"its cache is gone): {' '.join(lines[-3:])}"
        )
    return f"the last good outputs of '{stage}' are back in place (dvc checkout {stage}; metrics and plots as before)"


@task(name="dvc-stage", cache_policy=NO_CACHE, persist_result=False)
def run_stage(stage: str, root: str, parent_run_id: str | None) -> dict[str, Any]:
    """`dvc repro --single-item <stage>`: runs the stage only if DVC finds it changed; if it fails, its last good
    outputs are restored (a validation gate's failing report is kept: it is the news)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"rlhf-{stage}-outputs-") as backup:
        for out in uncached_outputs(Path(root), stage) if stage not in VALIDATION_REPORTS else []:
            if (Path(root) / out).is_file():
                (Path(backup) / out).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(root) / out, Path(backup) / out)
        code, lines = dvc(["repro", "--single-item", stage], Path(root), stage_env(Path(root), parent_run_id))
        seconds = time.perf_counter() - t0
        if code != 0:
            tail = "\n".join(collections.deque(lines, maxlen=30))
            if stage in VALIDATION_REPORTS:
                raise ValidationFailed(
                    f"validation '{stage}' failed (see {VALIDATION_REPORTS[stage]}); nothing downstream runs. "
                    f"Fix the data and rerun.\n{tail}"
                )
            restored = restore_outputs(stage, Path(root), Path(backup))
            raise StageFailed(f"stage '{stage}' failed (dvc exit code {code}); {restored}:\n{tail}")
    ran = any(line.startswith("Running stage") for line in lines)
    restored = any("is cached - skipping run" in line for line in lines)
    summary = f"[pipeline] {stage}: {'ran' if ran else 'up to date'} ({seconds:.1f} s)"
    log = run_logger()
    log.info(summary) if log is not None else print(summary, file=sys.stderr)
    return {"stage": stage, "ran": ran, "restored": restored, "seconds": seconds}


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: an I/O failure (a busy SQLite store, an unreachable server) may pass on a second try;
    a failed evaluation or a bad checkpoint would only fail again, slowly."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, OSError):
        return True
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, MlflowException):
        busy = exc.error_code in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
        return busy or "database is locked" in str(exc)
    return isinstance(exc, OperationalError)


@task(
    name="register-models",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=2,
    retry_delay_seconds=3,
    retry_condition_fn=transient,
)
def register_models(root: str, parent_run_id: str | None) -> dict[str, Any]:
    """Register RM, critic and actor (retried on I/O errors: a busy store must not lose a pipeline run)."""
    return asdict(registry.register_pipeline(Path(root), parent_run_id))


@task(
    name="promote-actor",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=2,
    retry_delay_seconds=3,
    retry_condition_fn=transient,
)
def promote_actor(
    actors: dict[str, str], root: str, comparator: str | None, judge: str, parent_run_id: str | None
) -> dict[str, Any]:
    """Pick the challenger among this run's actors (method -> version) by their comparisons with SFT
    (metrics/eval.json for PPO, metrics/eval_dpo.json for DPO) and apply the promotion rule to it (evidence:
    that comparison, or a head-to-head with the champion through `comparator`)."""
    vs_sft = {m: _read_json(Path(root) / "metrics" / EVAL_METRICS[m]) for m in actors}
    method, version = registry.select_challenger(actors, vs_sft, judge)
    compare = load_comparator(comparator, Path(root), parent_run_id)
    extra = {"promotion.method": method, **registry.methods_evidence(vs_sft, judge)}
    decision = registry.promote(version, vs_sft[method], compare, judge=judge, extra_tags=extra)
    return {"version": version, "method": method, **asdict(decision)}


def _read_json(file: Path) -> dict[str, Any] | None:
    return json.loads(file.read_text()) if file.exists() else None


def head_to_head(root: Path, parent_run_id: str | None) -> registry.Comparator:
    """The evaluate stage's CLI on two checkpoints (its run nests under the pipeline run, report included)."""

    def compare(candidate: Path, baseline: Path) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="rlhf-head-to-head-") as out:
            cmd = [sys.executable, "-m", "tasks.evaluate", "--candidate", str(candidate)]
            cmd += ["--baseline", str(baseline), "--out", out]
            code, lines = run_logged(cmd, root, stage_env(root, parent_run_id))
            if code != 0:
                raise StageFailed("head-to-head evaluation failed:\n" + "\n".join(lines[-40:]))
            return json.loads((Path(out) / "eval.json").read_text())

    return compare


def load_comparator(spec: str | None, root: Path, parent_run_id: str | None) -> registry.Comparator | None:
    """COMPARATOR's spec -> the function; None when not given (fine until a champion exists)."""
    if not spec:
        return None
    if spec == "evaluate":
        return head_to_head(root, parent_run_id)
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"comparator '{spec}': cannot load it ({e}); expected 'package.module:function'") from e


def run_stages(stages: list[str], root: Path, parent: tracking.Tracker) -> list[dict[str, Any]]:
    results = []
    for stage in stages:
        try:
            results.append(run_stage.with_options(name=f"stage-{stage}")(stage, str(root), parent.run_id))
        except StageFailed:
            parent.set_tags({"rlhf.failed_stage": stage})
            raise
        finally:
            # A gate's report, pass or fail, goes with the pipeline run (the gate itself does not track).
            if stage in VALIDATION_REPORTS and (root / VALIDATION_REPORTS[stage]).exists():
                parent.log_artifact(root / VALIDATION_REPORTS[stage], "validation")
    return results


@flow(name="rlhf-pipeline", persist_result=False)
def pipeline_flow(
    root: str = str(workdir()),
    stages: list[str] | None = None,
    registration: bool = True,
    comparator: str | None = COMPARATOR,
    judge: str = "gold",
) -> dict[str, Any]:
    """Run the stages (DVC skips the unchanged ones), then register the models and decide the promotion."""
    t0 = time.perf_counter()
    stages = list(stages or STAGES)
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; the stages are {list(STAGES)}")
    name = f"pipeline {flow_run.get_name() or ''}".strip()
    with tracking.pipeline_run(name, tags={"prefect.flow_run_id": str(flow_run.get_id())}) as parent:
        results = run_stages(stages, Path(root), parent)
        summary: dict[str, Any] = {"parent_run_id": parent.run_id, "stages": results}
        # The verdict on this run's row of the runs table, whether or not the summary stage had to run.
        timing = headline_numbers(pages.read_summary(Path(root)))
        timing |= {f"pipeline/seconds/{r['stage']}": r["seconds"] for r in results}
        parent.set_tags({"rlhf.stages_ran": ",".join(r["stage"] for r in results if r["ran"]) or "none"})
        if registration and stages[-1] == STAGES[-1]:
            if not tracking.enabled():
                print("[pipeline] tracking is off (RLHF_TRACKING): nothing registered", file=sys.stderr)
            else:
                t1 = time.perf_counter()
                summary["registered"] = registered = register_models(root, parent.run_id)
                if registered["new_actor"] or registered["new_dpo_actor"]:
                    actors = {"ppo": registered["actor"]}
                    actors |= {"dpo": registered["dpo_actor"]} if registered["dpo_actor"] else {}
                    summary["promotion"] = promote_actor(actors, root, comparator, judge, parent.run_id)
                    timing["headline/promoted"] = float(summary["promotion"]["promote"])
                    parent.set_tags(promotion_tags(summary["promotion"]))
                timing["pipeline/seconds/register"] = summary["register_seconds"] = time.perf_counter() - t1
        timing["pipeline/seconds/total"] = time.perf_counter() - t0
        parent.log_metrics(timing, step=0)
        summary["seconds"] = timing["pipeline/seconds/total"]
    publish(pages.publish_pipeline, summary, Path(root))
    return summary


def promotion_tags(decision: dict[str, Any]) -> dict[str, str]:
    """The decision on the pipeline run's row of the MLflow runs table."""
    verdict = "promoted" if decision["promote"] else "not promoted"
    return {
        "rlhf.promotion": f"v{decision['version']} ({decision['method']}) {verdict}",
        "rlhf.promotion_reason": decision["reason"],
    }


def publish(fn: Any, summary: dict[str, Any], root: Path) -> None:
    """Publish the run's Prefect artifacts (flows/results.py); a failure to build a page is a warning in the run's
    logs, not a failed run: the models are trained and registered by then."""
    try:
        fn(summary, root)
    except Exception as e:  # any failure of the page: reported, not raised
        message = f"[pipeline] could not publish the run's result artifacts: {type(e).__name__}: {e}"
        log = run_logger()
        log.warning(message) if log is not None else print(message, file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", choices=STAGES, metavar="STAGE", help="only these (default: all)")
    parser.add_argument("--no-register", action="store_true", help="skip registration and promotion")
    parser.add_argument("--comparator", default=COMPARATOR, help="challenger-vs-champion evaluation function")
    args = parser.parse_args()
    t0 = time.perf_counter()
    summary = pipeline_flow(stages=args.stages, registration=not args.no_register, comparator=args.comparator)
    total = time.perf_counter() - t0
    summary["prefect_overhead_seconds"] = total - summary["seconds"]
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
