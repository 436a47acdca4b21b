"""The validation report's HTML page (tasks.validation_page) in Debian's chromium with every request but the page
itself refused: the styled table lists each expectation with its arguments, observed value and offending rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.tokenizer import ChatTokenizer
from tasks.labeling.screenshots import launch
from tasks.validate import main, validate
from tasks.validation_page import render
from tests.test_validate import BLOCK, EVAL, MAX_PROMPT, MIN_ROWS, demos, set_cell, text_of, tok, write_inputs

__all__ = ["tok"]  # the module-scoped tokenizer fixture of test_validate


def test_page_is_complete_and_styled_offline(tok: ChatTokenizer, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    # line 2 overflows the block; its markup is shown among the offending rows, never run
    df = set_cell("response", lambda tok: "<script>window.pwned = 1</script> " + text_of(BLOCK)(tok))(demos(), tok)
    report = validate("demos", df, tok, BLOCK, EVAL, tmp_path, MIN_ROWS, max_prompt_tokens=MAX_PROMPT)
    assert [o.name for o in report.failed] == ["fits_block:response"]
    page_file = Path(report.page)
    outside: list[str] = []

    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1200, "height": 800})

        def only_the_file(route) -> None:  # offline: whatever is not the page itself fails
            if route.request.url == page_file.as_uri():
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", only_the_file)
        page.goto(page_file.as_uri())
        rows = page.locator("#expectations tbody tr[class]")
        cells = rows.evaluate_all("rs => rs.map(r => [...r.children].map(c => c.innerText.trim()))")
        background = "c => getComputedStyle(c).backgroundColor"
        failed_bg = page.locator("#expectations tr.failed td").first.evaluate(background)
        passed_bg = page.locator("#expectations tr.passed td").first.evaluate(background)
        header = page.locator("h1").inner_text()
        pwned = page.evaluate("window.pwned")
        browser.close()

    assert outside == []
    assert "FAILED" in header and "demonstrations" in header
    assert len(cells) == len(report.outcomes)
    by_name = {c[1].splitlines()[0]: c for c in cells}
    assert list(by_name) == [o.name for o in report.outcomes]  # every expectation, in suite order
    for o in report.outcomes:
        row = by_name[o.name]
        assert o.expectation in row[1]
        assert row[5] == ("passed" if o.success else "FAILED")
        shown = dict(line.split(" = ", 1) for line in row[2].splitlines())
        assert shown == {k: v if isinstance(v, str) else json.dumps(v) for k, v in o.expected.items()}
    assert by_name["min_rows"][3] == "4" and "min_value = 3" in by_name["min_rows"][2]
    assert by_name["type:prompt"][3] == "str"
    assert by_name["fits_block:response"][2].splitlines() == ["column = n_tokens_response", f"max_value = {BLOCK}.0"]
    offending = by_name["fits_block:response"][4]
    assert offending.startswith("1") and "line" in offending and "n_tokens_response" in offending
    assert "<script>window.pwned = 1</script>" in offending and pwned is None
    assert failed_bg == "rgb(253, 236, 234)" and passed_bg == "rgba(0, 0, 0, 0)"  # the inline CSS applied


def test_markup_in_values_is_escaped() -> None:
    sample = {"line": 2, "prompt": "<img src=x onerror=alert(1)>"}
    outcome = {"name": "x", "expectation": "e", "success": False, "unexpected_count": 1, "observed_value": "<b>",
               "expected": {"regex": "<i>"}, "samples": [sample]}  # fmt: skip
    html = render({"kind": "demos", "suite": "s", "success": False, "n_rows": 1, "outcomes": [outcome]})
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;b&gt;" in html and "&lt;i&gt;" in html


def test_unreadable_input_gets_a_page_saying_why(
    tok: ChatTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    args = write_inputs(work, tok, demos().to_dict("records"))
    monkeypatch.chdir(work)
    (work / "demos.jsonl").write_text("{not json\n")
    assert main(["demos", *args]) == 2
    saved = json.loads((work / "reports" / "demos.json").read_text())
    html = (work / "reports" / "demos.html").read_text()
    assert not saved["success"] and "could not be read" in html and "FAILED" in html
