"""Finished rankings -> data/incoming/labels-<timestamp>.jsonl, the ranked preference format the retraining flow
gates and merges ({prompt, responses, ranking}, rlhf.data.import_preferences), with provenance columns.

A task is finished when it has as many rankings as labelers it was meant for (max_labelers). With one ranking
the row is that ranking; with several it is their Borda consensus (each labeler's ranking stays in the
database for the agreement statistics): the same pair twice from one prompt would be a duplicate row to the
data gate. Skips and flags are never exported; flagged tasks are listed in reports/labels/flagged.json.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhf.data import DataError, ranking_to_pairs
from rlhf.io import write_json, write_jsonl
from tasks.common import workdir
from tasks.labeling import db, stats

INCOMING = "data/incoming"
FLAG_REPORT = "reports/labels/flagged.json"


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def borda(rankings: Sequence[Sequence[int]]) -> list[int]:
    """Consensus of best-first rankings of the same k items: most Borda points first, ties by index.

    [[0, 1, 2], [1, 0, 2]] -> points {0: 3, 1: 3, 2: 0} -> [0, 1, 2].
    """
    k = len(rankings[0])
    points = [0] * k
    for ranking in rankings:
        for pos, idx in enumerate(ranking):
            points[idx] += k - 1 - pos
    return sorted(range(k), key=lambda i: (-points[i], i))


def finished_rows(judgements: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    """Unexported rankings of finished tasks -> (export rows, judgement ids they consume)."""
    by_task: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for j in judgements:
        by_task[j["task_id"]].append(j)
    rows, used = [], []
    for task_id, js in sorted(by_task.items()):
        if len(js) < js[0]["max_labelers"] or any(j["exported_to"] for j in js):
            continue
        js = js[: js[0]["max_labelers"]]
        rows.append(
            {
                "prompt": js[0]["prompt"],
                "responses": js[0]["responses"],
                "ranking": borda([j["ranking"] for j in js]),
                "prompt_id": js[0]["prompt_id"],
                "task_id": task_id,
                "labeler": ",".join(j["labeler"] for j in js),
                "n_labelers": len(js),
                "model_version": js[0]["model_version"],
                "served_at": iso(min(j["served_at"] for j in js)),
                "submitted_at": iso(max(j["submitted_at"] for j in js)),
                "judgement_ids": ",".join(str(j["id"]) for j in js),
            }
        )
        used += [j["id"] for j in js]
    return rows, used


def flag_report(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every task flagged as unsafe: who flagged it, when, and the responses it showed."""
    return [
        {
            "task_id": j["task_id"],
            "labeler": j["labeler"],
            "flagged_at": iso(j["submitted_at"]),
            "model_version": j["model_version"],
            "prompt": j["prompt"],
            "responses": j["responses"],
        }
        for j in db.judgements(conn, "flag")
    ]


def _free_name(folder: Path, stem: str) -> Path:
    out, n = folder / f"{stem}.jsonl", 1
    while out.exists():
        n += 1
        out = folder / f"{stem}-{n}.jsonl"
    return out


