"""The embedded MLflow store (SQLite) follows its checkout: artifact URIs re-pointed to `<db dir>/artifacts`.

MLflow stores artifact locations as absolute URIs (experiments, runs, logged models, model versions) and has no
API to change them (mlflow/mlflow#3144, #8226), so a checkout copied, moved or cloned with its mlflow/ folder
would write into, and read from, the first checkout. `tasks.tracking.setup` calls `repoint_artifacts` before a
run starts: it rewrites those URIs by prefix, in one transaction, when they name another folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Where the store keeps artifact URIs (MLflow 3's schema); a column an older schema lacks is skipped.
_ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
)


def _foreign_roots(con: Any, here: str) -> list[str]:
    """Artifact roots of this store's experiments that follow the `<db dir>/artifacts` layout of another folder."""
    rows = con.execute("SELECT artifact_location FROM experiments").fetchall()
    ours = {loc for (loc,) in rows if loc and loc.startswith("file:") and loc.endswith("/artifacts")}
    return sorted(ours - {here})


def repoint_artifacts(db: Path) -> dict[str, str]:
    """Make the SQLite store `db` write and read its artifacts in `<db dir>/artifacts`, whichever folder it was
    created in: every stored artifact URI under another `…/artifacts` root of an experiment is rewritten to this
    one, in one transaction (nothing when they already agree). Returns {old root: new root}. The artifact files
    travel with the folder (`mlflow/artifacts/` beside `mlflow/mlflow.db`), so old runs keep resolving too."""
    import sqlite3

    here = (db.resolve().parent / "artifacts").as_uri()
    con = sqlite3.connect(db, timeout=60, isolation_level=None)
    try:
        if not con.execute("SELECT name FROM sqlite_master WHERE name = 'experiments'").fetchall():
            return {}  # a new store: MLflow has not created its schema yet
        if not _foreign_roots(con, here):
            return {}
        con.execute("BEGIN IMMEDIATE")  # one writer; read again under the lock (another stage may have done it)
        moved = {old: here for old in _foreign_roots(con, here)}
        for table, column in _ARTIFACT_COLUMNS:
            if column not in {row[1] for row in con.execute(f"PRAGMA table_info({table})")}:
                continue  # an older schema
            for old in moved:
                for a, b in ((old, here), (_uri_path(old), _uri_path(here))):  # as URI and as plain path
                    con.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                        f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                        (b, len(a) + 1, a, len(a) + 1, a + "/"),
                    )
        con.execute("COMMIT")
        return moved
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()


def _uri_path(uri: str) -> str:
    from urllib.parse import unquote, urlparse

    return unquote(urlparse(uri).path)
