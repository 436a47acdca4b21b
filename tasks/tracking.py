"""MLflow plumbing of stages and flows: where runs go, one parent run per pipeline, a child run per stage.

Nothing happens at import: the store is chosen when a run starts, so tests and tools can set the environment
first. The store is `MLFLOW_TRACKING_URI` when set (a server, or another database), else the embedded SQLite
database `mlflow/mlflow.db` with artifacts under `mlflow/artifacts/`.

Nesting across processes: the pipeline flow opens the parent run and exports its id as RLHF_PARENT_RUN_ID to
the stage processes (`dvc repro` passes its environment on to the stage commands); a stage finding it opens
its run as a child of it, and a stage run alone (`dvc repro`, `python -m tasks.x`) is a top-level run.
RLHF_TRACKING=off turns every Tracker into a no-op, so stages can be unit-tested without a store.

Tracker methods go through `MlflowClient` with an explicit run id rather than MLflow's fluent API, whose one
"active run" per thread would collide with the runs that registration opens in the flow's process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tasks.common import ROOT, workdir
from tasks.mlflow_store import repoint_artifacts

PARENT_ENV = "RLHF_PARENT_RUN_ID"
SWITCH_ENV = "RLHF_TRACKING"
DEFAULT_EXPERIMENT = "rlhf"
_MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit
_MAX_PARAM_LEN = 6000  # MLflow 3's param value limit on SQL stores


def enabled() -> bool:
    """False when RLHF_TRACKING is off/0/false/no."""
    return os.environ.get(SWITCH_ENV, "on").strip().lower() not in {"off", "0", "false", "no"}


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or the embedded SQLite store of the working root (the repo, or RLHF_ROOT)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workdir() / 'mlflow' / 'mlflow.db'}"


def artifact_location(uri: str) -> str | None:
    """Artifacts beside a SQLite database (`<db dir>/artifacts`); a server chooses its own (None)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.resolve().parent / "artifacts").as_uri()
    return None


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def setup() -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    import mlflow

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        if db.exists():
            moved = repoint_artifacts(db)  # a copied or moved checkout writes into itself
            for old, new in moved.items():
                print(f"[mlflow] this store was made in another folder: artifacts {old} -> {new}", file=sys.stderr)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    name = experiment_name()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(uri))
    except MlflowException as e:
        # Two processes may create it at once: the loser reads the winner's experiment.
        if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        return client.get_experiment_by_name(name).experiment_id


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"ppo": {"lr": 1e-5}} -> {"ppo.lr": "1e-05"}; lists and scalars become strings."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:_MAX_PARAM_LEN]
    return flat


def git_commit(root: Path = ROOT) -> str:
    """HEAD's sha, or "none" (no commits yet, or not a git checkout)."""
    proc = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "HEAD"], cwd=root, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else "none"


def base_tags(stage: str) -> dict[str, str]:
    """Stage and commit, and the process that owns the run: a run left RUNNING by a process that is gone
    (kill -9, power loss) is recognised by them and ended by `end_orphans`."""
    owner = {OWNER_HOST: socket.gethostname(), OWNER_PID: str(os.getpid())}
    return {"rlhf.stage": stage, "rlhf.git_commit": git_commit(), **owner}


OWNER_HOST, OWNER_PID = "rlhf.host", "rlhf.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def end_orphans(client: Any, experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of this experiment whose owning process (same host, by pid) is gone; returns
    their ids. Runs of other hosts are left alone (their owner cannot be checked from here), as are runs
    without the owner tags."""
    host, orphans = socket.gethostname(), []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        pid = tags.get(OWNER_PID, "")
        if tags.get(OWNER_HOST) == host and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            client.set_terminated(run.info.run_id, "KILLED")
            client.set_tag(run.info.run_id, "rlhf.ended_by", "end_orphans: its process was gone")
            orphans.append(run.info.run_id)
    return orphans


class Tracker:
    """Logs to one run; with run_id None (tracking off) every method does nothing."""

    def __init__(self, run_id: str | None = None, client: Any = None):
        self.run_id = run_id
        self._client = client

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """The core's `log(metrics, step)` callable: one batch (one DB transaction) per call."""
        if not self.active:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
        self._client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nested sections are flattened to dotted keys (`ppo.lr`)."""
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import RunTag

        self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file, or a directory's contents, under `artifact_path` of the run."""
        if not self.active:
            return
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """A JSON/YAML artifact (by the file's extension) written from a dict."""
        if self.active:
            self._client.log_dict(self.run_id, obj, artifact_file)


