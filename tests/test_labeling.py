"""The labeling store, app, export, statistics and Label Studio interop (no browser; see test_labeling_browser)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from rlhf.data import DataError, import_preferences
from tasks.labeling import db, export, labelstudio, stats
from tests.labeling_support import XSS, add_tasks, running_app, tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def count(conn, kind: str | None = None) -> int:
    return len(db.judgements(conn, kind))


# --- statistics: worked numbers --------------------------------------------------------------------------


def test_kendall_tau_and_pairwise_agreement_worked_numbers() -> None:
    assert stats.concordance([0, 1, 2], [0, 1, 2]) == (3, 0) and stats.kendall_tau([0, 1, 2], [0, 1, 2]) == 1
    assert stats.kendall_tau([0, 1, 2, 3], [3, 2, 1, 0]) == -1
    # one swapped neighbour of three: C = 2, D = 1 -> tau 1/3, agreement 2/3
    assert stats.kendall_tau([0, 1, 2], [1, 0, 2]) == pytest.approx(1 / 3)
    rows = [
        {"task_id": 1, "ranking": [0, 1, 2]},
        {"task_id": 1, "ranking": [1, 0, 2]},
        {"task_id": 2, "ranking": [0, 1]},
    ]
    got = stats.agreement(rows)
    assert got["overlapping_tasks"] == 1 and got["labeler_pairs"] == 1
    assert got["pairwise_agreement"] == pytest.approx(2 / 3) and got["kendall_tau"] == pytest.approx(1 / 3)


def test_reward_model_agreement_counts_pairs_as_people_ordered_them() -> None:
    # The judge prefers longer texts; people ranked [long, short, mid]: pairs (L,S) yes, (L,M) yes, (M... no:
    # ranking [0, 1, 2] over ["long text here", "a", "mid text"] gives pairs (0,1) (0,2) (1,2): 2 of 3 agree.
    rankings = [{"task_id": 7, "prompt": "p", "responses": ["long text here", "a", "mid text"], "ranking": [0, 1, 2]}]
    calls = []

    def judge(prompts: list[str], responses: list[str]) -> list[float]:
        calls.append(len(responses))
        return [float(len(r)) for r in responses]

    cache: dict = {}
    assert stats.reward_model_agreement(rankings, judge, cache) == {"pairs": 3, "agreement": pytest.approx(2 / 3)}
    stats.reward_model_agreement(rankings, judge, cache)
    assert calls == [3]  # scored once, then cached


def test_borda_consensus() -> None:
    assert export.borda([[0, 1, 2]]) == [0, 1, 2]
    assert export.borda([[0, 1, 2], [1, 0, 2]]) == [0, 1, 2]  # tie on points -> lower index first
    assert export.borda([[2, 1, 0], [2, 0, 1], [1, 2, 0]]) == [2, 1, 0]


# --- the store --------------------------------------------------------------------------------------------


def test_each_task_is_served_to_at_most_n_labelers(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "l.db")
    t1, t2 = add_tasks(conn, 2, k=3, max_labelers=2)
    assert db.next_task(conn, "a", now=0)["id"] == t1
    assert db.next_task(conn, "a", now=1)["id"] == t1  # the open task again, not a new one
    assert db.next_task(conn, "b", now=2)["id"] == t1
    assert db.next_task(conn, "c", now=3)["id"] == t2  # t1's two slots are taken
    db.submit(conn, t1, "a", "skip", now=4)  # a skip frees the slot
    assert db.next_task(conn, "d", now=5)["id"] == t1
    db.submit(conn, t2, "c", "flag", now=6)  # a flag withdraws the task from everyone
    assert db.next_task(conn, "e", now=7) is None
    # an abandoned assignment goes back to the pool after the lease; its holder then cannot rank it twice over
    late = 2 + db.LEASE_SECONDS + 1
    assert db.next_task(conn, "e", now=late)["id"] == t1  # b's slot lapsed (d holds the other)
    db.submit(conn, t1, "e", "rank", [0, 1, 2], now=late)
    db.submit(conn, t1, "d", "rank", [0, 2, 1], now=late)
    with pytest.raises(db.LabelError, match="ranked by others meanwhile"):
        db.submit(conn, t1, "b", "rank", [0, 1, 2], now=late)
    assert db.next_task(conn, "b", now=late) is None  # its lapsed assignment is gone, t1 is full, t2 flagged


def test_responses_are_shown_in_a_stable_random_order_without_model_names(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "l.db")
    db.add_tasks(conn, [db.NewTask("q", "q", [str(i) for i in range(6)], "secret-model-name")], max_labelers=9)
    views: dict[str, list[int]] = {}
    for who in ("a", "b", "c", "d"):
        view = db.next_task(conn, who)
        views[who] = [r["index"] for r in view["responses"]]
        assert [r["text"] for r in view["responses"]] == [str(i) for i in views[who]]
        assert view == db.next_task(conn, who)  # a reload shows the same order
        assert "secret-model-name" not in json.dumps(view)
    assert all(sorted(v) == list(range(6)) for v in views.values())
    assert len({tuple(v) for v in views.values()}) > 1  # not one fixed order for everyone


def test_a_crash_between_submissions_loses_nothing_submitted(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    conn = db.connect(path)
    [t1, t2] = add_tasks(conn, 2, k=2)
    db.next_task(conn, "a")
    db.submit(conn, t1, "a", "rank", [1, 0])
    conn.close()
    # Another process takes t2, starts writing its submission and dies before committing.
    script = f"""
