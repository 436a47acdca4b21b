"""The pictures of docs/lifecycle.md: MLflow's and Prefect's UIs on a finished pipeline run, offline.

    python docs/screenshots.py [--checkout DIR] [--out docs] [--pipeline-run MLFLOW_RUN_ID]

Copies the checkout's `mlflow/` (store and artifacts) and `.prefect/` (Prefect's database) into a temporary
folder (the checkout is only read: run it when no pipeline is writing there), serves the copies with
`mlflow server` and `prefect server start` on free local ports, and takes with Debian's chromium
(tasks.labeling.screenshots.launch):

- `mlflow-evaluate-report.png`: the evaluate run's artifacts, its report (report.html, images inlined) open;
- `mlflow-runs-headline.png`: the runs table with the pipeline runs' headline columns (`headline/*` metrics,
  the `rlhf.promotion` tag) chosen in the column selector;
- `prefect-pipeline-result.png`: the pipeline flow run's markdown artifact (flows/results.py), opened from
  the run's Artifacts tab.

The pipeline run is the latest one with a promotion decision (else the latest), or `--pipeline-run`. Every
request that leaves 127.0.0.1 fails the script: both UIs are served from their packages, and Prefect's
newer UI (`/v2`, which calls an analytics service) is not used. Servers are stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.labeling.screenshots import launch
from tasks.mlflow_store import repoint_artifacts

ROOT = Path(__file__).resolve().parent.parent
VIEWPORT = {"width": 1400, "height": 900}
# The runs table is wider than the other views: laid out on 1707 CSS pixels, drawn on 1400 (82 %).
WIDE, WIDE_SCALE = {"width": 1707, "height": 1098}, 0.82
HEADLINE = ["win/dpo", "low/dpo", "win/ppo", "low/ppo", "correct/dpo", "correct/ppo", "kl/dpo", "kl/ppo", "rm_acc"]
TAGS = ["rlhf.promotion"]  # the decision; `headline/promoted` says the same as 0/1
MAX_BYTES = 400_000


def copy_state(checkout: Path, dest: Path) -> tuple[Path, Path]:
    """The checkout's MLflow store (re-pointed at the copy's artifacts) and Prefect home, copied under dest."""
    mlflow_dir, prefect_home = dest / "mlflow", dest / ".prefect"
    shutil.copytree(checkout / "mlflow" / "artifacts", mlflow_dir / "artifacts")
    prefect_home.mkdir(parents=True)
    for src, dst in ((checkout / "mlflow" / "mlflow.db", mlflow_dir / "mlflow.db"),
                     (checkout / ".prefect" / "prefect.db", prefect_home / "prefect.db")):  # fmt: skip
        if not src.exists():
            raise FileNotFoundError(f"{src}: no such database (run the pipeline in {checkout} first)")
        # Copied as files, never opened in place: even a read-only SQLite connection writes the WAL index (-shm).
        for suffix in ("", "-wal"):
            if Path(f"{src}{suffix}").exists():
                shutil.copy2(f"{src}{suffix}", f"{dst}{suffix}")
        with contextlib.closing(sqlite3.connect(dst)) as copy:
            copy.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the copy's WAL folded into its database
    repoint_artifacts(mlflow_dir / "mlflow.db")
    return mlflow_dir, prefect_home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5):
            return
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s; log: {log}")


@contextlib.contextmanager
def server(cmd: list[str], health: str, env: dict[str, str], log: Path) -> Iterator[None]:
    """Run a server in its own process group until the block ends."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(health, proc, log)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def get_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def pick_runs(mlflow_url: str, pipeline_run: str | None) -> dict[str, str]:
    """The pipeline run's id, experiment, Prefect flow run and evaluate child run."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_url)
    exps = [e.experiment_id for e in client.search_experiments()]
    if pipeline_run is None:
        runs = client.search_runs(exps, "tags.`rlhf.stage` = 'pipeline'", order_by=["attributes.start_time DESC"])
        if not runs:
            raise SystemExit("no pipeline run in the store (tag rlhf.stage = 'pipeline')")
        decided = [r for r in runs if "rlhf.promotion" in r.data.tags]
        parent = (decided or runs)[0]
    else:
        parent = client.get_run(pipeline_run)
    exp = parent.info.experiment_id
    children = client.search_runs(
        [exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`rlhf.stage` = 'evaluate'",
        order_by=["attributes.start_time ASC"],
    )  # fmt: skip
    with_report = [c for c in children if any(a.path == "report/report.html" for a in _walk(client, c.info.run_id))]
    if not with_report:
        raise SystemExit(f"pipeline run {parent.info.run_id} has no evaluate child run with report/report.html")
    flow_run = parent.data.tags.get("prefect.flow_run_id")
    if not flow_run:
        raise SystemExit(f"pipeline run {parent.info.run_id} has no prefect.flow_run_id tag")
    return {"parent": parent.info.run_id, "experiment": exp, "evaluate": with_report[0].info.run_id, "flow": flow_run}


def _walk(client: Any, run_id: str, path: str | None = None) -> list[Any]:
    out = []
    for a in client.list_artifacts(run_id, path):
        out += _walk(client, run_id, a.path) if a.is_dir else [a]
    return out


def offline_page(browser: Any, outside: list[str], **kw: Any) -> Any:
    """A page whose requests beyond 127.0.0.1 are refused and recorded."""
    page = browser.new_page(**kw)
    page.set_default_timeout(90_000)  # a server's first queries are slow on a busy machine

    def guard(route: Any) -> None:
        url = route.request.url
        if re.match(r"^(https?://127\.0\.0\.1[:/]|data:|blob:|about:)", url):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", guard)
    # a local request can fail for a harmless reason (a fetch cut short by navigation): reported, not fatal
    page.on("requestfailed", lambda r: r.url not in outside and print(f"request failed: {r.url} ({r.failure})"))
    return page


def mlflow_clean(page: Any) -> None:
    """Close the assistant panel (open on a first visit) and fold the sidebar: room for the content."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.get_by_role("button", name="Toggle sidebar").click()
    with contextlib.suppress(PlaywrightTimeout):
        page.get_by_role("button", name="Close").first.click(timeout=15_000)