NULL_TRACKER = Tracker()


_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")
"""a Markdown link or image: [text](target) / ![alt](target)"""


# The artifact view is narrower than the PPO grid: plots shrink to fit rather than being cut off on the right.
_PAGE_STYLE = (
    "<style>body{font-family:system-ui,sans-serif} img{max-width:100%} table{border-collapse:collapse}"
    " th,td{border:1px solid #ccc;padding:2px 8px}</style>"
)


def write_bundle(report_dir: Path, plots: list[Path], out: Path) -> list[Path]:
    """A report folder made self-contained in `out`: its files, the plots under `plots/`, each Markdown page
    with the links to those plots rewritten to `plots/<name>` (they point outside the folder, `../../plots/…`),
    and beside each page an HTML copy with the images inlined, which MLflow's artifact view renders (it shows
    Markdown as text). Returns the plots that exist (a plot not made yet is left out)."""
    import base64

    import markdown

    here = [p.resolve() for p in plots if p.exists()]
    shutil.copytree(report_dir, out, dirs_exist_ok=True)
    for plot in here:
        (out / "plots").mkdir(exist_ok=True)
        shutil.copy2(plot, out / "plots" / plot.name)
    for page in sorted(report_dir.rglob("*.md")):

        def local(m: re.Match[str], page: Path = page) -> str:
            target = (page.parent / m[2]).resolve()
            if target not in here:
                return m[0]
            return (
                f"{m[1]}{os.path.relpath(out / 'plots' / target.name, out / page.relative_to(report_dir).parent)}{m[3]}"
            )

        text = _LINK.sub(local, page.read_text(encoding="utf-8"))
        copy = out / page.relative_to(report_dir)
        copy.write_text(text, encoding="utf-8")

        def inline(m: re.Match[str], folder: Path = copy.parent) -> str:
            image = folder / m[2]
            if not (m[1].startswith("!") and image.suffix == ".png" and image.is_file()):
                return m[0]
            return f"{m[1]}data:image/png;base64,{base64.b64encode(image.read_bytes()).decode()}{m[3]}"

        body = markdown.markdown(_LINK.sub(inline, text), extensions=["tables"])
        page_html = f"<!doctype html><meta charset=utf-8>{_PAGE_STYLE}\n{body}\n"
        copy.with_suffix(".html").write_text(page_html, encoding="utf-8")
    return here


def log_report_bundle(tracker: Tracker, report_dir: Path, plots: list[Path], artifact_path: str = "report") -> None:
    """Log a report folder (report.md, results, samples) with the plots it shows, so that its images resolve
    inside the run's artifact view (`write_bundle`), under `artifact_path` of the run."""
    if not tracker.active:
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rlhf-report-") as tmp:
        write_bundle(Path(report_dir), [Path(p) for p in plots], Path(tmp) / "bundle")
        tracker.log_artifact(Path(tmp) / "bundle", artifact_path)


RUN_ID_FILE = "mlflow_run.json"
"""beside a stage's training state: the MLflow run a resumed stage continues"""


def _run_record(params: Mapping[str, Any], run_id: str) -> dict[str, str]:
    return {"run_id": run_id, "tracking_uri": tracking_uri(), "params": json.dumps(flatten(params), sort_keys=True)}


def _resumable_run(client: Any, state_dir: Path | None, params: Mapping[str, Any]) -> str | None:
    """The unfinished run recorded in state_dir by an interrupted run of this stage with the same params, if the
    store still has it."""
    from mlflow.exceptions import MlflowException

    record = state_dir / RUN_ID_FILE if state_dir is not None else None
    if record is None or not record.exists():
        return None
    saved = json.loads(record.read_text(encoding="utf-8"))
    if saved != _run_record(params, saved.get("run_id", "")):
        return None
    try:
        run = client.get_run(saved["run_id"])
    except MlflowException:
        return None
    return run.info.run_id if run.info.status != "FINISHED" else None


