"""The validation report as one self-contained HTML page: `reports/validation/<kind>.html`.

    python -m tasks.validation_page reports/validation/demos.json [--out FILE]

GX's Data Docs load bootstrap, jQuery and their table plugin from CDNs, so offline they render unstyled with
empty tables. This page is rendered from our report JSON (`tasks.validate.ValidationReport.to_dict`, or the
`{"success": false, "error": …}` of a file that could not be read) with inline CSS, no script and no
external link: a browser without network shows every expectation, its arguments, observed value and
offending rows.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

from rlhf.io import write_text

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1d2327; }
h1 { font-size: 20px; margin: 0 0 6px; }
.status { display: inline-block; padding: 2px 10px; border-radius: 10px; font-weight: 600; color: #fff; }
.pass { background: #2e7d32; } .fail { background: #c62828; }
.meta { color: #555; margin: 6px 0 16px; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #d0d7de; padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f7; }
tr.failed > td { background: #fdecea; }
td.result { font-weight: 600; white-space: nowrap; } tr.failed td.result { color: #c62828; }
tr:not(.failed) td.result { color: #2e7d32; }
code { font: 12px ui-monospace, monospace; word-break: break-all; }
table.samples { margin-top: 4px; width: auto; } table.samples td, table.samples th { font-size: 12px; }
"""


def _code(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return f"<code>{escape(text)}</code>"


def _args(expected: Mapping[str, Any]) -> str:
    return "<br>".join(f"{escape(k)} = {_code(v)}" for k, v in expected.items())


def _samples(samples: list[Mapping[str, Any]]) -> str:
    if not samples:
        return ""
    cols = list(dict.fromkeys(k for s in samples for k in s))
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    rows = "".join("<tr>" + "".join(f"<td>{_code(s.get(c))}</td>" for c in cols) + "</tr>" for s in samples)
    return f'<table class="samples"><tr>{head}</tr>{rows}</table>'


def _row(i: int, o: Mapping[str, Any]) -> str:
    ok = bool(o["success"])
    observed = _code(o.get("error")) if o.get("error") else _code(o.get("observed_value"))
    count = "" if o.get("unexpected_count") is None else str(o["unexpected_count"])
    cells = [
        str(i),
        f"<b>{escape(o['name'])}</b><br><code>{escape(o['expectation'])}</code>",
        _args(o.get("expected") or {}),
        observed,
        count + _samples(o.get("samples") or []),
        "passed" if ok else "FAILED",
    ]
    tds = "".join(f"<td>{c}</td>" for c in cells[:-1]) + f'<td class="result">{cells[-1]}</td>'
    return f'<tr class="{"passed" if ok else "failed"}">{tds}</tr>'


def render(report: Mapping[str, Any]) -> str:
    """The HTML page of a validation report dict (see the module doc)."""
    ok = bool(report.get("success"))
    kind, suite = report.get("kind", "?"), report.get("suite", "?")
    outcomes = report.get("outcomes") or []
    n_failed = sum(not o["success"] for o in outcomes)
    status = f'<span class="status {"pass" if ok else "fail"}">{"PASSED" if ok else "FAILED"}</span>'
    parts = [f"<h1>Validation of {escape(str(kind))}: suite {escape(str(suite))} {status}</h1>"]
    if report.get("error"):
        parts.append(f'<p class="meta">The input could not be read: {_code(report["error"])}</p>')
    else:
        source = report.get("source") or "in memory"
        parts.append(
            f'<p class="meta">{escape(str(source))} · {report.get("n_rows", "?")} rows · '
            f"{len(outcomes) - n_failed} of {len(outcomes)} expectations passed</p>"
        )
    if report.get("skipped"):
        parts.append(f'<p class="meta">Not evaluated (a column they need is absent): {_code(report["skipped"])}</p>')
    if outcomes:
        head = "".join(
            f"<th>{h}</th>" for h in ("#", "check / expectation", "arguments", "observed", "offending rows", "result")
        )
        rows = "".join(_row(i, o) for i, o in enumerate(outcomes, 1))
        parts.append(f'<table id="expectations"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')
    title = f"validation {escape(str(kind))}: {'passed' if ok else 'FAILED'}"
    head = f"<head><meta charset=utf-8><title>{title}</title><style>{STYLE}</style></head>"
    body = "\n".join(parts)
    return f"<!doctype html>\n<html>{head}\n<body>\n{body}\n</body></html>\n"


def write_page(report: Mapping[str, Any], out: str | Path) -> Path:
    """Render `report` to `out` (atomically)."""
    write_text(out, render(report))
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="a validation report JSON (reports/validation/<kind>.json)")
    parser.add_argument("--out", type=Path, default=None, help="default: the report with .html")
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text(encoding="utf-8"))
    print(write_page(report, args.out or args.report.with_suffix(".html")))


if __name__ == "__main__":
    main()