import os
from tasks.labeling import db
c = db.connect({str(path)!r})
assert db.next_task(c, "a")["id"] == {t2}
c.execute("BEGIN IMMEDIATE")
c.execute("INSERT INTO judgements (task_id, labeler, kind, ranking, served_at, submitted_at) "
          "VALUES ({t2}, 'a', 'rank', '[0, 1]', 0, 0)")
os._exit(1)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    conn = db.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    [kept] = db.judgements(conn)
    assert (kept["task_id"], kept["ranking"]) == (t1, [1, 0])
    db.submit(conn, t2, "a", "rank", [0, 1])  # the half-written one can be submitted again
    assert count(conn, "rank") == 2


# --- the app over HTTP ------------------------------------------------------------------------------------


def test_malformed_submissions_get_a_4xx_and_write_nothing(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "l.db")
    [t1, t2] = add_tasks(conn, 2, k=3)
    with running_app(tmp_path / "l.db") as url, httpx.Client(base_url=url) as client:
        assert client.get("/api/next", params={"labeler": "ann"}).json()["task"]["id"] == t1
        bad = {
            "not a permutation": ({"task_id": t1, "labeler": "ann", "action": "rank", "ranking": [0, 0, 1]}, 422),
            "too short": ({"task_id": t1, "labeler": "ann", "action": "rank", "ranking": [0, 1]}, 422),
            "not integers": ({"task_id": t1, "labeler": "ann", "action": "rank", "ranking": ["0", "1", "2"]}, 422),
            "wrong task": ({"task_id": t2, "labeler": "ann", "action": "rank", "ranking": [0, 1, 2]}, 409),
            "no such task": ({"task_id": 999, "labeler": "ann", "action": "rank", "ranking": [0, 1, 2]}, 404),
            "missing name": ({"task_id": t1, "action": "rank", "ranking": [0, 1, 2]}, 422),
            "blank name": ({"task_id": t1, "labeler": "  ", "action": "rank", "ranking": [0, 1, 2]}, 422),
            "bad action": ({"task_id": t1, "labeler": "ann", "action": "love", "ranking": [0, 1, 2]}, 422),
        }
        messages = {}
        for what, (body, status) in bad.items():
            res = client.post("/api/submit", json=body)
            assert res.status_code == status, (what, res.text)
            messages[what] = res.json()["error"]
        assert "not a permutation of 0..2" in messages["not a permutation"]
        assert "was not served to 'ann'" in messages["wrong task"]
        assert "name is required" in messages["missing name"]
        assert client.post("/api/submit", content=b"{nope").status_code == 400
        assert count(conn) == 0
        ok = client.post("/api/submit", json={"task_id": t1, "labeler": "ann", "action": "rank", "ranking": [2, 0, 1]})
        assert ok.status_code == 200 and ok.json()["progress"] == {"done": 1, "remaining": 1}
        again = client.post(
            "/api/submit", json={"task_id": t1, "labeler": "ann", "action": "rank", "ranking": [0, 1, 2]}
        )
        assert again.status_code == 409 and "already answered" in again.json()["error"]
        assert [j["ranking"] for j in db.judgements(conn)] == [[2, 0, 1]]


