"""Reading demonstrations, prompts and preference data (the world's and a user's) with errors that say where.

Every reader returns a DataFrame whose index locates each row in its file: `index.name == "line"` for JSON
lines and CSV (1-based line numbers, as an editor shows them) and `"row"` for Parquet (0-based row index).
Errors are `DataError`s naming the file, the line or row, the column and the rule that was broken.

Structural problems (undecodable bytes, malformed JSON) are errors here; content rules (blank strings, token
lengths, duplicates, eval leakage) are the Great Expectations gate's job (tasks/validate.py), except that
`read_demos`, `read_prompts` and the importers refuse rows they could not use at all.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from rlhf.tokenizer import find_control

HH_MARKER = "Assistant:"  # Anthropic-HH transcripts: "\n\nHuman: ...\n\nAssistant: ..."
PREF_COLUMNS = {  # format -> the columns it needs
    "trl": ["prompt", "chosen", "rejected"],
    "hh": ["chosen", "rejected"],
    "ranked": ["prompt", "responses", "ranking"],
}


class DataError(ValueError):
    """A data file breaks a rule; the message names the file, the line/row, the column and what to do."""


def _where(path: Path, df: pd.DataFrame, label: Any) -> str:
    return f"{path}: {df.index.name or 'row'} {label}"


# --- tables -----------------------------------------------------------------------------------------------


def read_table(path: str | Path) -> pd.DataFrame:
    """A .jsonl / .json (JSON lines), .parquet or .csv file as a DataFrame indexed by line (Parquet: row)."""
    path = Path(path)
    readers = {".jsonl": _read_jsonl, ".json": _read_jsonl, ".parquet": _read_parquet, ".csv": _read_csv}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown extension '{path.suffix}'; use one of {sorted(readers)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return reader(path)


def _decoded_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of every line; decoding line by line lets a bad byte be located. A UTF-8 byte
    order mark (Excel and many Windows tools write one) is dropped: "utf-8-sig" on the first line."""
    out = []
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            out.append((lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")))
        except UnicodeDecodeError as e:
            raise DataError(
                f"{path}: line {lineno}: invalid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}: "
                f"{e.reason}); re-save the file as UTF-8"
            ) from e
    return out


def read_text(path: str | Path) -> str:
    """A whole text file (a .txt corpus) as the readers decode it: UTF-8, a BOM dropped, a bad byte located."""
    return "\n".join(text for _, text in _decoded_lines(Path(path)))


def _read_jsonl(path: Path) -> pd.DataFrame:
    rows, lines = [], []
    for lineno, text in _decoded_lines(path):
        if not text.strip():  # blank lines (a trailing newline, spacing) carry no row
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}: line {lineno}: malformed JSON ({e.msg} at column {e.colno}); "
                "each line must be one complete JSON object"
            ) from e
        if not isinstance(obj, dict):
            hint = " (a .json file must be JSON lines, not one array: try `jq -c '.[]'`)" if lineno == 1 else ""
            raise DataError(f"{path}: line {lineno}: a JSON {type(obj).__name__}, not an object{hint}")
        rows.append(obj)
        lines.append(lineno)
    return pd.DataFrame.from_records(rows, index=pd.Index(lines, name="line"))


def _read_csv(path: Path) -> pd.DataFrame:
    # The csv module (not pandas) so every value stays the string in the file and each record keeps the line
    # it starts on, even when a quoted field spans lines.
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path}: line 1: empty file; a CSV needs a header row naming the columns")
    rows, lines = [], []
    start = reader.line_num + 1
    for record in reader:
        if record:  # blank lines
            if len(record) != len(header):
                raise DataError(
                    f"{path}: line {start}: {len(record)} fields but the header has {len(header)}; "
                    "quote fields that contain commas"
                )
            rows.append(dict(zip(header, record, strict=True)))
            lines.append(start)
        start = reader.line_num + 1
    return pd.DataFrame.from_records(rows, columns=header, index=pd.Index(lines, name="line"))


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DataError(f"{path}: unreadable Parquet ({e}); rewrite the file or export it as JSONL") from e
    return df.reset_index(drop=True).rename_axis("row")


# --- column rules -----------------------------------------------------------------------------------------