@contextlib.contextmanager
def stage_run(
    stage: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None, state_dir: Path | None = None
) -> Iterator[Tracker]:
    """The MLflow run of one stage process: a child of RLHF_PARENT_RUN_ID if set, else a top-level run.

    Logs the flattened params and the stage/git tags; the run ends FINISHED, or FAILED if the block raises.
    Runs of processes that died without ending theirs are marked KILLED first. With `state_dir` (where the
    stage keeps its resumable training state) the run's id is recorded there, and a stage resuming after an
    interruption continues that run, so its curves are whole (tagged `rlhf.resumed`).
    """
    if not enabled():
        yield NULL_TRACKER
        return
    import mlflow

    exp_id = setup()
    client = mlflow.MlflowClient()
    end_orphans(client, exp_id)
    resumed = _resumable_run(client, state_dir, params)
    if resumed is not None:
        with mlflow.start_run(run_id=resumed) as run:
            tracker = Tracker(run.info.run_id, client)
            moved = {}
            parent = os.environ.get(PARENT_ENV)
            if parent and parent != run.data.tags.get("mlflow.parentRunId"):
                # under the pipeline run that finishes it; the interrupted pipeline run keeps a pointer
                before = run.data.tags.get("mlflow.parentRunId")
                moved = {"mlflow.parentRunId": parent, **({"rlhf.resumed_from_parent": before} if before else {})}
            tracker.set_tags({**base_tags(stage), **(tags or {}), "rlhf.resumed": "true", **moved})
            yield tracker
        return
    parent = os.environ.get(PARENT_ENV) or None
    if parent is not None:
        from mlflow.exceptions import MlflowException

        try:
            exp_id = client.get_run(parent).info.experiment_id  # a child lives in its parent's experiment
        except MlflowException as e:
            raise RuntimeError(
                f"{PARENT_ENV}={parent} is not a run of {tracking_uri()}: unset it (a leftover of another "
                "shell?) or point MLFLOW_TRACKING_URI at the pipeline's store"
            ) from e
    run_tags = {**base_tags(stage), **(tags or {})}
    with mlflow.start_run(experiment_id=exp_id, run_name=stage, parent_run_id=parent, tags=run_tags) as run:
        tracker = Tracker(run.info.run_id, client)
        tracker.log_params(params)
        if state_dir is not None:
            from rlhf.io import write_json

            write_json(state_dir / RUN_ID_FILE, _run_record(params, run.info.run_id))
        yield tracker


@contextlib.contextmanager
def pipeline_run(
    name: str, params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None
) -> Iterator[Tracker]:
    """The parent run of one pipeline run; pass `child_env(tracker.run_id)` to the stage processes.

    Created through the client (not the fluent API) so that no thread-local "active run" is left behind.
    The run ends FINISHED, FAILED if the block raises, KILLED on Ctrl-C.
    """
    if not enabled():
        yield NULL_TRACKER
        return
    import mlflow

    exp_id = setup()
    client = mlflow.MlflowClient()
    end_orphans(client, exp_id)
    run = client.create_run(
        exp_id, run_name=name, tags={"mlflow.runName": name, **base_tags("pipeline"), **(tags or {})}
    )
    tracker = Tracker(run.info.run_id, client)
    status = "FAILED"
    try:
        tracker.log_params(params or {})
        yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(run.info.run_id, status)


def child_env(parent_run_id: str | None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a stage process nested under run `parent_run_id` (unchanged for None)."""
    out = dict(os.environ if env is None else env)
    if parent_run_id is not None:
        out[PARENT_ENV] = parent_run_id
        out["MLFLOW_TRACKING_URI"] = tracking_uri()  # the children write where the parent is
        out["MLFLOW_EXPERIMENT_NAME"] = experiment_name()
    return out