def test_twenty_concurrent_labelers_submit_400_rankings_exactly_once(tmp_path: Path) -> None:
    from tasks.labeling import crowd

    conn = db.connect(tmp_path / "l.db")
    add_tasks(conn, 420, k=4)
    with running_app(tmp_path / "l.db") as url:
        result = crowd.run(url, crowd.crowd(20, seed=3), max_tasks=400)
    print(f"\n20 labelers, 400 rankings: submit p50 {result['submit_p50_s'] * 1000:.0f} ms, "
          f"p95 {result['submit_p95_s'] * 1000:.0f} ms")  # fmt: skip
    assert result["errors"] == 0 and result["rankings"] == 400
    rows = db.judgements(conn)
    assert len(rows) == 400 and all(r["kind"] == "rank" for r in rows)
    assert len({r["task_id"] for r in rows}) == 400  # max_labelers 1: no task ranked twice
    assert len({r["labeler"] for r in rows}) == 20
    assert all(sorted(r["ranking"]) == [0, 1, 2, 3] for r in rows)
    assert {m: r["rank"] for m, r in result["members"].items()} == {
        name: sum(r["labeler"] == name for r in rows) for name in result["members"]
    }


def test_pages_escape_text_and_health_is_json(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "l.db")
    [t1] = db.add_tasks(conn, [db.NewTask(XSS, "x", [XSS, "fine"], "m")])
    db.next_task(conn, XSS)
    db.submit(conn, t1, XSS, "rank", [1, 0])
    with running_app(tmp_path / "l.db", lambda: None) as url:
        assert httpx.get(f"{url}/health").json() == {"status": "ok", "tasks": 1, "db": str(tmp_path / "l.db")}
        page = httpx.get(f"{url}/stats").text
        assert "&lt;script&gt;window.pwned" in page and "<script>window" not in page
        index = httpx.get(f"{url}/").text
        assert '<label for="name">' in index and "cdn" not in index.lower()
        assert httpx.get(f"{url}/static/label.js").status_code == 200


# --- export ------------------------------------------------------------------------------------------------


def test_export_writes_finished_rankings_once_in_the_ranked_format(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "l.db")
    solo = add_tasks(conn, 3, k=3)
    [pair] = add_tasks(conn, 1, k=3, max_labelers=2, first=10)
    for who in ("a", "b"):
        while (task := db.next_task(conn, who)) is not None:
            tid = task["id"]
            if tid == solo[2]:
                db.submit(conn, tid, who, "flag")
            elif who == "b" and tid == solo[1]:
                db.submit(conn, tid, who, "skip")
            else:
                db.submit(conn, tid, who, "rank", [2, 1, 0] if who == "a" else [2, 0, 1])
    first = export.export(conn, tmp_path, now=0)
    rows = [json.loads(line) for line in Path(first["file"]).read_text().splitlines()]
    assert Path(first["file"]).name == "labels-19700101T000000Z.jsonl"
    # solo[0], solo[1] ranked by a; `pair` by both (Borda: 2 first, then 0 and 1 tie -> 0); flagged: not exported
    assert sorted(r["task_id"] for r in rows) == sorted([solo[0], solo[1], pair])
    both = next(r for r in rows if r["task_id"] == pair)
    assert both["labeler"] == "a,b" and both["ranking"] == [2, 0, 1] and both["n_labelers"] == 2
    assert set(rows[0]) >= {"prompt", "responses", "ranking", "labeler", "task_id", "model_version", "served_at"}
    pairs = import_preferences(first["file"])
    assert len(pairs) == 3 * 3 and set(pairs.columns) >= {"prompt", "chosen", "rejected"}
    flagged = json.loads((tmp_path / export.FLAG_REPORT).read_text())
    assert [f["task_id"] for f in flagged] == [solo[2]] and flagged[0]["responses"][0].startswith("Answer 0")
    assert export.export(conn, tmp_path, now=1)["file"] is None  # nothing new since the last export
    [newer] = add_tasks(conn, 1, k=2, first=20)
    db.next_task(conn, "a")
    db.submit(conn, newer, "a", "rank", [0, 1])
    second = export.export(conn, tmp_path, now=0)  # same second: a new name, nothing overwritten
    assert Path(second["file"]).name == "labels-19700101T000000Z-2.jsonl" and second["rows"] == 1


