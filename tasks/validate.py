"""Stage gate `validate`: the Great Expectations suites data must pass before SFT and before the reward model.

    python -m tasks.validate {demos|preferences} --input FILE --tokenizer FILE --eval-prompts FILE
        [--block-size N] [--min-rows N] [--max-prompt-tokens N] [--report-dir DIR] [--params FILE]

Two suites run on an in-memory pandas batch of an ephemeral GX context: `demonstrations` (prompt, response)
and `preference_pairs` (prompt, chosen, rejected + provenance). Derived columns come first, so that every rule
is a stock GX expectation whose failure GX itself reports: `n_tokens_prompt`, `n_tokens_<response>` (the
full chat sequence, prompt + response + EOS, which must fit the model's block_size) and `prompt_in_eval`
(the normalised prompt is an evaluation prompt: training on it would inflate the win rate).

Writes only `<report-dir>/<kind>.json` and the same report as a self-contained HTML page `<report-dir>/<kind>.html`
(tasks.validation_page: readable offline, unlike GX's Data Docs, which load their styles and tables from CDNs).
Exit status: 0 passed, 1 an expectation failed (summary on stderr), 2 an input could not be read.
Defaults not given on the command line come from params.yaml: `validate.min_demos`, `validate.min_pairs`,
`validate.max_prompt_tokens`, `validate.report_dir` and `model.block_size`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.core import ExpectationSuiteValidationResult
from great_expectations.data_context.types.base import ProgressBarsConfig

from rlhf.data import DataError, import_preferences, read_prompts, read_table
from rlhf.io import write_json
from rlhf.tokenizer import SPECIAL_TOKENS, ChatTokenizer, control_regex
from tasks.common import ParamError, build_dataclass, load_params, params_path, path, stage_main
from tasks.validation_page import write_page

SUITES = {"demos": "demonstrations", "preferences": "preference_pairs"}
TEXT = {"demos": ("prompt", "response"), "preferences": ("prompt", "chosen", "rejected")}
RESPONSES = {"demos": ("response",), "preferences": ("chosen", "rejected")}
# Provenance columns are optional (a user's file may lack them) but, when present, downstream code relies on
# their types: prompt_id joins prompts, ranks are compared, seeds seed generators.
TYPES = {
    "demos": {"id": "str", "family": "str"},
    "preferences": {
        "prompt_id": "str",
        "chosen_rank": "int",
        "rejected_rank": "int",
        "labeler_seed": "int",
        "labeler_temperature": "float",
        "labeler_length_bias": "float",
        "sft_hash": "str",
        "source": "str",
    },
}
MIN_RESPONSE_ROOM = 8  # default prompt bound: leave at least this many tokens of block_size for the answer
N_SAMPLES = 5  # offending rows shown per failed expectation
COMPLETE = {"result_format": "COMPLETE"}  # gives unexpected_index_list: which rows broke the rule


@dataclass(frozen=True)
class Check:
    """One named expectation; skipped (and listed as such) when a column it needs is absent."""

    name: str
    needs: tuple[str, ...]
    expectation: gxe.Expectation
    show: tuple[str, ...] = ()  # extra columns worth printing beside an offending row


@dataclass(frozen=True)
class Outcome:
    name: str
    """our stable name of the check, e.g. `fits_block:response`"""
    expectation: str
    """the GX expectation type, e.g. `expect_column_values_to_be_between`"""
    success: bool
    unexpected_count: int | None
    observed_value: Any
    expected: dict[str, Any]
    """the expectation's arguments (bounds, value sets, columns)"""
    samples: list[dict[str, Any]]
    """up to N_SAMPLES offending rows, located by `line` (JSONL/CSV, 1-based) or `row` (Parquet/in-memory)"""
    error: str | None = None
    """the exception GX caught while evaluating, if any"""


