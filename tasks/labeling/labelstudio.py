"""Label Studio interop, for teams that label there.

Export: every pair of responses of each open task becomes one Label Studio task for its Pairwise template
({"data": {prompt, text1, text2, ...}}), written with the labeling config XML beside it.
Import: a Label Studio JSON export (a list of tasks, each with "data" and "annotations", each annotation's
"result" a list of regions; the Pairwise control gives {"type": "pairwise", "value": {"selected": "left" |
"right"}}) becomes TRL pairs {prompt, chosen, rejected} + provenance in data/incoming/, ready for the gate.
"""

from __future__ import annotations

import json
import sqlite3
import time
from itertools import combinations
from pathlib import Path
from typing import Any

from rlhf.data import DataError
from rlhf.io import write_jsonl, write_text

CONFIG_XML = """<View>
  <Header value="Which response answers the prompt better?"/>
  <Text name="prompt" value="$prompt"/>
  <Pairwise name="pw" toName="text1,text2"/>
  <Text name="text1" value="$text1"/>
  <Text name="text2" value="$text2"/>
</View>
"""


def export_tasks(conn: sqlite3.Connection, out: Path) -> dict[str, Any]:
    """Write Label Studio tasks (every response pair of every unflagged task) to `out` and the labeling
    config to `<out stem>.label_config.xml`."""
    rows = conn.execute(
        "SELECT * FROM tasks t WHERE NOT EXISTS "
        "(SELECT 1 FROM judgements j WHERE j.task_id = t.id AND j.kind = 'flag') ORDER BY t.id"
    ).fetchall()
    tasks = []
    for r in rows:
        responses = json.loads(r["responses"])
        for i, j in combinations(range(len(responses)), 2):
            if responses[i] == responses[j]:
                continue  # no preference between identical texts
            data = {"prompt": r["prompt"], "text1": responses[i], "text2": responses[j]}
            meta = {"task_id": r["id"], "prompt_id": r["prompt_id"], "model_version": r["model_version"]}
            tasks.append({"data": {**data, **meta, "index1": i, "index2": j}})
    write_text(out, json.dumps(tasks, indent=1, ensure_ascii=False) + "\n")
    config = out.with_name(out.stem + ".label_config.xml")
    write_text(config, CONFIG_XML)
    return {"tasks": len(tasks), "file": str(out), "config": str(config)}


def _pairwise(result: Any, where: str) -> str | None:
    """The pairwise choice ("left" or "right") of an annotation's result list; None when it holds none."""
    if not isinstance(result, list):
        raise DataError(f"{where}: 'result' must be a list of regions, got {type(result).__name__}")
    for region in result:
        if isinstance(region, dict) and region.get("type") == "pairwise":
            selected = (region.get("value") or {}).get("selected")
            if selected not in ("left", "right"):
                raise DataError(f"{where}: pairwise value.selected must be 'left' or 'right', got {selected!r}")
            return selected
    return None


def pairs_from_export(export: Any, source: str) -> tuple[list[dict[str, Any]], int]:
    """Rows {prompt, chosen, rejected, ...} of a parsed Label Studio export, and how many annotations were
    skipped (cancelled or without a pairwise choice). The same pair from two annotators is kept once."""
    if not isinstance(export, list):
        raise DataError(f"{source}: a Label Studio JSON export is a list of tasks, got {type(export).__name__}")
    rows, seen, skipped = [], set(), 0
    for n, task in enumerate(export):
        where = f"{source}: task #{n} (id {task.get('id') if isinstance(task, dict) else '?'})"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("prompt", "text1", "text2")):
            raise DataError(f"{where}: 'data' needs the strings prompt, text1 and text2 (the exported template)")
        for ann in task.get("annotations") or []:
            selected = None if ann.get("was_cancelled") else _pairwise(ann.get("result"), f"{where}, annotation")
            if selected is None:
                skipped += 1
                continue
            chosen, rejected = (data["text1"], data["text2"])[:: 1 if selected == "left" else -1]
            key = (data["prompt"], chosen, rejected)
            if key in seen:
                continue
            seen.add(key)
            rows.append(
                {
                    "prompt": data["prompt"],
                    "chosen": chosen,
                    "rejected": rejected,
                    "prompt_id": str(data.get("prompt_id", f"ls-{task.get('id', n)}")),
                    "labeler": str(ann.get("completed_by", "")),
                    "label_studio_task": task.get("id"),
                    "label_studio_annotation": ann.get("id"),
                    "annotated_at": ann.get("created_at"),
                    "model_version": data.get("model_version"),
                }
            )
    return rows, skipped


def import_export(file: Path, incoming: Path, now: float | None = None) -> dict[str, Any]:
    """A Label Studio JSON export -> incoming/label-studio-<timestamp>.jsonl (TRL pairs + provenance)."""
    try:
        export = json.loads(Path(file).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{file}: line {e.lineno}: not JSON ({e.msg}); export from Label Studio as JSON") from e
    rows, skipped = pairs_from_export(export, str(file))
    if not rows:
        raise DataError(f"{file}: no pairwise annotation to import ({skipped} cancelled or empty)")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    out = incoming / f"label-studio-{stamp}.jsonl"
    write_jsonl(out, rows)
    return {"file": str(out), "pairs": len(rows), "skipped_annotations": skipped}