# --- Label Studio -------------------------------------------------------------------------------------------


def label_studio_export(tasks: list[dict], choices: list[str | None]) -> list[dict]:
    """A Label Studio JSON export of our tasks, shaped as its documentation shows (task id, data, annotations
    with id, completed_by, result regions, was_cancelled, lead_time, ...)."""
    out = []
    for n, (task, selected) in enumerate(zip(tasks, choices, strict=True)):
        result = [] if selected is None else [
            {"id": f"r{n}", "from_name": "pw", "to_name": "text1", "type": "pairwise", "origin": "manual",
             "value": {"selected": selected}}
        ]  # fmt: skip
        annotation = {
            "id": 1000 + n, "completed_by": 3, "result": result, "was_cancelled": selected is None,
            "ground_truth": False, "created_at": "2026-11-30T08:00:00.000000Z", "lead_time": 4.2, "task": n + 1,
        }  # fmt: skip
        out.append({"id": n + 1, "project": 1, "data": task["data"], "annotations": [annotation], "predictions": []})
    return out


def test_label_studio_export_then_import_gives_the_chosen_pairs(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "l.db")
    add_tasks(conn, 2, k=3)
    info = labelstudio.export_tasks(conn, tmp_path / "tasks.json")
    tasks = json.loads(Path(info["file"]).read_text())
    assert info["tasks"] == len(tasks) == 2 * 3
    config = Path(info["config"]).read_text()
    assert '<Pairwise name="pw" toName="text1,text2"/>' in config and 'value="$prompt"' in config
    choices = ["left", "right", None, "left", "right", "left"]
    exported = tmp_path / "export.json"
    exported.write_text(json.dumps(label_studio_export(tasks, choices)))
    got = labelstudio.import_export(exported, tmp_path / "incoming", now=0)
    assert got == {"file": str(tmp_path / "incoming/label-studio-19700101T000000Z.jsonl"), "pairs": 5,
                   "skipped_annotations": 1}  # fmt: skip
    pairs = import_preferences(got["file"])
    first, second = tasks[0]["data"], tasks[1]["data"]
    assert (pairs["chosen"].iloc[0], pairs["rejected"].iloc[0]) == (first["text1"], first["text2"])
    assert (pairs["chosen"].iloc[1], pairs["rejected"].iloc[1]) == (second["text2"], second["text1"])
    broken = label_studio_export(tasks[:1], ["up"])
    exported.write_text(json.dumps(broken))
    with pytest.raises(DataError, match=r"export.json: task #0 \(id 1\).*'left' or 'right'"):
        labelstudio.import_export(exported, tmp_path / "incoming")


# --- prepare and the command line ----------------------------------------------------------------------------


def test_prepare_samples_k_answers_per_new_prompt_from_sft_without_a_champion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks import registry
    from tasks.labeling.prepare import PrepareConfig, prepare

    monkeypatch.setattr(registry, "alias_version", lambda name, alias: None)  # no champion registered
    tiny_checkpoint(tmp_path)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"what is the cat {i}"}) + "\n" for i in range(5)))
    conn = db.connect(tmp_path / "l.db")
    with pytest.raises(ValueError, match="k >= 2"):
        prepare(conn, tmp_path, prompts, PrepareConfig(n=3, k=1))
    cfg = PrepareConfig(n=3, k=3, max_new_tokens=5, batch_prompts=2)
    made = prepare(conn, tmp_path, prompts, cfg)
    assert made["tasks"] == 3 and str(made["model_version"]).startswith("models/sft@")
    rows = conn.execute("SELECT prompt_id, responses, model_version FROM tasks").fetchall()
    assert all(len(json.loads(r["responses"])) == 3 for r in rows)
    # a second batch draws only prompts without tasks
    assert prepare(conn, tmp_path, prompts, cfg)["tasks"] == 2
    assert sorted(r[0] for r in conn.execute("SELECT prompt_id FROM tasks")) == [f"q{i}" for i in range(5)]
    assert prepare(conn, tmp_path, prompts, cfg)["tasks"] == 0


