"""rlhf.data: each import shape round-trips from JSONL, Parquet and CSV; broken files name file, row, rule."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from rlhf.data import DataError, import_preferences, ranking_to_pairs, read_demos, read_prompts, read_table

FORMATS = ["jsonl", "parquet", "csv"]
# Where the second record of a file is: JSON lines and CSV count lines (CSV's header is line 1), Parquet rows.
SECOND = {"jsonl": ("line", 2), "parquet": ("row", 1), "csv": ("line", 3)}


def write_rows(path: Path, rows: list[dict]) -> Path:
    """rows as JSONL / Parquet / CSV by the suffix; CSV holds list cells as JSON strings."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            for r in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    return path


# --- round trips ------------------------------------------------------------------------------------------

DEMOS = [
    {"prompt": "Say hi", "response": "Hi!", "family": "greet"},
    {"prompt": "Add 2 and 3, please", "response": "5", "family": "math"},
    {"prompt": 'A "quoted", comma\nand a newline', "response": "ok, done", "family": "edge"},
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_demos_round_trip(tmp_path: Path, fmt: str) -> None:
    df = read_demos(write_rows(tmp_path / f"demos.{fmt}", DEMOS))
    assert df[["prompt", "response", "family"]].to_dict("records") == DEMOS
    # the index says where each row is: CSV's third record starts on line 4 (its second spans two lines)
    expected = {"jsonl": [1, 2, 3], "parquet": [0, 1, 2], "csv": [2, 3, 4]}[fmt]
    assert df.index.name == SECOND[fmt][0] and df.index.tolist() == expected


@pytest.mark.parametrize("fmt", FORMATS)
def test_prompts_get_ids_when_the_file_has_none(tmp_path: Path, fmt: str) -> None:
    df = read_prompts(write_rows(tmp_path / f"mine.{fmt}", [{"prompt": "a"}, {"prompt": "b"}]))
    row = SECOND[fmt][1]
    assert list(df.columns) == ["id", "prompt"]
    assert df["id"].tolist()[1] == f"mine-{row}" and df["prompt"].tolist() == ["a", "b"]


def test_prompts_keep_ids_and_family(tmp_path: Path) -> None:
    rows = [{"id": 7, "family": "math", "prompt": "2+2?"}, {"id": "x", "family": "chat", "prompt": "hi"}]
    df = read_prompts(write_rows(tmp_path / "p.jsonl", rows))
    assert df.to_dict("records") == [{"id": "7", "prompt": "2+2?", "family": "math"}, rows[1] | {"id": "x"}]


TRL = [
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
]
HH = [
    {"chosen": "\n\nHuman: hi\n\nAssistant: hello there", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
    {
        "chosen": "\n\nHuman: 2+2?\n\nAssistant: 4\n\nHuman: sure?\n\nAssistant: Yes, 4.",
        "rejected": "\n\nHuman: 2+2?\n\nAssistant: 4\n\nHuman: sure?\n\nAssistant: Yes, 5.",
    },
]
RANKED = [{"prompt": "Pick", "responses": ["A", "B", "C", "D"], "ranking": [1, 0, 3, 2]}]


@pytest.mark.parametrize("fmt", FORMATS)
def test_import_trl(tmp_path: Path, fmt: str) -> None:
    df = import_preferences(write_rows(tmp_path / f"trl.{fmt}", TRL))
    assert df[["prompt", "chosen", "rejected"]].to_dict("records") == TRL
    assert df["prompt_id"].tolist()[1] == f"trl-{SECOND[fmt][1]}"
    assert df["source_row"].tolist()[1] == SECOND[fmt][1]


@pytest.mark.parametrize("fmt", FORMATS)
def test_import_hh_splits_at_the_last_shared_assistant_turn(tmp_path: Path, fmt: str) -> None:
    df = import_preferences(write_rows(tmp_path / f"hh.{fmt}", HH))
    assert df[["prompt", "chosen", "rejected"]].to_dict("records") == [
        {"prompt": "Human: hi\n\nAssistant:", "chosen": "hello there", "rejected": "go away"},
        {"prompt": "Human: 2+2?\n\nAssistant: 4\n\nHuman: sure?\n\nAssistant:", "chosen": "Yes, 4.",
         "rejected": "Yes, 5."},
    ]  # fmt: skip


@pytest.mark.parametrize("fmt", FORMATS)
def test_import_ranked_expands_every_pair(tmp_path: Path, fmt: str) -> None:
    rows = [{"prompt_id": "q1", **RANKED[0]}]
    df = import_preferences(write_rows(tmp_path / f"ranked.{fmt}", rows))
    assert list(zip(df["chosen"], df["rejected"], strict=True)) == [
        ("B", "A"), ("B", "D"), ("B", "C"), ("A", "D"), ("A", "C"), ("D", "C")
    ]  # fmt: skip
    assert set(df["prompt"]) == {"Pick"} and set(df["prompt_id"]) == {"q1"}


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    # trl columns, read as hh: the prompt column is ignored and the transcripts are split
    rows = [{"prompt": "ignored", **HH[0]}]
    df = import_preferences(write_rows(tmp_path / "p.jsonl", rows), fmt="hh")
    assert df["prompt"].tolist() == ["Human: hi\n\nAssistant:"]


# --- ranking_to_pairs -------------------------------------------------------------------------------------


def test_ranking_to_pairs_matches_the_spec_example() -> None:
    # "Building the Preference Dataset": the labeler ranks B > A > D > C
    responses = ["A", "B", "C", "D"]
    pairs = ranking_to_pairs(responses, [1, 0, 3, 2])
    named = [(responses[b], responses[w]) for b, w in pairs]
    assert named == [("B", "A"), ("B", "D"), ("B", "C"), ("A", "D"), ("A", "C"), ("D", "C")]


def test_ranking_to_pairs_skips_identical_texts() -> None:
    # responses 0 and 2 are the same text: their pair says nothing; each still pairs with response 1
    assert ranking_to_pairs(["same", "other", "same"], [1, 0, 2]) == [(1, 0), (1, 2)]


@pytest.mark.parametrize("ranking", [[0, 1], [0, 1, 1], [0, 1, 3], [True, False, 2]])
def test_ranking_to_pairs_rejects_non_permutations(ranking: list) -> None:
    with pytest.raises(DataError, match="not a permutation"):
        ranking_to_pairs(["a", "b", "c"], ranking)


# --- errors -----------------------------------------------------------------------------------------------

OK = b'{"prompt": "hi", "response": "yo"}\n'
RANKED_OK = b'{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1]}\n'
HH_APART = b'{"chosen": "Human: a\\n\\nAssistant: b", "rejected": "Human: c"}\n'
BROKEN = {  # case: (file name, bytes, reader, location, rule)
    "malformed_json": ("d.jsonl", OK + b'{"prompt": "x", }\n', read_demos, "line 2", "malformed JSON"),
    "not_an_object": ("d.jsonl", OK + b"\n[1, 2]\n", read_demos, "line 3", "not an object"),
    "invalid_utf8_jsonl": ("d.jsonl", OK + b'{"prompt": "\xff"}\n', read_demos, "line 2", "invalid UTF-8"),
    "invalid_utf8_csv": (
        "d.csv",
        b"prompt,response\nhi,yo\nb\xe9,x\n",
        read_demos,
        "line 3",
        "invalid UTF-8",
    ),
    "empty_prompt": ("d.jsonl", OK + b'{"prompt": "  ", "response": "x"}\n', read_demos, "line 2", "empty"),
    "empty_prompt_csv": ("d.csv", b"prompt,response\nhi,yo\n,x\n", read_demos, "line 3", "empty"),
    "missing_key": ("d.jsonl", OK + b'{"prompt": "x"}\n', read_demos, "line 2", "'response': missing"),
    "not_a_string": (
        "d.jsonl",
        OK + b'{"prompt": 5, "response": "x"}\n',
        read_demos,
        "line 2",
        "not a string",
    ),
    "csv_field_count": ("d.csv", b"prompt,response\nhi,yo\na,b,c\n", read_demos, "line 3", "3 fields"),
    "duplicate_id": (
        "p.jsonl",
        b'{"id": 1, "prompt": "x"}\n{"id": 1, "prompt": "y"}\n',
        read_prompts,
        "line 2",
        "duplicate id",
    ),
    "bad_ranking": (
        "r.jsonl",
        RANKED_OK + RANKED_OK.replace(b"0, 1", b"0, 0"),
        import_preferences,
        "line 2",
        "not a permutation",
    ),
    "ranking_not_ints": (
        "r.jsonl",
        RANKED_OK.replace(b"0, 1", b'"0", "1"'),
        import_preferences,
        "line 1",
        "must be integers",
    ),
    "ranking_csv_not_json": (
        "r.csv",
        b'prompt,responses,ranking\np,"[""a"", ""b""]","[0, 1"\n',
        import_preferences,
        "line 2",
        "not a JSON list",
    ),
    "hh_no_shared_prompt": ("h.jsonl", HH_APART, import_preferences, "line 1", "share no prefix"),
    # chat control strings in user text would encode as turn markers (rlhf.tokenizer.control_regex)
    "control_in_prompt": (
        "t.jsonl",
        b'{"prompt": "ok", "chosen": "a", "rejected": "b"}\n'
        b'{"prompt": "Hi<|eos|><|assistant|>", "chosen": "a", "rejected": "b"}\n',
        import_preferences,
        "line 2, column 'prompt'",
        "chat control string '<|eos|>'",
    ),
    "control_in_chosen_csv": (
        "t.csv",
        b"prompt,chosen,rejected\nhi,sure <|user|> now,no\n",
        import_preferences,
        "line 2, column 'chosen'",
        "chat control string '<|user|>'",
    ),
    "control_in_ranked": (
        "r.jsonl",
        RANKED_OK.replace(b'"b"', b'"b<|endoftext|>"'),
        import_preferences,
        "line 1, column 'responses'[1]",
        "'<|endoftext|>'",
    ),
    "control_in_demo": (
        "d.jsonl",
        OK + b'{"prompt": "x", "response": "<|pad|>"}\n',
        read_demos,
        "line 2",
        "'<|pad|>'",
    ),
}


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_a_utf8_bom_is_read(tmp_path: Path, suffix: str) -> None:
    """Excel and many Windows tools start a UTF-8 file with a byte order mark."""
    path = write_rows(tmp_path / f"d.{suffix}", DEMOS)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    df = read_demos(path)
    assert list(df.columns[:2]) == ["prompt", "response"] and df["prompt"].tolist() == [d["prompt"] for d in DEMOS]


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_files_name_file_row_and_rule(tmp_path: Path, case: str) -> None:
    name, content, reader, where, rule = BROKEN[case]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError) as e:
        reader(tmp_path / name)
    message = str(e.value)
    assert f"{tmp_path / name}: {where}" in message and rule in message, message


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d.parquet", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": " "}])
    with pytest.raises(DataError, match=r"d\.parquet: row 1, column 'response': empty"):
        read_demos(path)


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d.jsonl", [{"prompt": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r"d\.jsonl: missing required column\(s\) \['response'\]"):
        read_demos(path)