def _require_columns(path: Path, df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing required column(s) {missing} for {what} (found {list(df.columns)}); "
            f"every row needs {list(columns)}"
        )


def _text_rule(value: Any) -> str | None:
    """Why `value` is not a usable text field, or None if it is."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "missing value (null or absent key)"
    if not isinstance(value, str):
        return f"not a string (got {type(value).__name__} {value!r})"
    if not value.strip():
        return "empty or whitespace-only string"
    return control_rule(value)


def control_rule(text: str) -> str | None:
    """Why `text` may not enter training (a chat control string in it), or None. Import knows no tokenizer yet:
    it refuses the project's markers and every `<|name|>`; the gate adds the tokenizer's own (rlhf.tokenizer)."""
    found = find_control(text)
    if found is None:
        return None
    return f"contains the chat control string {found!r}, which would encode as a turn marker; remove it"


def _require_text(path: Path, df: pd.DataFrame, columns: Sequence[str]) -> None:
    for col in columns:
        broken = [(label, rule) for label, value in df[col].items() if (rule := _text_rule(value)) is not None]
        if broken:
            (label, rule), more = broken[0], len(broken) - 1
            also = f" ({more} more row(s) break a text rule in this column)" if more else ""
            raise DataError(f"{_where(path, df, label)}, column '{col}': {rule}; fix or remove that row{also}")


def _ids(path: Path, df: pd.DataFrame, id_columns: Sequence[str] = ("id",)) -> pd.Series:
    """Row ids as strings: an existing id column (ints allowed) or "<stem>-<line>" when the file has none."""
    col = next((c for c in id_columns if c in df.columns), None)
    if col is None:
        return pd.Series([f"{path.stem}-{label}" for label in df.index], index=df.index, dtype=object)
    ids = df[col].map(lambda v: str(v) if isinstance(v, int | np.integer) and not isinstance(v, bool) else v)
    _require_text(path, ids.to_frame(col), [col])
    return ids


def read_demos(path: str | Path) -> pd.DataFrame:
    """Demonstrations: columns prompt, response (non-empty strings) plus any extra columns of the file."""
    path = Path(path)
    df = read_table(path)
    _require_columns(path, df, ["prompt", "response"], "demonstrations")
    _require_text(path, df, ["prompt", "response"])
    return df


def read_prompts(path: str | Path) -> pd.DataFrame:
    """Prompts: id (unique strings, "<stem>-<line>" when absent), prompt, and family if the file has it."""
    path = Path(path)
    df = read_table(path)
    _require_columns(path, df, ["prompt"], "prompts")
    _require_text(path, df, ["prompt"])
    out = pd.DataFrame({"id": _ids(path, df), "prompt": df["prompt"]}, index=df.index)
    dup = out["id"].duplicated()
    if dup.any():
        label = out.index[dup.to_numpy().argmax()]
        raise DataError(
            f"{_where(path, out, label)}, column 'id': duplicate id {out['id'][label]!r}; ids must be unique"
        )
    if "family" in df.columns:
        out["family"] = df["family"]
    return out


# --- preferences ------------------------------------------------------------------------------------------


def ranking_to_pairs(responses: Sequence[str], ranking: Sequence[int]) -> list[tuple[int, int]]:
    """Every (better, worse) index pair of a best-first ranking, skipping pairs of identical texts.

    B > A > D > C, i.e. ranking [1, 0, 3, 2] of responses [A, B, C, D], gives
    (B,A), (B,D), (B,C), (A,D), (A,C), (D,C): n(n-1)/2 comparisons from one ranking (spec, "Building the
    Preference Dataset"). Two identical texts carry no preference, so their pair is dropped.
    """
    n = len(responses)
    if sorted(ranking) != list(range(n)) or any(isinstance(r, bool) for r in ranking):
        raise DataError(
            f"ranking {list(ranking)} is not a permutation of 0..{n - 1}; list every response index "
            "exactly once, best first"
        )
    return [
        (better, worse)
        for i, better in enumerate(ranking)
        for worse in ranking[i + 1 :]
        if responses[better] != responses[worse]
    ]


def borrowed(groups: Sequence[Sequence[str]], n: int, seed: int) -> list[list[str]]:
    """For each prompt i, up to n responses sampled for other prompts, none equal to one of prompt i's own.

    They are distractors a labeler ranks together with the prompt's own samples. A policy's samples rarely answer
    another question or refuse a harmless one, so pairs built from them alone never show such answers losing, and a
    reward model is free to score them high: PPO then finds them (on the default world an actor refused 87 % of
    harmless prompts, its reward model preferring "I'm sorry, but I can't help with that." to the SFT model's own
    answer on all 350 harmless evaluation prompts). Deterministic in seed; prompt j != i is drawn uniformly, then
    one of its responses.
    """
    rng = np.random.default_rng(seed)
    m, out = len(groups), []
    for i, own in enumerate(groups):
        picks: list[str] = []
        for _ in range(4 * n if m > 1 else 0):  # a few redraws when the draw repeats a text already in the group
            if len(picks) == n:
                break
            j = int(rng.integers(m - 1))
            j += j >= i
            if groups[j]:
                text = groups[j][int(rng.integers(len(groups[j])))]
                if text not in own and text not in picks:
                    picks.append(text)
        out.append(picks)
    return out


def nearest_prompts(prompts: Sequence[str], chunk: int = 256) -> list[int]:
    """For each prompt, the index of the most alike other prompt (-1 when there is none): the Jaccard similarity of
    their lowercase word sets, ties to the lowest index. Sparse products over chunks of rows: O(m²) work, but never
    an m × m matrix."""
    words = [sorted(set(re.findall(r"\w+", p.lower()))) for p in prompts]
    m = len(words)
    if m < 2:
        return [-1] * m
    vocab = {w: k for k, w in enumerate(sorted({w for ws in words for w in ws}))}
    rows = [i for i, ws in enumerate(words) for _ in ws]
    cols = [vocab[w] for ws in words for w in ws]
    indices = torch.tensor([rows, cols]).reshape(2, -1)
    x = torch.sparse_coo_tensor(indices, torch.ones(len(rows)), (m, len(vocab)), check_invariants=True)
    x = x.coalesce()
    sizes = torch.tensor([len(ws) for ws in words], dtype=torch.float32)
    out: list[int] = []
    for start in range(0, m, chunk):
        idx = torch.arange(start, min(start + chunk, m))
        inter = torch.sparse.mm(x, x.index_select(0, idx).to_dense().T).T  # (c, m) shared words
        sim = inter / (sizes[idx, None] + sizes[None, :] - inter).clamp(min=1)
        sim[torch.arange(len(idx)), idx] = -1.0  # never itself
        out += sim.argmax(1).tolist()  # the first of equal maxima
    return out


def near_borrowed(groups: Sequence[Sequence[str]], near: Sequence[int], n: int, seed: int) -> list[list[str]]:
    """For each prompt i, up to n responses sampled for its most alike prompt near[i] (`nearest_prompts`), none
    equal to one of prompt i's own: hard distractors.

    An answer to a question that differs in one word ("Calculate 11 - 4." for "Calculate 11 - 1.", a greeting to
    another name) reads like a right answer; only its subject is wrong. Random `borrowed` answers are mostly of
    another kind, so they teach a reward model to tell kinds apart but not to check the subject; on the default
    world a PPO actor then answered 25 of 50 arithmetic questions about other operands (SFT: 16). Deterministic in
    seed; the responses are drawn without replacement from near[i]'s group.
    """
    rng = np.random.default_rng(seed)
    out = []
    for own, j in zip(groups, near, strict=True):
        pool = [t for t in dict.fromkeys(groups[j]) if t not in own] if j >= 0 else []
        picks = rng.permutation(len(pool))[:n].tolist() if pool else []
        out.append([pool[k] for k in picks])
    return out


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Two Anthropic-HH transcripts -> (prompt, chosen response, rejected response).

    The prompt is the longest shared prefix that ends right after an "Assistant:" marker; surrounding
    whitespace is stripped from all three parts (HH puts a space after the marker).
    """
    shared = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        shared += 1
    cut = chosen.rfind(HH_MARKER, 0, shared)  # the marker must lie wholly inside the shared prefix
    if cut < 0:
        raise DataError(
            f"chosen and rejected share no prefix ending in '{HH_MARKER}'; hh rows must be the same "
            "conversation up to the final Assistant turn"
        )
    cut += len(HH_MARKER)
    return chosen[:cut].strip(), chosen[cut:].strip(), rejected[cut:].strip()


def _detect_format(path: Path, columns: Sequence[str]) -> str:
    cols = set(columns)
    if {"prompt", "responses", "ranking"} <= cols:
        return "ranked"
    if {"prompt", "chosen", "rejected"} <= cols:
        return "trl"
    if {"chosen", "rejected"} <= cols:
        return "hh"
    raise DataError(
        f"{path}: cannot tell the preference format from columns {sorted(cols)}; expected trl "
        "{prompt, chosen, rejected}, hh {chosen, rejected} or ranked {prompt, responses, ranking}"
    )


def _as_list(value: Any, where: str, col: str) -> list[Any]:
    """A list cell: a list (JSONL), an array (Parquet) or a JSON string (CSV)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}, column '{col}': not a JSON list ({e.msg}); write it as [..]") from e
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list):
        raise DataError(f"{where}, column '{col}': expected a list, got {type(value).__name__}")
    return value


def _ranked_rows(path: Path, df: pd.DataFrame, ids: pd.Series) -> list[dict[str, Any]]:
    rows = []
    for label, prompt, responses, ranking in zip(df.index, df["prompt"], df["responses"], df["ranking"], strict=True):
        where = _where(path, df, label)
        responses = _as_list(responses, where, "responses")
        ranking = _as_list(ranking, where, "ranking")
        for k, text in enumerate(responses):
            if (rule := _text_rule(text)) is not None:
                raise DataError(f"{where}, column 'responses'[{k}]: {rule}; fix or remove that response")
        if not all(isinstance(r, int) for r in ranking):
            raise DataError(f"{where}, column 'ranking': entries must be integers, got {ranking}")
        try:
            pairs = ranking_to_pairs(responses, ranking)
        except DataError as e:
            raise DataError(f"{where}, column 'ranking': {e}") from e
        for better, worse in pairs:
            pair = {"prompt": prompt, "chosen": responses[better], "rejected": responses[worse]}
            rows.append({**pair, "prompt_id": ids[label], "source_row": label})
    return rows


def _hh_rows(path: Path, df: pd.DataFrame, ids: pd.Series) -> list[dict[str, Any]]:
    rows = []
    for label, chosen, rejected in zip(df.index, df["chosen"], df["rejected"], strict=True):
        try:
            prompt, good, bad = split_hh(chosen, rejected)
        except DataError as e:
            raise DataError(f"{_where(path, df, label)}, columns 'chosen'/'rejected': {e}") from e
        for col, text in (("chosen", good), ("rejected", bad)):
            if not text:
                raise DataError(f"{_where(path, df, label)}, column '{col}': empty response after the prompt")
        rows.append({"prompt": prompt, "chosen": good, "rejected": bad, "prompt_id": ids[label], "source_row": label})
    return rows


def import_preferences(path: str | Path, fmt: str = "auto") -> pd.DataFrame:
    """Preference data (trl, hh or ranked) -> DataFrame[prompt, chosen, rejected, prompt_id, source_row].

    source_row is the line (JSONL/CSV) or row (Parquet) each pair came from; a ranked row yields many pairs.
    """
    path = Path(path)
    df = read_table(path)
    if fmt == "auto":
        fmt = _detect_format(path, df.columns)
    if fmt not in PREF_COLUMNS:
        raise DataError(f"{path}: unknown preference format '{fmt}'; use one of {sorted(PREF_COLUMNS)} or 'auto'")
    _require_columns(path, df, PREF_COLUMNS[fmt], f"format {fmt}")
    _require_text(path, df, [c for c in PREF_COLUMNS[fmt] if c not in ("responses", "ranking")])
    ids = _ids(path, df, ("prompt_id", "id"))
    if fmt == "ranked":
        rows = _ranked_rows(path, df, ids)
    elif fmt == "hh":
        rows = _hh_rows(path, df, ids)
    else:
        rows = [
            {"prompt": p, "chosen": c, "rejected": r, "prompt_id": ids[label], "source_row": label}
            for label, p, c, r in zip(df.index, df["prompt"], df["chosen"], df["rejected"], strict=True)
        ]
    columns = ["prompt", "chosen", "rejected", "prompt_id", "source_row"]
    return pd.DataFrame(rows, columns=columns).astype({"source_row": "int64"})
