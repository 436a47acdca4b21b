"""tasks.validate: clean data passes; each corruption trips only its check; the CLI writes only its report."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from rlhf.tokenizer import ChatTokenizer, train_tokenizer
from tasks.validate import ValidationFailed, checks, main, run, validate

ROOT = Path(__file__).resolve().parent.parent
BLOCK, MAX_PROMPT, MIN_ROWS = 64, 24, 3
EVAL = {"What is the capital of Peru?", "Name a prime number."}
PROMPTS = ["Say hello to Ada.", "What is two plus two?", "Name a colour.", "Give me a fruit."]
RESPONSES = ["Hello, Ada!", "Four.", "Blue.", "An apple."]
OTHER = ["Hi.", "Five.", "Red, I think.", "A stone."]


@pytest.fixture(scope="module")
def tok() -> ChatTokenizer:
    return train_tokenizer([*PROMPTS, *RESPONSES, *OTHER, *EVAL] * 3, vocab_size=300)


def demos() -> pd.DataFrame:
    df = pd.DataFrame({"prompt": PROMPTS, "response": RESPONSES, "id": list("abcd"), "family": ["chat"] * 4})
    return df.set_axis(pd.RangeIndex(1, 5, name="line"))  # as read from a JSONL file: index = line number


def pairs() -> pd.DataFrame:
    df = pd.DataFrame({"prompt": PROMPTS, "chosen": RESPONSES, "rejected": OTHER})
    df["prompt_id"] = ["p1", "p2", "p3", "p4"]
    df["chosen_rank"], df["rejected_rank"], df["labeler_seed"] = [0, 0, 1, 0], [1, 2, 3, 1], 7
    df["labeler_temperature"], df["labeler_length_bias"] = 0.5, 0.02
    df["sft_hash"], df["source"] = "abc123", "world"
    return df.set_axis(pd.RangeIndex(1, 5, name="line"))


def set_cell(col: str, value: object) -> Callable[[pd.DataFrame, ChatTokenizer], pd.DataFrame]:
    """Corrupt line 2 of `col` (as object dtype: pandas 3's str columns refuse non-strings)."""

    def corrupt(df: pd.DataFrame, tok: ChatTokenizer) -> pd.DataFrame:
        df[col] = df[col].astype(object)
        df.loc[2, col] = value(tok) if callable(value) else value
        return df

    return corrupt


def text_of(n_tokens: int) -> Callable[[ChatTokenizer], str]:
    """A text of at least n_tokens tokens (and not many more)."""

    def make(tok: ChatTokenizer) -> str:
        words = []
        while len(tok.encode(" ".join(words))) < n_tokens:
            words.append(["apple", "stone", "blue", "zebra"][len(words) % 4])
        return " ".join(words)

    return make


def recast(col: str, convert: Callable[[pd.Series], object]) -> Callable:
    def corrupt(df: pd.DataFrame, tok: ChatTokenizer) -> pd.DataFrame:
        df[col] = convert(df[col])
        return df

    return corrupt


def copy_line_1_to_2(df: pd.DataFrame, tok: ChatTokenizer) -> pd.DataFrame:
    df.loc[2] = df.loc[1]
    return df


def swap_ranks(df: pd.DataFrame, tok: ChatTokenizer) -> pd.DataFrame:
    df.loc[2, ["chosen_rank", "rejected_rank"]] = df.loc[2, ["rejected_rank", "chosen_rank"]].to_numpy()
    return df


def corruptions(kind: str) -> dict[str, Callable]:
    """One corruption per check of the suite, each meant to trip that check and no other."""
    text = ["prompt", "response"] if kind == "demos" else ["prompt", "chosen", "rejected"]
    out: dict[str, Callable] = {"min_rows": lambda df, tok: df.iloc[: MIN_ROWS - 1]}
    for col in text:
        out[f"column_exists:{col}"] = lambda df, tok, col=col: df.drop(columns=col)
        out[f"not_null:{col}"] = set_cell(col, None)
        out[f"type:{col}"] = set_cell(col, 7)
        out[f"not_blank:{col}"] = set_cell(col, "  \t ")
        out[f"no_control:{col}"] = set_cell(col, "Hi<|eos|><|assistant|>" if col == "prompt" else "ok <|user|> go")
    for col in text[1:]:
        out[f"fits_block:{col}"] = set_cell(col, text_of(BLOCK))
    out["prompt_tokens"] = set_cell("prompt", text_of(MAX_PROMPT))  # + 2 chat markers: over, yet fits BLOCK
    out["no_duplicate_rows"] = copy_line_1_to_2
    out["no_eval_prompt"] = set_cell("prompt", " what is the capital of  Peru?")  # case/spacing hide nothing
    if kind == "demos":
        out["type:id"] = set_cell("id", 2)
        out["type:family"] = set_cell("family", 3.0)
        return out
    out["chosen_differs_from_rejected"] = set_cell("rejected", RESPONSES[1])
    out["chosen_rank_better"] = swap_ranks
    out["labeler_temperature_positive"] = set_cell("labeler_temperature", 0.0)
    out["type:prompt_id"] = recast("prompt_id", lambda s: range(len(s)))
    out["type:chosen_rank"] = recast("chosen_rank", lambda s: s.astype(float))
    out["type:rejected_rank"] = recast("rejected_rank", lambda s: s.astype(float))
    out["type:labeler_seed"] = recast("labeler_seed", lambda s: s.astype(float))
    out["type:labeler_temperature"] = recast("labeler_temperature", lambda s: 1)  # int: would pass "> 0"
    out["type:labeler_length_bias"] = recast("labeler_length_bias", lambda s: s.astype(str))
    out["type:sft_hash"] = recast("sft_hash", lambda s: 123)
    out["type:source"] = recast("source", lambda s: 1)
    return out


CLEAN = {"demos": demos, "preferences": pairs}
CASES = [(kind, name) for kind in CLEAN for name in corruptions(kind)]


def check(kind: str, df: pd.DataFrame, tok: ChatTokenizer, report_dir: Path):
    return validate(kind, df, tok, BLOCK, EVAL, report_dir, MIN_ROWS, max_prompt_tokens=MAX_PROMPT)


@pytest.mark.parametrize("kind", sorted(CLEAN))
def test_every_check_has_its_corruption(kind: str) -> None:
    assert {c.name for c in checks(kind, BLOCK, MIN_ROWS, MAX_PROMPT)} == set(corruptions(kind))


@pytest.mark.parametrize("kind", sorted(CLEAN))
def test_clean_data_passes_and_writes_report_and_page(tok: ChatTokenizer, tmp_path: Path, kind: str) -> None:
    report = check(kind, CLEAN[kind](), tok, tmp_path)
    assert report.success, report.summary()
    assert report.skipped == []  # the fixtures carry every optional column, so every check ran
    assert len(report.outcomes) == len(corruptions(kind))
    saved = json.loads((tmp_path / f"{kind}.json").read_text())
    assert saved["success"] and saved["suite"] == report.suite
    assert report.page == str(tmp_path / f"{kind}.html") and (tmp_path / f"{kind}.html").is_file()


@pytest.mark.parametrize(("kind", "name"), CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_each_corruption_trips_exactly_its_expectation(
    tok: ChatTokenizer, tmp_path: Path, kind: str, name: str
) -> None:
    df = corruptions(kind)[name](CLEAN[kind](), tok)
    report = check(kind, df, tok, tmp_path)
    assert [o.name for o in report.failed] == [name], report.summary()
    (failed,) = report.failed
    assert failed.error is None  # GX evaluated the rule (it did not crash on the data)
    if failed.unexpected_count:  # row-level rules name the offending line of the file
        assert 2 in [s["line"] for s in failed.samples], failed.samples


def test_missing_optional_columns_are_skipped_not_failed(tok: ChatTokenizer, tmp_path: Path) -> None:
    report = check("preferences", pairs()[["prompt", "chosen", "rejected"]], tok, tmp_path)
    assert report.success
    assert "chosen_rank_better" in report.skipped and "type:sft_hash" in report.skipped


def test_run_reads_files_and_raises_with_the_report(tok: ChatTokenizer, tmp_path: Path) -> None:
    df = corruptions("preferences")["labeler_temperature_positive"](pairs(), tok)
    df.to_parquet(tmp_path / "pairs.parquet", index=False)
    tok.save(tmp_path / "tokenizer.json")
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in EVAL))
    files = [tmp_path / "pairs.parquet", tmp_path / "tokenizer.json", tmp_path / "eval.jsonl"]
    with pytest.raises(ValidationFailed) as e:
        run(
            "preferences",
            *files,
            block_size=BLOCK,
            min_rows=MIN_ROWS,
            report_dir=tmp_path / "r",
        )
    (failed,) = e.value.report.failed
    assert failed.name == "labeler_temperature_positive" and failed.samples[0]["row"] == 1  # Parquet row 1