def evaluate_report(browser: Any, outside: list[str], base: str, runs: dict[str, str], out: Path) -> None:
    page = offline_page(browser, outside, viewport=VIEWPORT)
    page.goto(f"{base}/#/experiments/{runs['experiment']}/runs/{runs['evaluate']}/artifacts/report/report.html")
    mlflow_clean(page)
    report = page.frame_locator("iframe")
    report.locator("img").first.wait_for()
    # the win-rates, and below them the first plots of the report
    report.locator("h3", has_text="Over-optimisation").evaluate("h => h.scrollIntoView()")
    page.wait_for_timeout(800)
    page.screenshot(path=str(out))
    page.close()


def tick(page: Any, label: str) -> None:
    """(Un)tick one column of MLflow's column selector, found by its exact name."""
    from playwright.sync_api import expect

    search = page.get_by_placeholder("Search columns")
    search.fill(label)
    expect(search).to_have_value(label)
    node = page.locator(".du-bois-light-tree-treenode").filter(has_text=re.compile(f"^{re.escape(label)}$"))
    expect(node).to_have_count(1)
    node.locator(".du-bois-light-tree-checkbox").click()


def resize(page: Any, col_id: str, width: float | None = None, padding: float = 16) -> None:
    """Drag the column's edge to `width` CSS pixels (None: its whole name, which MLflow's default width cuts)."""
    cell = page.locator(f'.ag-header-cell[col-id="{col_id}"]')
    if width is None:
        name = cell.locator("span[data-testid^=sort-header]")
        width = name.evaluate("s => s.scrollWidth") + padding
    handle = cell.locator(".ag-header-cell-resize")
    handle.hover()
    box, have = handle.bounding_box(), cell.bounding_box()["width"]
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.down()
    page.mouse.move(x + 5, y)
    page.mouse.move(x + width - have, y, steps=10)
    page.mouse.up()


def runs_table(browser: Any, outside: list[str], base: str, runs: dict[str, str], out: Path) -> None:
    page = offline_page(browser, outside, viewport=WIDE, device_scale_factor=WIDE_SCALE)
    page.goto(f"{base}/#/experiments/{runs['experiment']}/runs")
    mlflow_clean(page)
    page.locator(".ag-row").first.wait_for()  # the runs are loaded: the selector lists their columns
    page.get_by_role("button", name="Columns", exact=True).click()
    for label in [f"headline/{m}" for m in HEADLINE] + TAGS + ["Dataset", "Source", "Models"]:
        tick(page, label)  # the headline on, the empty default columns off
    page.keyboard.press("Escape")
    cols = [f"metrics.`headline/{m}`" for m in HEADLINE] + [f"tags.`{t}`" for t in TAGS]
    for col in reversed(cols):  # right to left: a widened column pushes only those already done
        resize(page, col, 140 if col.startswith("tags.") else None)  # "v2 (dpo) promoted"
    resize(page, "runDateAndNestInfo", 110)  # "Created": "1 hour ago" needs no more
    resize(page, "attributes.`Run Name`", 170)
    page.locator(".ag-body-horizontal-scroll-viewport").evaluate("e => { e.scrollLeft = 0 }")
    page.mouse.move(700, 600)  # no header left highlighted under the pointer
    page.wait_for_timeout(800)
    page.screenshot(path=str(out))
    page.close()


