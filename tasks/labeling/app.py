"""The labeling web app: one task at a time, ranked best to worst; /stats for the health of the labels.

Server-rendered pages (Jinja2 with autoescape) and a small script (static/label.js) that talks JSON:

    GET  /health                       {"status": "ok", "tasks": N, "db": PATH}
    GET  /api/next?labeler=NAME        {"task": {id, prompt, responses: [{index, text}]} | null, "progress": {..}}
    POST /api/submit                   {"task_id", "labeler", "action": "rank"|"skip"|"flag", "ranking": [..]}
    GET  /api/stats, /stats            the numbers of tasks/labeling/stats.py

A refused submission is a 4xx with {"error": message} and writes nothing. Each request opens its own SQLite
connection (the handlers run in a thread pool); the reward model for /stats loads once, on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tasks.labeling import db, stats

HERE = Path(__file__).parent
# autoescape on for every template: prompts, responses and names are shown as text, never as markup.
TEMPLATES = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)


class StatsSource:
    """The reward model judge (loaded lazily, at most once) and its per-task score cache."""

    def __init__(self, load_judge: Callable[[], stats.Judge | None] | None):
        self.load_judge, self.judge, self.cache, self.lock = load_judge, None, {}, threading.Lock()

    def compute(self, conn: Any) -> dict[str, Any]:
        with self.lock:
            if self.load_judge is not None:
                self.judge, self.load_judge = self.load_judge(), None
            return stats.compute(db.judgements(conn), self.judge, self.cache)


def _error(e: db.LabelError) -> JSONResponse:
    return JSONResponse({"error": str(e)}, status_code=e.status)


def create_app(db_path: str | Path, load_judge: Callable[[], stats.Judge | None] | None = None) -> Starlette:
    """The app over the store at `db_path`; `load_judge` gives the reward model /stats compares people with."""
    db.connect(db_path).close()  # create the schema (and fail now on a bad path)
    source = StatsSource(load_judge)

    def conn() -> Any:
        return db.connect(db_path)

    def page(name: str, **context: Any) -> HTMLResponse:
        return HTMLResponse(TEMPLATES.get_template(name).render(**context))

    def index(request: Request) -> HTMLResponse:
        return page("label.html")

    def health(request: Request) -> JSONResponse:
        c = conn()
        try:
            return JSONResponse({"status": "ok", "tasks": db.count_tasks(c), "db": str(db_path)})
        finally:
            c.close()

    def next_task(request: Request) -> JSONResponse:
        c = conn()
        try:
            labeler = request.query_params.get("labeler", "")
            task = db.next_task(c, labeler)
            return JSONResponse({"task": task, "progress": db.progress(c, labeler)})
        except db.LabelError as e:
            return _error(e)
        finally:
            c.close()

    async def submit(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        return await run_in_threadpool(record, body)

    def record(body: dict[str, Any]) -> JSONResponse:
        c = conn()
        try:
            jid = db.submit(c, body.get("task_id"), body.get("labeler"), body.get("action"), body.get("ranking"))
            return JSONResponse({"ok": True, "id": jid, "progress": db.progress(c, body["labeler"])})
        except db.LabelError as e:
            return _error(e)
        finally:
            c.close()

    def api_stats(request: Request) -> JSONResponse:
        c = conn()
        try:
            return JSONResponse(source.compute(c))
        finally:
            c.close()

    def stats_page(request: Request) -> HTMLResponse:
        c = conn()
        try:
            return page("stats.html", s=source.compute(c))
        finally:
            c.close()

    routes = [
        Route("/", index),
        Route("/health", health),
        Route("/api/next", next_task),
        Route("/api/submit", submit, methods=["POST"]),
        Route("/api/stats", api_stats),
        Route("/stats", stats_page),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes)