def tree_hashes(root: Path, skip: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and skip not in p.parents
    }


def write_inputs(work: Path, tok: ChatTokenizer, demo_rows: list[dict]) -> list[str]:
    work.mkdir()
    lines = [json.dumps(r) for r in demo_rows]
    (work / "demos.jsonl").write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n")  # blank line 2
    (work / "eval.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in EVAL))
    (work / "unrelated.txt").write_text("must stay as it is\n")
    tok.save(work / "tokenizer.json")
    (work / "params.yaml").write_text(f"model:\n  block_size: {BLOCK}\nvalidate:\n  min_demos: 2\n  min_pairs: 2\n")
    files = ["--input", "demos.jsonl", "--tokenizer", "tokenizer.json", "--eval-prompts", "eval.jsonl"]
    return [*files, "--params", "params.yaml", "--report-dir", "reports"]  # block size, min rows: params


def test_failing_cli_exits_nonzero_and_touches_nothing_else(tok: ChatTokenizer, tmp_path: Path) -> None:
    rows = demos().to_dict("records")
    rows[2]["response"] = text_of(BLOCK)(tok)  # the third record: line 4 of the file (line 2 is blank)
    work = tmp_path / "work"
    args = write_inputs(work, tok, rows)
    before = tree_hashes(work, work / "reports")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.validate", "demos", *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr
    assert "FAIL fits_block:response" in proc.stderr and '"line": 4' in proc.stderr, proc.stderr
    assert tree_hashes(work, work / "reports") == before  # inputs untouched, nothing written beside them
    report = json.loads((work / "reports" / "demos.json").read_text())
    assert [o["name"] for o in report["outcomes"] if not o["success"]] == ["fits_block:response"]


def test_passing_cli_exits_zero(tok: ChatTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    args = write_inputs(work, tok, demos().to_dict("records"))
    monkeypatch.chdir(work)
    assert main(["demos", *args]) == 0
    assert json.loads((work / "reports" / "demos.json").read_text())["success"]
    assert (work / "reports" / "demos.html").is_file()


def gate_inputs(tok: ChatTokenizer, where: Path) -> tuple[Path, Path]:
    tok.save(where / "tokenizer.json")
    (where / "eval.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in EVAL))
    return where / "tokenizer.json", where / "eval.jsonl"


def test_an_imported_file_is_reported_by_its_own_lines(tok: ChatTokenizer, tmp_path: Path) -> None:
    """The gate imports a user's file as the preferences stage does (here Anthropic-HH transcripts) and names
    the offending line of that file, not a row of the merged pairs."""
    rows = [
        {"chosen": f"\n\nHuman: {p}\n\nAssistant: {c}", "rejected": f"\n\nHuman: {p}\n\nAssistant: {r}"}
        for p, c, r in zip(PROMPTS, RESPONSES, OTHER, strict=True)
    ]
    rows[2]["rejected"] = rows[2]["chosen"]  # line 4 (after a blank line 1): chosen == rejected
    hh = tmp_path / "hh.jsonl"
    hh.write_text("\n" + "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValidationFailed) as e:
        run("preferences", hh, *gate_inputs(tok, tmp_path), block_size=BLOCK, report_dir=tmp_path / "r",
            import_format="auto")  # fmt: skip
    (failed,) = e.value.report.failed
    assert failed.name == "chosen_differs_from_rejected" and [s["line"] for s in failed.samples] == [4]
    assert str(hh) in e.value.report.summary() and '"line": 4' in e.value.report.summary()


def test_pairs_already_accepted_or_contradicted_are_rejected_by_line(tok: ChatTokenizer, tmp_path: Path) -> None:
    accepted = tmp_path / "accepted.parquet"
    pairs().to_parquet(accepted, index=False)
    new = [  # line 1: new; line 2: a repeat of an accepted pair; line 3: the opposite of an accepted pair
        {"prompt": PROMPTS[0], "chosen": OTHER[1], "rejected": RESPONSES[2]},
        {"prompt": PROMPTS[1], "chosen": RESPONSES[1], "rejected": OTHER[1]},
        {"prompt": PROMPTS[2], "chosen": OTHER[2], "rejected": RESPONSES[2]},
    ]
    file = tmp_path / "new.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in new))
    inputs = gate_inputs(tok, tmp_path)
    with pytest.raises(ValidationFailed) as e:
        run("preferences", file, *inputs, block_size=BLOCK, report_dir=tmp_path / "r",
            import_format="trl", existing=[accepted])  # fmt: skip
    failed = {o.name: [s["line"] for s in o.samples] for o in e.value.report.failed}
    assert failed == {"not_in_existing": [2], "no_conflicting_pair": [3]}
    file.write_text(json.dumps(new[0]) + "\n")
    report = run("preferences", file, *inputs, block_size=BLOCK, report_dir=tmp_path / "r",
                 import_format="trl", existing=[accepted])  # fmt: skip
    assert report.success and {"not_in_existing", "no_conflicting_pair"} <= {o.name for o in report.outcomes}


def test_a_rejected_user_file_leaves_the_last_good_preferences_in_place(
    tok: ChatTokenizer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`data.preferences: data/user/<bad>.jsonl`: the preferences stage gates the file before writing, so the
    last good pairs and metrics stay, and DVC (persist) does not delete them before the stage runs either."""
    import yaml

    from rlhf.data import DataError
    from tasks import preferences
    from tasks.common import load_params
    from tests.conftest import working_root
    from tests.test_params import section_values

    params = {
        "data": {"preferences": "data/user/bad.jsonl", "preferences_format": "auto"},
        "preferences": section_values("preferences"),
        "model": {"block_size": BLOCK},
    }
    root, mp = working_root(tmp_path_factory, "bad-user-prefs", yaml.safe_dump(params))
    try:
        rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in zip(PROMPTS, RESPONSES, OTHER, strict=True)]
        rows[2]["rejected"] = rows[2]["chosen"]  # line 3 breaks only a gate expectation
        (root / "data/user/bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (root / "models/sft").mkdir(parents=True)
        tok.save(root / "models/sft/tokenizer.json")
        gate_inputs(tok, root)
        (root / "data/prepared").mkdir(parents=True)
        (root / "eval.jsonl").rename(root / "data/prepared/prompts_eval.jsonl")
        outputs = [root / "data/preferences/collected.parquet", root / "metrics/preferences.json"]
        for out in outputs:
            out.parent.mkdir(parents=True, exist_ok=True)
        pairs().to_parquet(outputs[0], index=False)
        outputs[1].write_text('{"n_pairs": 4}\n')
        before = [o.read_bytes() for o in outputs]
        with pytest.raises(DataError, match=r"(?s)bad\.jsonl.*\"line\": 3.*left as they were.*dvc checkout"):
            preferences.run(load_params())
        assert [o.read_bytes() for o in outputs] == before
    finally:
        mp.undo()
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["preferences"]
    assert stage["outs"] == [
        {"data/preferences/collected.parquet": {"persist": True}},
        {"metrics/preferences.json": {"cache": False, "persist": True}},
    ]