@dataclass(frozen=True)
class ValidationReport:
    kind: str
    suite: str
    source: str | None
    n_rows: int
    success: bool
    outcomes: list[Outcome]
    skipped: list[str] = field(default_factory=list)
    """checks not evaluated because a column they need is absent (a required one fails `column_exists:*`)"""
    page: str | None = None
    """the HTML page of this report"""

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        head = f"validate {self.kind} ({self.suite}, {self.n_rows} rows, {self.source or 'in memory'})"
        if self.success:
            return f"{head}: passed {len(self.outcomes)} expectations"
        lines = [f"{head}: FAILED {len(self.failed)} of {len(self.outcomes)} expectations"]
        for o in self.failed:
            what = f"observed {o.observed_value}" if o.observed_value is not None else "not met"
            what = f"{o.unexpected_count} offending row(s)" if o.unexpected_count else what
            lines.append(f"  FAIL {o.name} [{o.expectation}]: {o.error or what}; expected {o.expected}")
            lines += [f"      {json.dumps(s, ensure_ascii=False, default=str)}" for s in o.samples]
        return "\n".join(lines)


class ValidationFailed(Exception):
    """The data broke at least one expectation; `.report` says which and where."""

    def __init__(self, report: ValidationReport):
        super().__init__(report.summary())
        self.report = report


def _check(name: str, needs: Sequence[str], cls: type[gxe.Expectation], show: Sequence[str] = (), **kw) -> Check:
    # The name travels in the expectation's meta, so each GX result maps back to its check whatever the order.
    return Check(name, tuple(needs), cls(meta={"check": name}, **kw), tuple(show))


def checks(
    kind: str, block_size: int, min_rows: int, max_prompt_tokens: int, controls: Sequence[str] = SPECIAL_TOKENS
) -> list[Check]:
    """The suite of `kind` as named checks (all of them; `validate` skips those whose columns are absent).
    `controls` are the tokenizer's control strings, refused in every text column (rlhf.tokenizer.control_regex)."""
    text, responses = TEXT[kind], RESPONSES[kind]
    between = gxe.ExpectColumnValuesToBeBetween
    out = [_check("min_rows", (), gxe.ExpectTableRowCountToBeBetween, min_value=min_rows)]
    for col in text:
        out += [
            _check(f"column_exists:{col}", (), gxe.ExpectColumnToExist, column=col),
            _check(f"not_null:{col}", [col], gxe.ExpectColumnValuesToNotBeNull, column=col),
            _check(f"type:{col}", [col], gxe.ExpectColumnValuesToBeOfType, column=col, type_="str"),
            _check(f"not_blank:{col}", [col], gxe.ExpectColumnValuesToNotMatchRegex, column=col, regex=r"^\s*$"),
            _check(f"no_control:{col}", [col], gxe.ExpectColumnValuesToNotMatchRegex, column=col,
                   regex=control_regex(controls)),
        ]  # fmt: skip
    n = "n_tokens_prompt"
    out.append(_check("prompt_tokens", [n], between, ["prompt"], column=n, max_value=max_prompt_tokens))
    for col in responses:
        n = f"n_tokens_{col}"
        out.append(_check(f"fits_block:{col}", [n], between, ["prompt", col], column=n, max_value=block_size))
    out += [
        _check("no_duplicate_rows", text, gxe.ExpectCompoundColumnsToBeUnique, column_list=list(text)),
        _check(
            "no_eval_prompt", ["prompt_in_eval"], gxe.ExpectColumnValuesToBeInSet, ["prompt"],
            column="prompt_in_eval", value_set=[False],
        ),
    ]  # fmt: skip
    if kind == "preferences":
        pair, ranks = ["chosen", "rejected"], ["chosen_rank", "rejected_rank"]
        out += [
            _check("chosen_differs_from_rejected", pair, gxe.ExpectSelectColumnValuesToBeUniqueWithinRecord,
                   column_list=pair),
            # rank 0 is the best response of its prompt, so the chosen one must have the smaller rank
            _check("chosen_rank_better", ranks, gxe.ExpectColumnPairValuesAToBeGreaterThanB,
                   column_A="rejected_rank", column_B="chosen_rank"),
            _check("labeler_temperature_positive", ["labeler_temperature"], between,
                   column="labeler_temperature", min_value=0, strict_min=True),
        ]  # fmt: skip
    for col, type_ in TYPES[kind].items():
        out.append(_check(f"type:{col}", [col], gxe.ExpectColumnValuesToBeOfType, column=col, type_=type_))
    return out


def _normalise(prompt: str) -> str:
    # Case and spacing do not make a prompt new: "What is 2+2?" and "what is  2+2? " leak the same eval item.
    return " ".join(prompt.split()).casefold()


