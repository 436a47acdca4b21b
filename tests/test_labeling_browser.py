"""The labeling page in a real browser: Playwright (Python) driving Debian's chromium (bin/test installs it).

A labeler enters a name, ranks three tasks by clicking and one with the keys, skips one; the database holds
exactly that, the export is in the ranked format and passes the preference gate, and a response holding
`<script>` / `<img onerror>` shows those characters without running them.

RLHF_SCREENSHOTS=DIR python -m pytest tests/test_labeling_browser.py  also saves screenshots of the test's pages
(tasks/labeling/screenshots.py takes them of any running app).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rlhf.data import import_preferences
from tasks.labeling import db, export
from tasks.labeling.screenshots import labeling_page, launch
from tests.labeling_support import XSS, running_app

TASKS = [
    ("What is the capital of Peru?", [
        "Sure! The capital of Peru is Lima.",
        "Lima.",
        "The capital of Peru is Quito, which is a lovely city with many museums and parks to visit.",
        "What is the capital of Peru? What is the capital of Peru?",
    ]),
    ("Show me an HTML tag.", [XSS, "A paragraph is written <p>like this</p>.", "Tags are markup.", "No."]),
    ("What is 7 plus 5?", ["7 plus 5 is 12.", "12", "It is 13.", "Sure! 7 plus 5 equals 12. Happy to help!"]),
    ("Name a colour of the sky.", ["Blue.", "The sky is often blue.", "Green, always.", "sky sky sky sky"]),
    ("How many legs does a spider have?", ["Eight.", "Spiders have eight legs.", "Six.", "Legs."]),
    ("What is the opposite of hot?", ["Cold.", "The opposite of hot is cold.", "Warm.", "Hot."]),
]  # fmt: skip


def tokenizer_file(tmp_path: Path) -> Path:
    from rlhf.tokenizer import train_tokenizer

    texts = [p for p, _ in TASKS] + [r for _, rs in TASKS for r in rs]
    out = tmp_path / "tokenizer.json"
    train_tokenizer(texts * 20, 400).save(str(out))
    return out


def shown_indices(page) -> list[int]:
    return [int(x) for x in page.locator("#responses .response").evaluate_all("bs => bs.map(b => b.dataset.index)")]


def current_prompt(page) -> str:
    return page.locator("#prompt").inner_text()


def test_a_labeler_ranks_skips_and_the_export_passes_the_gate(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    conn = db.connect(tmp_path / "l.db")
    db.add_tasks(conn, [db.NewTask(p, f"p{i}", rs, "rlhf-actor/v1") for i, (p, rs) in enumerate(TASKS)])
    expected: dict[str, list[int]] = {}
    shots = os.environ.get("RLHF_SCREENSHOTS")
    with running_app(tmp_path / "l.db", lambda: None) as url, sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1100, "height": 820})
        page.goto(url)
        expect(page.locator("#name")).to_be_focused()
        page.fill("#name", "Ada")
        page.keyboard.press("Enter")
        expect(page.locator("#progress")).to_have_text("Done: 0 · Left: 6")

        # Three tasks ranked by clicking: the 3rd, 1st, 4th shown (the 2nd is then last by itself).
        for n in range(3):
            prompt, order = current_prompt(page), shown_indices(page)
            buttons = page.locator("#responses .response")
            if prompt == TASKS[1][0]:  # the task whose response holds markup: shown as characters, never run
                expect(page.locator("#responses")).to_contain_text("<script>window.pwned = 1</script>")
                expect(page.locator("#responses")).to_contain_text('<img src=x onerror="window.pwned = 2">')
                assert page.locator("#responses img, #responses script").count() == 0
                assert page.evaluate("window.pwned") is None
            if shots and n == 0:
                Path(shots).mkdir(parents=True, exist_ok=True)
                labeling_page(page, Path(shots) / "labeling-page.png")  # clicks two, then undoes them
            for pos in (2, 0, 3):
                buttons.nth(pos).click()
            expect(buttons.nth(1)).to_have_attribute("aria-pressed", "true")
            expected[prompt] = [order[2], order[0], order[3], order[1]]
            page.click("#submit")
            expect(page.locator("#progress")).to_have_text(f"Done: {n + 1} · Left: {5 - n}")

        # One task ranked with the keys: 4, 2, 1 (3 is last), Backspace undoes, Enter submits.
        prompt, order = current_prompt(page), shown_indices(page)
        page.locator("#responses .response").first.focus()
        for key in ("4", "3", "Backspace", "2", "1"):
            page.keyboard.press(key)
        expected[prompt] = [order[3], order[1], order[0], order[2]]
        page.keyboard.press("Enter")
        expect(page.locator("#progress")).to_have_text("Done: 4 · Left: 2")

        skipped = current_prompt(page)
        page.click("#skip")
        expect(page.locator("#progress")).to_have_text("Done: 5 · Left: 1")
        if shots:
            page.goto(f"{url}/stats")
            page.screenshot(path=f"{shots}/labeling-stats.png", full_page=True)
        browser.close()

    rows = db.judgements(conn)
    assert {r["prompt"]: r["ranking"] for r in rows if r["kind"] == "rank"} == expected
    assert [(r["prompt"], r["labeler"]) for r in rows if r["kind"] == "skip"] == [(skipped, "Ada")]
    assert len(rows) == 5 and all(r["labeler"] == "Ada" for r in rows)

    out = export.export(conn, tmp_path, now=0)
    lines = [json.loads(x) for x in Path(out["file"]).read_text().splitlines()]
    assert {x["prompt"]: x["ranking"] for x in lines} == expected
    assert {x["prompt"]: x["responses"] for x in lines} == {p: rs for p, rs in TASKS if p in expected}
    assert all(x["labeler"] == "Ada" and x["model_version"] == "rlhf-actor/v1" for x in lines)

    # The preference gate on the file, as the retraining flow's gate reads it (import, then the GX suite).
    from rlhf.tokenizer import ChatTokenizer
    from tasks.validate import validate

    pairs = import_preferences(out["file"])
    report = validate(
        "preferences", pairs, ChatTokenizer.load(tokenizer_file(tmp_path)), 128, {"What is the capital of France?"},
        tmp_path / "reports", min_rows=1, source=out["file"],
    )  # fmt: skip
    assert report.success, report.summary()
    assert report.n_rows == 4 * 6


@pytest.mark.parametrize("viewport", [{"width": 800, "height": 600}])
def test_the_page_works_from_the_keyboard_alone(tmp_path: Path, viewport: dict) -> None:
    """Focus order: name field, then the responses in order, then the actions; every button has a name."""
    from playwright.sync_api import expect, sync_playwright

    conn = db.connect(tmp_path / "l.db")
    db.add_tasks(conn, [db.NewTask(TASKS[0][0], "p0", TASKS[0][1], "m")])
    with running_app(tmp_path / "l.db") as url, sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport=viewport)
        page.goto(url)
        page.keyboard.type("Grace")
        page.keyboard.press("Enter")
        first = page.locator("#responses .response").first
        expect(first).to_be_focused()
        expect(first).to_have_attribute("aria-label", "Response 1, not ranked")
        for _ in range(3):
            page.keyboard.press("Tab")
        expect(page.locator("#responses .response").nth(3)).to_be_focused()
        page.keyboard.press("Tab")  # submit is disabled until all are ranked: focus goes on to undo
        expect(page.locator("#undo")).to_be_focused()
        for key in ("1", "2", "3"):
            page.keyboard.press(key)
        expect(page.locator("#submit")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#done-section")).to_be_visible()
        browser.close()
    assert [r["labeler"] for r in db.judgements(conn, "rank")] == ["Grace"]