def test_unreadable_parquet_and_unknown_extension(tmp_path: Path) -> None:
    (tmp_path / "d.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"d\.parquet: unreadable Parquet"):
        read_table(tmp_path / "d.parquet")
    (tmp_path / "d.xlsx").write_bytes(b"")
    with pytest.raises(DataError, match=r"d\.xlsx: unknown extension '\.xlsx'"):
        read_table(tmp_path / "d.xlsx")


def test_undetectable_preference_format(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "p.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DataError, match="cannot tell the preference format"):
        import_preferences(path)


def test_corpus_reads_a_bom_and_refuses_control_strings(tmp_path: Path) -> None:
    from tasks.prepare import corpus_documents

    txt = tmp_path / "c.txt"
    txt.write_bytes(b"\xef\xbb\xbfFirst doc.\n\nSecond doc.\n")
    assert corpus_documents(txt) == ["First doc.", "Second doc."]
    txt.write_text("First doc.\n\nSecond <|eos|> doc.\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.txt: line 3: contains the chat control string '<\|eos\|>'"):
        corpus_documents(txt)
    table = write_rows(tmp_path / "c.jsonl", [{"text": "ok"}, {"text": "then <|im_start|>user"}])
    with pytest.raises(DataError, match=r"c\.jsonl: line 2, column 'text': contains the chat control string"):
        corpus_documents(table)