def derived_columns(df: pd.DataFrame, kind: str, tokenizer: ChatTokenizer, eval_prompts: set[str]) -> pd.DataFrame:
    """A copy of df with positional index plus n_tokens_* and prompt_in_eval (where their inputs exist)."""
    out = df.reset_index(drop=True)  # GX reports positions; they map back to df.index (file lines)
    if "prompt" not in out.columns:
        return out
    prompts = out["prompt"].tolist()
    n_prompt = [len(tokenizer.encode_prompt(p)) if isinstance(p, str) else None for p in prompts]
    out["n_tokens_prompt"] = pd.array(n_prompt, dtype="Int64")  # nulls stay null: not_null reports them
    for col in RESPONSES[kind]:
        if col in out.columns:
            n = [
                n_p + len(tokenizer.encode_response(r)) if n_p is not None and isinstance(r, str) else None
                for n_p, r in zip(n_prompt, out[col].tolist(), strict=True)
            ]
            out[f"n_tokens_{col}"] = pd.array(n, dtype="Int64")
    held_out = {_normalise(p) for p in eval_prompts}
    out["prompt_in_eval"] = [isinstance(p, str) and _normalise(p) in held_out for p in prompts]
    return out


TRIPLE = ["prompt", "chosen", "rejected"]


def existing_checks() -> list[Check]:
    """The checks of new preference pairs against the pairs already accepted (`validate(..., existing=)`)."""
    in_set = gxe.ExpectColumnValuesToBeInSet
    return [
        _check("not_in_existing", ["in_existing"], in_set, TRIPLE, column="in_existing", value_set=[False]),
        _check("no_conflicting_pair", ["reverses_a_pair"], in_set, TRIPLE, column="reverses_a_pair", value_set=[False]),
    ]


def existing_columns(frame: pd.DataFrame, existing: pd.DataFrame) -> pd.DataFrame:
    """`in_existing` (the same prompt, chosen and rejected are already accepted) and `reverses_a_pair` (the
    accepted pairs or this file hold the opposite judgement: rejected preferred to chosen)."""
    if not set(TRIPLE) <= set(frame.columns):
        return frame
    new = list(zip(frame["prompt"], frame["chosen"], frame["rejected"], strict=True))
    old = set(zip(existing["prompt"], existing["chosen"], existing["rejected"], strict=True))
    judged = old | set(new)
    frame["in_existing"] = [t in old for t in new]
    frame["reverses_a_pair"] = [c != r and (p, r, c) in judged for p, c, r in new]  # c == r: its own rule
    return frame


def _context() -> Any:
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    # The ephemeral context's default Data Docs site would write HTML into a fresh directory under /tmp (and its
    # pages need CDNs); tasks.validation_page renders the report instead.
    ctx.delete_data_docs_site("local_site")
    return ctx


def _run_suite(
    suite_name: str, expectations: list[gxe.Expectation], frame: pd.DataFrame
) -> ExpectationSuiteValidationResult:
    """Run one suite on the frame through a Checkpoint -> the suite's result."""
    ctx = _context()
    batch = ctx.data_sources.add_pandas("memory").add_dataframe_asset(suite_name)
    batch_def = batch.add_batch_definition_whole_dataframe("all")
    suite = ctx.suites.add(gx.ExpectationSuite(name=suite_name, expectations=expectations))
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=suite_name, data=batch_def, suite=suite))
    cp = gx.Checkpoint(name=suite_name, validation_definitions=[vd], result_format=COMPLETE)
    result = ctx.checkpoints.add(cp).run(batch_parameters={"dataframe": frame})
    (suite_result,) = result.run_results.values()
    return suite_result


