"""The labeling store: tasks, who was served what, and the judgements (rank, skip, flag) in SQLite.

WAL mode lets labelers read while one writes; every change is one `BEGIN IMMEDIATE` transaction, so two
labelers never take the same slot of a task, a submission is stored exactly once (UNIQUE(task_id, labeler))
and a crash loses nothing already committed (synchronous=FULL). A task is served to at most `max_labelers`
people: its slots are its rankings plus the assignments still open (served, not answered, younger than
LEASE_SECONDS). A skip frees the slot for someone else; a flag withdraws the task from everyone.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_DB = "data/labels/labels.db"
LEASE_SECONDS = 30 * 60  # an unanswered task goes back to the pool after this long
MAX_NAME = 80
KINDS = ("rank", "skip", "flag")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    prompt TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    responses TEXT NOT NULL,            -- JSON list of strings, in generation order
    model_version TEXT NOT NULL,        -- what generated them: "rlhf-actor/v3" or "models/sft@<hash>"
    max_labelers INTEGER NOT NULL CHECK (max_labelers >= 1),
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    labeler TEXT NOT NULL,
    served_at REAL NOT NULL,
    PRIMARY KEY (task_id, labeler)
);
CREATE TABLE IF NOT EXISTS judgements (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    labeler TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('rank', 'skip', 'flag')),
    ranking TEXT,                       -- JSON list of response indices, best first (kind = 'rank')
    served_at REAL NOT NULL,
    submitted_at REAL NOT NULL,
    exported_to TEXT,                   -- the file this ranking went out in
    UNIQUE (task_id, labeler)
);
CREATE INDEX IF NOT EXISTS judgements_task ON judgements(task_id, kind);
"""


class LabelError(ValueError):
    """A request the store refuses; `status` is the HTTP status the app answers with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, foreign keys on; creates the schema."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.executescript(SCHEMA)
    return conn


# Writers of one process queue here rather than in SQLite's busy handler, whose backoff sleeps (up to 100 ms a
# try) made the slowest submissions of 20 concurrent labelers 25x slower than the median.
_WRITE_LOCK = threading.Lock()


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error: the write lock is taken before the first read,
    so what a transaction read cannot change under it."""
    with _WRITE_LOCK:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


@dataclass(frozen=True)
class NewTask:
    prompt: str
    prompt_id: str
    responses: list[str]
    model_version: str


def add_tasks(conn: sqlite3.Connection, tasks: Sequence[NewTask], max_labelers: int = 1) -> list[int]:
    """Store tasks in one transaction; returns their ids."""
    if max_labelers < 1:
        raise LabelError(f"max_labelers must be >= 1, got {max_labelers}")
    now, ids = time.time(), []
    with transaction(conn):
        for t in tasks:
            if len(t.responses) < 2:
                raise LabelError(f"task for prompt {t.prompt_id!r} has {len(t.responses)} responses; need >= 2")
            cur = conn.execute(
                "INSERT INTO tasks (prompt, prompt_id, responses, model_version, max_labelers, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (t.prompt, t.prompt_id, json.dumps(t.responses), t.model_version, max_labelers, now),
            )
            ids.append(int(cur.lastrowid))
    return ids


def check_name(labeler: Any) -> str:
    name = labeler.strip() if isinstance(labeler, str) else ""
    if not name:
        raise LabelError("a labeler name is required: enter your name first")
    if len(name) > MAX_NAME:
        raise LabelError(f"a labeler name has at most {MAX_NAME} characters, got {len(name)}")
    return name


def display_order(task_id: int, labeler: str, k: int) -> list[int]:
    """The order one labeler sees a task's responses in: random, but the same on every reload."""
    order = list(range(k))
    random.Random(f"{task_id}:{labeler}").shuffle(order)
    return order


def _task_view(row: sqlite3.Row, labeler: str) -> dict[str, Any]:
    responses = json.loads(row["responses"])
    order = display_order(row["id"], labeler, len(responses))
    # No model name and no generation order: each response is shown with the index it is submitted under.
    return {
        "id": row["id"],
        "prompt": row["prompt"],
        "responses": [{"index": i, "text": responses[i]} for i in order],
    }


OPEN_SLOTS = """
SELECT t.* FROM tasks t
WHERE NOT EXISTS (SELECT 1 FROM assignments a WHERE a.task_id = t.id AND a.labeler = :who)
  AND NOT EXISTS (SELECT 1 FROM judgements j WHERE j.task_id = t.id AND j.kind = 'flag')
  AND (SELECT COUNT(*) FROM assignments a
       LEFT JOIN judgements j ON j.task_id = a.task_id AND j.labeler = a.labeler
       WHERE a.task_id = t.id AND (j.kind = 'rank' OR (j.id IS NULL AND a.served_at > :lease)))
      < t.max_labelers
ORDER BY t.id
"""