def export(conn: sqlite3.Connection, root: Path, now: float | None = None) -> dict[str, Any]:
    """Write the rankings finished since the last export and the flag report; mark the rankings exported.

    The file is written (atomically) inside the transaction that marks its rows, so a failed write marks
    nothing and the next export retries those rows.
    """
    now = now if now is not None else time.time()
    out: Path | None = None
    with db.transaction(conn):
        rows, used = finished_rows(db.judgements(conn, "rank"))
        rows, held = hold_back_repeats(rows, known_pairs(root))
        conn.executemany("UPDATE judgements SET exported_to = ? WHERE id = ?", [(HELD_BACK, i) for i in held])
        used = [i for i in used if i not in set(held)]
        if rows:
            folder = root / INCOMING
            folder.mkdir(parents=True, exist_ok=True)
            out = _free_name(folder, "labels-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)))
            write_jsonl(out, rows)
            rel = str(out.relative_to(root)) if out.is_relative_to(root) else str(out)
            conn.executemany("UPDATE judgements SET exported_to = ? WHERE id = ?", [(rel, i) for i in used])
    flags = flag_report(conn)
    write_json(root / FLAG_REPORT, flags)
    return {
        "file": str(out) if out else None,
        "rows": len(rows),
        "held_back_repeats": len(held),
        "flagged": len(flags),
        "flag_report": FLAG_REPORT,
    }


HELD_BACK = "held back: repeats an accepted pair"


def known_pairs(root: Path) -> set[tuple[str, str, str]]:
    """The (prompt, chosen, rejected) already accepted: the merged pairs and the feedback files, which the
    retraining gate checks new files against."""
    from tasks.validate import accepted_pairs

    files = [root / "data/preferences/pairs.parquet"]
    files += sorted(p for p in (root / "data/feedback").glob("*") if p.is_file() and not p.name.startswith("."))
    try:
        known = accepted_pairs(files)
    except DataError as e:  # the gate will say so, by file and line; holding back repeats is only a courtesy
        print(f"[labels] not checking for repeats: {e}", file=sys.stderr)
        return set()
    return set(zip(known["prompt"], known["chosen"], known["rejected"], strict=True))


def hold_back_repeats(
    rows: list[dict[str, Any]], known: set[tuple[str, str, str]]
) -> tuple[list[dict[str, Any]], list[int]]:
    """Rankings that would repeat an accepted pair are held back (their judgement ids returned): the gate
    refuses a whole file for one repeated pair, and a champion's answer can coincide with an answer the
    preference data already holds (the same short text for the same prompt). Returns (rows kept, held ids)."""
    keep, held = [], []
    for row in rows:
        pairs = ranking_to_pairs(row["responses"], row["ranking"])
        triples = {(row["prompt"], row["responses"][b], row["responses"][w]) for b, w in pairs}
        if known and triples & known:
            held += [int(i) for i in str(row["judgement_ids"]).split(",")]
        else:
            keep.append(row)
    return [{k: v for k, v in r.items() if k != "judgement_ids"} for r in keep], held


REWARD_MODEL, METRICS = "models/reward_model", "metrics/labels.json"


def load_reward_judge(rm_dir: Path) -> Any:
    """The reward model as a judge (rlhf.judges.RewardModelJudge), or None when it is not there."""
    if not (rm_dir / "model.safetensors").exists():
        return None
    from rlhf.checkpoint import load_model, read_config
    from rlhf.judges import RewardModelJudge
    from rlhf.tokenizer import ChatTokenizer

    cfg = read_config(rm_dir)
    model = load_model(rm_dir, "scalar")
    return RewardModelJudge(model, ChatTokenizer.load(rm_dir), cfg.get("reward_mean", 0.0), cfg.get("reward_std", 1.0))


def write_stats(conn: sqlite3.Connection, root: Path) -> dict[str, Any]:
    """<root>/metrics/labels.json from every judgement so far, with the reward model's agreement when
    <root>/models/reward_model exists."""
    judge = load_reward_judge(root / REWARD_MODEL)
    flat = stats.flat_metrics(stats.compute(db.judgements(conn), judge))
    write_json(root / METRICS, flat)
    return flat


def export_all(db_path: Path | None = None, root: Path | None = None) -> dict[str, Any]:
    """Export the finished rankings and refresh metrics/labels.json (the retraining flow's first task)."""
    root = root or workdir()
    db_path = db_path or root / db.DEFAULT_DB
    if not db_path.exists():
        return {"file": None, "rows": 0, "note": f"no labeling database at {db_path}"}
    conn = db.connect(db_path)
    try:
        summary = export(conn, root)
        summary["metrics"] = write_stats(conn, root)
        return summary
    finally:
        conn.close()