def _jsonable(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= 120 else value[:117] + "..."
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value


def _outcome(check: Check, res: dict[str, Any], frame: pd.DataFrame, index: pd.Index) -> Outcome:
    result, exc = res.get("result", {}), res.get("exception_info", {})
    positions = result.get("unexpected_index_list") or []
    key = index.name or "row"
    cols = [c for c in dict.fromkeys((*check.show, *check.needs)) if c in frame.columns]
    samples = [
        {key: _jsonable(index[pos]), **{c: _jsonable(frame.at[pos, c]) for c in cols}} for pos in positions[:N_SAMPLES]
    ]
    return Outcome(
        name=check.name,
        expectation=res["expectation_config"]["type"],
        success=bool(res["success"]),
        unexpected_count=result.get("unexpected_count"),
        observed_value=_jsonable(result.get("observed_value")),
        expected={k: v for k, v in res["expectation_config"]["kwargs"].items() if k != "batch_id"},
        samples=samples,
        error=exc.get("exception_message") if exc.get("raised_exception") else None,
    )


def validate(
    kind: str,
    df: pd.DataFrame,
    tokenizer: ChatTokenizer,
    block_size: int,
    eval_prompts: set[str],
    report_dir: Path,
    min_rows: int,
    *,
    max_prompt_tokens: int | None = None,
    source: str | None = None,
    existing: pd.DataFrame | None = None,
) -> ValidationReport:
    """Run the `kind` suite ("demos" or "preferences") on df; write report_dir/<kind>.json and <kind>.html.

    df's index locates rows in their file (rlhf.data readers index by line); offending rows are named by it.
    max_prompt_tokens defaults to block_size - MIN_RESPONSE_ROOM. With `existing` (the preference pairs
    already accepted) new pairs must also be no repeat of one of them and contradict none (`existing_checks`).
    """
    if kind not in SUITES:
        raise ValueError(f"unknown kind {kind!r}; use one of {sorted(SUITES)}")
    frame = derived_columns(df, kind, tokenizer, eval_prompts)
    max_prompt = block_size - MIN_RESPONSE_ROOM if max_prompt_tokens is None else max_prompt_tokens
    all_checks = checks(kind, block_size, min_rows, max_prompt, tokenizer.control_strings)
    if existing is not None:
        frame, all_checks = existing_columns(frame, existing), all_checks + existing_checks()
    active = [c for c in all_checks if all(col in frame.columns for col in c.needs)]
    by_name = {c.name: c for c in active}
    report_dir = Path(report_dir)
    result = _run_suite(SUITES[kind], [c.expectation for c in active], frame)
    outcomes = []
    for res in result.to_json_dict()["results"]:
        outcomes.append(_outcome(by_name[res["expectation_config"]["meta"]["check"]], res, frame, df.index))
    order = {name: i for i, name in enumerate(by_name)}
    outcomes.sort(key=lambda o: order[o.name])  # suite order, not GX's (which groups by metric)
    report = ValidationReport(
        kind=kind,
        suite=SUITES[kind],
        source=source,
        n_rows=len(df),
        success=bool(result.success),
        outcomes=outcomes,
        skipped=[c.name for c in all_checks if c.name not in by_name],
        page=str(report_dir / f"{kind}.html"),
    )
    write_report(report_dir, kind, report.to_dict())
    return report


def write_report(report_dir: Path, kind: str, report: dict[str, Any]) -> None:
    """`<kind>.json` and its HTML page `<kind>.html` (each atomically; the page never outlives its JSON)."""
    write_json(report_dir / f"{kind}.json", report)
    write_page(report, report_dir / f"{kind}.html")


def run(
    kind: str,
    input_file: str | Path,
    tokenizer: str | Path,
    eval_prompts: str | Path,
    *,
    block_size: int,
    min_rows: int = 1,
    max_prompt_tokens: int | None = None,
    report_dir: str | Path = "reports/validation",
    import_format: str | None = None,
    existing: Sequence[str | Path] = (),
) -> ValidationReport:
    """Read the files and validate; raise ValidationFailed (carrying the report) if any expectation failed.

    With `import_format` (preferences only) the input is a user's preference file imported exactly as the
    preferences stage will (`imported_pairs`), and checked together with the pairs already accepted, read
    from the `existing` files (pairs.parquet, feedback files): failures name lines of the user's file.
    """
    if import_format is None:
        df, accepted = read_table(input_file), None
    else:
        df, accepted = imported_pairs(input_file, import_format), accepted_pairs(existing)
    held_out = set(read_prompts(eval_prompts)["prompt"])
    report = validate(
        kind, df, ChatTokenizer.load(tokenizer), block_size, held_out, Path(report_dir), min_rows,
        max_prompt_tokens=max_prompt_tokens, source=str(input_file), existing=accepted,
    )  # fmt: skip
    if not report.success:
        raise ValidationFailed(report)
    return report


def imported_pairs(file: str | Path, fmt: str = "auto") -> pd.DataFrame:
    """A user's preference file as rlhf.data.import_preferences gives it to the preferences stage, indexed by
    the line (Parquet: row) of the file each pair came from, so the gate's report points into the user's file."""
    pairs = import_preferences(file, fmt)
    label = "row" if Path(file).suffix.lower() == ".parquet" else "line"
    return pairs.set_index("source_row").rename_axis(label)


def accepted_pairs(files: Sequence[str | Path]) -> pd.DataFrame:
    """The distinct (prompt, chosen, rejected) of preference files already accepted (any import format)."""
    frames = [import_preferences(f)[TRIPLE] for f in files if Path(f).exists()]
    return pd.concat(frames, ignore_index=True).drop_duplicates() if frames else pd.DataFrame(columns=TRIPLE)


@dataclass(frozen=True, kw_only=True)
class ValidateParams:
    min_demos: int
    """fewest demonstrations SFT may start from"""
    min_pairs: int
    """fewest preference pairs the reward model may start from"""
    max_prompt_tokens: int | None = None
    """longest prompt in tokens, chat markers included (None: block_size - 8)"""
    report_dir: str = "reports/validation"
    """where <kind>.json and <kind>.html go"""


def defaults(kind: str, params_file: Path | None, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The options of the command line: those `given` (not None), the others from params.yaml (`model.block_size`
    and the `validate` section). No built-in value stands in for one that neither gives."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    params_file = params_file or params_path()
    if not params_file.exists():
        raise FileNotFoundError(f"{params_file}: no such params file")
    params = load_params(params_file)
    raw = params.get("validate")
    cfg = build_dataclass(ValidateParams, raw, f"{params_file}:validate") if raw is not None else None
    opts: dict[str, Any] = {
        "max_prompt_tokens": cfg.max_prompt_tokens if cfg else None,
        "report_dir": path(cfg.report_dir if cfg else ValidateParams.report_dir),
    }
    if "block_size" not in given:
        block_size = (params.get("model") or {}).get("block_size")
        if not isinstance(block_size, int):
            raise ParamError(
                f"{params_file}: model.block_size must be an int (or pass --block-size), got {block_size!r}"
            )
        opts["block_size"] = block_size
    if "min_rows" not in given:
        key = "min_demos" if kind == "demos" else "min_pairs"
        if cfg is None:
            raise ParamError(f"{params_file}: no validate.{key} (or pass --min-rows)")
        opts["min_rows"] = getattr(cfg, key)
    return {**opts, **given}


@stage_main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=sorted(SUITES))
    for flag in ("--input", "--tokenizer", "--eval-prompts"):
        parser.add_argument(flag, type=Path, required=True)
    for flag in ("--block-size", "--min-rows", "--max-prompt-tokens"):
        parser.add_argument(flag, type=int, default=None)
    parser.add_argument("--report-dir", type=Path, default=None)
    parser.add_argument("--params", type=Path, default=None, help="params file (default: params.yaml)")
    parser.add_argument(
        "--import-format", choices=["auto", "trl", "hh", "ranked"], default=None,
        help="preferences: import --input as a user's preference file (as the preferences stage does)",
    )  # fmt: skip
    parser.add_argument("--existing", type=Path, nargs="*", default=[], help="preference files already accepted")
    args = parser.parse_args(argv)
    opts: dict[str, Any] = {"report_dir": Path(ValidateParams.report_dir)}
    try:
        cli_opts = ("block_size", "min_rows", "max_prompt_tokens", "report_dir")
        opts = defaults(args.kind, args.params, {k: getattr(args, k) for k in cli_opts})
        report = run(
            args.kind, args.input, args.tokenizer, args.eval_prompts,
            import_format=args.import_format, existing=args.existing, **opts,
        )  # fmt: skip
    except (DataError, FileNotFoundError) as e:
        print(f"validate {args.kind}: cannot read an input: {e}", file=sys.stderr)
        # The report says so too: a rejected file keeps the reason beside it.
        write_report(Path(opts["report_dir"]), args.kind, {"kind": args.kind, "success": False, "error": str(e)})
        return 2
    except ValidationFailed as e:
        print(e.report.summary(), file=sys.stderr)
        print(f"report: {Path(opts['report_dir']) / f'{args.kind}.json'}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