def next_task(conn: sqlite3.Connection, labeler: str, now: float | None = None) -> dict[str, Any] | None:
    """The task `labeler` should do now (their open one first), assigned to them; None when none is left."""
    who, now = check_name(labeler), now if now is not None else time.time()
    lease = now - LEASE_SECONDS
    with transaction(conn):
        # Their own lapsed assignments go: the slot may have gone to someone else meanwhile.
        conn.execute(
            "DELETE FROM assignments WHERE labeler = ? AND served_at <= ? AND NOT EXISTS (SELECT 1 FROM "
            "judgements j WHERE j.task_id = assignments.task_id AND j.labeler = assignments.labeler)",
            (who, lease),
        )
        row = conn.execute(
            "SELECT t.* FROM tasks t JOIN assignments a ON a.task_id = t.id AND a.labeler = ? "
            "LEFT JOIN judgements j ON j.task_id = t.id AND j.labeler = a.labeler "
            "WHERE j.id IS NULL AND NOT EXISTS "
            "(SELECT 1 FROM judgements f WHERE f.task_id = t.id AND f.kind = 'flag') ORDER BY t.id LIMIT 1",
            (who,),
        ).fetchone()
        if row is None:
            row = conn.execute(OPEN_SLOTS + " LIMIT 1", {"who": who, "lease": lease}).fetchone()
            if row is None:
                return None
            conn.execute("INSERT INTO assignments VALUES (?, ?, ?)", (row["id"], who, now))
    return _task_view(row, who)


def check_ranking(ranking: Any, k: int) -> list[int]:
    if not isinstance(ranking, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranking):
        raise LabelError(f"ranking must be a list of integers (response indices, best first), got {ranking!r}")
    if sorted(ranking) != list(range(k)):
        raise LabelError(
            f"ranking {ranking} is not a permutation of 0..{k - 1}: rank every response exactly once, best first"
        )
    return ranking


def submit(
    conn: sqlite3.Connection, task_id: Any, labeler: Any, kind: Any, ranking: Any = None, now: float | None = None
) -> int:
    """Record one judgement of a task served to `labeler`; returns its id. Refusals write nothing."""
    who, now = check_name(labeler), now if now is not None else time.time()
    if kind not in KINDS:
        raise LabelError(f"action must be one of {list(KINDS)}, got {kind!r}")
    if not isinstance(task_id, int) or isinstance(task_id, bool):
        raise LabelError(f"task_id must be an integer, got {task_id!r}")
    with transaction(conn):
        task = conn.execute("SELECT responses, max_labelers FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if task is None:
            raise LabelError(f"task {task_id} does not exist", 404)
        served = conn.execute(
            "SELECT served_at FROM assignments WHERE task_id = ? AND labeler = ?", (task_id, who)
        ).fetchone()
        if served is None:
            raise LabelError(f"task {task_id} was not served to {who!r}: ask for your next task first", 409)
        if conn.execute("SELECT 1 FROM judgements WHERE task_id = ? AND labeler = ?", (task_id, who)).fetchone():
            raise LabelError(f"{who!r} has already answered task {task_id}; it is recorded once", 409)
        if kind == "rank" and served["served_at"] <= now - LEASE_SECONDS:
            ranked = conn.execute(
                "SELECT COUNT(*) FROM judgements WHERE task_id = ? AND kind = 'rank'", (task_id,)
            ).fetchone()[0]
            if ranked >= task["max_labelers"]:
                raise LabelError(
                    f"task {task_id} was held more than {LEASE_SECONDS // 60} minutes and has been ranked by "
                    "others meanwhile; ask for your next task",
                    409,
                )
        k = len(json.loads(task["responses"]))
        stored = json.dumps(check_ranking(ranking, k)) if kind == "rank" else None
        cur = conn.execute(
            "INSERT INTO judgements (task_id, labeler, kind, ranking, served_at, submitted_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (task_id, who, kind, stored, served["served_at"], now),
        )
    return int(cur.lastrowid)


def progress(conn: sqlite3.Connection, labeler: str, now: float | None = None) -> dict[str, int]:
    """What `labeler` has done and how many tasks are still open to them (the one in hand included)."""
    who, now = check_name(labeler), now if now is not None else time.time()
    done = conn.execute("SELECT COUNT(*) FROM judgements WHERE labeler = ?", (who,)).fetchone()[0]
    open_now = len(conn.execute(OPEN_SLOTS, {"who": who, "lease": now - LEASE_SECONDS}).fetchall())
    in_hand = conn.execute(
        "SELECT COUNT(*) FROM assignments a LEFT JOIN judgements j ON j.task_id = a.task_id "
        "AND j.labeler = a.labeler WHERE a.labeler = ? AND j.id IS NULL",
        (who,),
    ).fetchone()[0]
    return {"done": int(done), "remaining": int(open_now + in_hand)}


def judgements(conn: sqlite3.Connection, kind: str | None = None) -> list[dict[str, Any]]:
    """Judgements joined with their task (prompt, responses, model version), oldest first."""
    sql = (
        "SELECT j.*, t.prompt, t.prompt_id, t.responses, t.model_version, t.max_labelers "
        "FROM judgements j JOIN tasks t ON t.id = j.task_id"
    )
    rows = conn.execute(sql + (" WHERE j.kind = ?" if kind else "") + " ORDER BY j.id", (kind,) if kind else ())
    out = []
    for r in rows:
        d = dict(r)
        d["responses"] = json.loads(d["responses"])
        d["ranking"] = json.loads(d["ranking"]) if d["ranking"] else None
        out.append(d)
    return out


def count_tasks(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])


def known_prompts(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT DISTINCT prompt FROM tasks")}