def check_flow_run(base: str, flow_run: str) -> None:
    """The flow run is in Prefect's database with its result page (else the picture would wait in vain)."""
    query = {"artifacts": {"flow_run_id": {"any_": [flow_run]}, "key": {"any_": ["rlhf-pipeline-result"]}}}
    if not get_json(f"{base}/api/artifacts/filter", query):
        raise SystemExit(
            f"Prefect's database has no rlhf-pipeline-result artifact of flow run {flow_run}: "
            "run the pipeline flow (python -m flows.pipeline) in the checkout first"
        )


def prefect_result(browser: Any, outside: list[str], base: str, runs: dict[str, str], out: Path) -> None:
    page = offline_page(browser, outside, viewport=VIEWPORT)
    page.goto(f"{base}/runs/flow-run/{runs['flow']}")
    page.get_by_text("Artifacts", exact=True).click()
    page.get_by_text("rlhf-pipeline-result").first.click()
    page.get_by_role("heading", name="RLHF pipeline run").wait_for()
    page.wait_for_timeout(800)
    page.screenshot(path=str(out))
    page.close()


def take(checkout: Path, out: Path, pipeline_run: str | None = None) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    shots = [out / n for n in ("mlflow-evaluate-report.png", "mlflow-runs-headline.png", "prefect-pipeline-result.png")]
    with tempfile.TemporaryDirectory(prefix="rlhf-shots-") as tmp:
        work = Path(tmp)
        mlflow_dir, prefect_home = copy_state(checkout, work)
        m_port, p_port = free_port(), free_port()
        m_url, p_url = f"http://127.0.0.1:{m_port}", f"http://127.0.0.1:{p_port}"
        env = {**os.environ, "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
        p_env = {**env, "PREFECT_HOME": str(prefect_home), "PREFECT_API_URL": f"{p_url}/api",
                 "PREFECT_UI_API_URL": f"{p_url}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
        mlflow_cmd = ["mlflow", "server", "--backend-store-uri", f"sqlite:///{mlflow_dir / 'mlflow.db'}",
                      "--host", "127.0.0.1", "--port", str(m_port), "--workers", "1"]  # fmt: skip
        prefect_cmd = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(p_port)]
        outside: list[str] = []
        with (
            server(mlflow_cmd, f"{m_url}/health", env, work / "mlflow.log"),
            server(prefect_cmd, f"{p_url}/api/health", p_env, work / "prefect.log"),
            sync_playwright() as p,
        ):
            runs = pick_runs(m_url, pipeline_run)
            print(f"pipeline run {runs['parent']}, evaluate run {runs['evaluate']}, flow run {runs['flow']}")
            check_flow_run(p_url, runs["flow"])
            browser = launch(p)
            try:
                evaluate_report(browser, outside, m_url, runs, shots[0])
                runs_table(browser, outside, m_url, runs, shots[1])
                prefect_result(browser, outside, p_url, runs, shots[2])
            finally:
                browser.close()
    if outside:
        raise SystemExit("requests that did not stay on 127.0.0.1 (or failed):\n" + "\n".join(sorted(set(outside))))
    big = [f"{s} ({s.stat().st_size} bytes)" for s in shots if s.stat().st_size > MAX_BYTES]
    if big:
        raise SystemExit(f"over {MAX_BYTES} bytes: {', '.join(big)}")
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", type=Path, default=ROOT, help="a checkout with a finished pipeline run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--pipeline-run", default=None, help="MLflow id of the pipeline run (default: latest)")
    args = parser.parse_args()
    for shot in take(args.checkout.resolve(), args.out, args.pipeline_run):
        print(f"{shot} ({shot.stat().st_size // 1000} kB)")


if __name__ == "__main__":
    main()