def test_command_line_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tasks.labeling.__main__ import main

    bad = tmp_path / "export.json"
    bad.write_text('{"not": "a list"}')
    assert main(["--db", str(tmp_path / "l.db"), "import-label-studio", str(bad)]) == 2
    assert f"{bad}: a Label Studio JSON export is a list of tasks" in capsys.readouterr().err
    assert main(["--db", str(tmp_path / "none.db"), "export"]) == 0
    assert "no labeling database" in capsys.readouterr().out


def test_options_go_before_or_after_the_subcommand() -> None:
    from tasks.labeling.__main__ import parser

    p = parser()
    assert [p.parse_args(a).port for a in (["--port", "9000", "serve"], ["serve", "--port", "9001"], [])] == [
        9000,
        9001,
        8600,
    ]
    assert [p.parse_args(a).db for a in (["--db", "a.db", "export"], ["export", "--db", "b.db"], ["export"])] == [
        Path("a.db"),
        Path("b.db"),
        None,
    ]


def test_identical_answers_are_offered_once() -> None:
    """A peaked champion samples the same answer twice: ranked apart, the copies would export pairs that repeat
    and contradict each other (the retraining gate refuses such a file), so a task offers each answer once."""
    from tasks.labeling.prepare import distinct_responses

    assert distinct_responses(["Lima.", "Paris.", "Lima.", "  ", "Paris. ", "Quito."]) == ["Lima.", "Paris.", "Quito."]
    assert distinct_responses(["Lima.", "Lima."]) == ["Lima."]  # fewer than two: make_tasks leaves the prompt out


def test_a_ranking_that_repeats_an_accepted_pair_is_held_back() -> None:
    """The gate refuses a whole file for one pair it already holds; the export keeps such a ranking out (and
    says so) instead of losing every other ranking of the batch with it."""
    from tasks.labeling.export import hold_back_repeats

    rows = [
        {"prompt": "p", "responses": ["Lima.", "Quito.", "Paris."], "ranking": [0, 2, 1], "judgement_ids": "1"},
        {"prompt": "q", "responses": ["Yes.", "No."], "ranking": [1, 0], "judgement_ids": "2,3"},
    ]
    kept, held = hold_back_repeats(rows, {("q", "No.", "Yes.")})
    assert held == [2, 3] and [r["prompt"] for r in kept] == ["p"] and "judgement_ids" not in kept[0]
    kept, held = hold_back_repeats(rows, {("q", "Yes.", "No.")})  # the reverse is no repeat
    assert held == [] and len(kept) == 2


def test_prepare_samples_like_the_pipeline_unless_told_otherwise(tmp_path_factory, monkeypatch):
    """bin/label prepare takes k, length and temperature from params.yaml `preferences` (one config source);
    flags override them."""
    from tasks.labeling import __main__ as cli
    from tasks.labeling import prepare as prep
    from tests.conftest import working_root

    root, mp = working_root(
        tmp_path_factory, "label-cli", "preferences:\n  k: 3\n  max_new_tokens: 20\n  temperature: 0.8\n"
    )
    seen = []
    monkeypatch.setattr(prep, "prepare", lambda conn, wd, prompts, cfg, model: seen.append(cfg) or {"tasks": 0})
    try:
        assert cli.main(["prepare", "--n", "2", "--db", str(root / "l.db")]) == 0
        assert cli.main(["prepare", "--n", "2", "--k", "5", "--db", str(root / "l.db")]) == 0
    finally:
        mp.undo()
    assert (seen[0].k, seen[0].max_new_tokens, seen[0].temperature) == (3, 20, 0.8)
    assert (seen[1].k, seen[1].max_new_tokens) == (5, 20)
