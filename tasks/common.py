"""Shared plumbing of the stage entry points: params.yaml sections as typed configs, metrics files, paths."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from rlhf.data import DataError
from rlhf.io import write_json

if TYPE_CHECKING:
    from rlhf.lora import LoRAConfig

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
_ABSENT = object()


def params_path() -> Path:
    """params.yaml of the working root, or the file named by RLHF_PARAMS (tests point it at tiny params)."""
    return Path(os.environ.get("RLHF_PARAMS", workdir() / "params.yaml"))


def load_params(path: Path | None = None) -> dict[str, Any]:
    path = path or params_path()
    with open(path, encoding="utf-8") as f:
        try:
            params = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ParamError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(params, dict):
        raise ParamError(f"{path}: expected a mapping of stage sections at the top level")
    return params


class ParamError(ValueError):
    """A params.yaml value breaks a rule (unknown key, wrong type, out of range); the message names the key."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric param may take: lo/hi bounds, each inclusive unless open."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        above = self.lo is None or (x > self.lo if self.lo_open else x >= self.lo)
        below = self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)
        return above and below

    def __str__(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return "finite"


POSITIVE, NON_NEGATIVE, AT_LEAST_1, FINITE = Range(0, lo_open=True), Range(0), Range(1), Range()
SHARE, FRACTION = Range(0, 1), Range(0, 1, hi_open=True)
RANGES: dict[str, Range] = {
    # The one table of numeric params, by field name (a name means the same thing in every section); every int or
    # float field of a params dataclass must appear here (tests/test_params.py checks), so none goes unchecked.
    # Cross-field rules (n_embd % n_head, batch_size % mini_batches) stay in the dataclasses' __post_init__.
    **dict.fromkeys(["lr", "critic_lr", "kl_target", "cliprange", "cliprange_value", "corpus_chars"], POSITIVE),
    **dict.fromkeys(
        ["steps", "batch_size", "mini_batches", "ppo_epochs", "iterations", "epochs", "max_new_tokens", "n_samples"],
        AT_LEAST_1,
    ),
    **dict.fromkeys(
        ["vocab_size", "block_size", "n_layer", "n_head", "n_embd", "kl_horizon", "patience", "eval_every"],
        AT_LEAST_1,
    ),
    **dict.fromkeys(["n_boot", "nproc_per_node", "min_demos", "min_pairs", "max_prompt_tokens"], AT_LEAST_1),
    "k": Range(2),  # a ranking of one response gives no pair
    **dict.fromkeys(["borrowed", "borrowed_near"], Range(0)),
    **dict.fromkeys(["warmup_steps", "checkpoint_every", "snapshot_every", "probe_prompts"], NON_NEGATIVE),
    **dict.fromkeys(["n_prompts", "curve_prompts", "eval_prompts", "seed", "labeler_seed"], NON_NEGATIVE),
    **dict.fromkeys(["n_demos", "n_pref_prompts", "n_ppo_prompts", "n_eval_prompts"], NON_NEGATIVE),
    "entities_per_family": NON_NEGATIVE,
    **dict.fromkeys(["weight_decay", "grad_clip", "kl_coef", "vf_coef", "ent_coef"], NON_NEGATIVE),
    "missing_eos_penalty": NON_NEGATIVE,
    # 0 is greedy decoding where a temperature only samples; PPO, which divides its logits, refuses 0 itself
    **dict.fromkeys(["temperature", "eval_temperature", "sample_temperature", "labeler_temperature"], NON_NEGATIVE),
    **dict.fromkeys(["careful", "terse", "chatty", "sloppy"], NON_NEGATIVE),
    **dict.fromkeys(["gamma", "lam", "min_lr_ratio"], SHARE),
    **dict.fromkeys(["heldout_frac", "val_frac", "dropout"], FRACTION),
    "labeler_length_bias": FINITE,
    "beta": POSITIVE,
    "r": NON_NEGATIVE,  # model.lora: 0 = off
    "alpha": POSITIVE,
    "label_smoothing": Range(0, 0.5, hi_open=True),
}


def build_dataclass(cls: type[T], raw: dict[str, Any], where: str) -> T:
    """The params dataclass `cls` from a mapping, every value checked first: known key, the field's type, the
    field's range (RANGES), then the dataclass's own cross-field rules. Any break is a ParamError naming the key:
    this runs before a stage loads a model, so a bad value costs no time."""
    if not isinstance(raw, dict):
        raise ParamError(f"{where}: expected a mapping of keys, got {type(raw).__name__} {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    required = [n for n, f in fields.items() if f.default is MISSING and f.default_factory is MISSING]
    missing = sorted(set(required) - set(raw))
    if missing:
        raise ParamError(f"{where}: missing key(s) {missing} (params.yaml holds their values; no default stands in)")
    hints = typing.get_type_hints(cls)
    kwargs = {key: _checked(value, hints[key], f"{where}.{key}") for key, value in raw.items()}
    for key, value in kwargs.items():
        rule = RANGES.get(key)
        if rule is not None and isinstance(value, int | float) and not rule.holds(value):
            raise ParamError(f"{where}.{key}: must be {rule}, got {value!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise ParamError(f"{where}: {e}") from e


def _checked(value: Any, hint: Any, where: str) -> Any:
    """`value` as the field type `hint` wants it (an int where a float is asked becomes a float), or a ParamError."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))  # our optional fields have one other type
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return build_dataclass(hint, value, where)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint, True)  # other annotations: left to the dataclass
    if not ok:
        got = "null" if value is None else f"{type(value).__name__} {value!r}"
        hint_s = getattr(hint, "__name__", str(hint))
        yaml_hint = ""
        if hint in (int, float) and isinstance(value, str):
            yaml_hint = " (YAML reads 1e-3 as a string: write 1.0e-3)" if "e" in value.lower() else ""
        raise ParamError(f"{where}: expected {hint_s}, got {got}{yaml_hint}")
    return float(value) if hint is float else value


def workdir() -> Path:
    """Where stages read and write: the repo root, or RLHF_ROOT (tests run whole pipelines in a temp dir)."""
    return Path(os.environ.get("RLHF_ROOT", ROOT))


def path(rel: str | Path) -> Path:
    """A path of the project, relative to the working root unless absolute."""
    p = Path(rel)
    return p if p.is_absolute() else workdir() / p


def write_metrics(stage: str, metrics: dict[str, Any]) -> Path:
    """metrics/<stage>.json (DVC metrics), written atomically; None and NaN values (a metric that does not apply,
    such as the labeler's ceiling on a user's pairs) are left out, since JSON has no NaN."""
    out = path("metrics") / f"{stage}.json"
    keep = {k: v for k, v in metrics.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
    write_json(out, keep)
    return out


def resume_inputs(params: dict[str, Any], files: list[str]) -> dict[str, Any]:
    """What a training stage starts from, for its resume check (rlhf.checkpoint.fingerprint): the params
    sections it reads and the sha256 of each model or data file it trains from."""
    from rlhf.checkpoint import file_hash

    return {"params": params, "sha256": {f: file_hash(path(f)) for f in files}}


def with_lora(params: dict[str, Any], lora: LoRAConfig) -> dict[str, Any]:
    """A training stage's resume params plus `model.lora` when adapters are on (with LoRA off the fingerprint is
    the one it always was, so a state written before the key existed still resumes)."""
    return {**params, "model.lora": dataclasses.asdict(lora)} if lora.enabled else params


def cli(description: str, add_args: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The common command line of a stage: `python -m tasks.<stage> [--params FILE]`, and its own options."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=None, help="params file (default: params.yaml)")
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args()
    if args.params is not None:
        os.environ["RLHF_PARAMS"] = str(args.params.resolve())
    return args


USER_ERRORS = (DataError, ParamError, FileNotFoundError)
"""what a user fixes in their files or params: reported as one message, not a traceback"""


def stage_main(main: Callable[[], Any]) -> Callable[[], Any]:
    """Wrap a stage's `main`: a user's error (bad data, bad params, a missing file) prints its message alone on
    stderr and exits 2; anything else is a bug and keeps its traceback. RLHF_TRACEBACK=1 shows it for all."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as e:
            if os.environ.get("RLHF_TRACEBACK") == "1":
                raise
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapped


@dataclasses.dataclass(frozen=True)
class RuntimeParams:
    """The `runtime` section: where the stages that run a model run (tasks/stage.py opens it)."""

    device: str = "auto"
    """auto (CUDA when a GPU is visible) | cpu | cuda"""
    precision: str = "auto"
    """auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16"""
    nproc_per_node: int = 1
    """training processes on this node (one per GPU); above 1 a training stage relaunches itself under torchrun"""
    gradient_checkpointing: bool = False
    """training stages recompute block activations in backward instead of keeping them (rlhf.lora)"""


class Params:
    """params.yaml as a stage reads it: each section or dotted key it asks for is checked and remembered."""

    def __init__(self, raw: dict[str, Any]):
        self.raw = raw
        self.read: list[str] = []

    def section(self, name: str, cls: type[T]) -> T:
        """The section `name` as the dataclass `cls` (unknown or missing keys and bad values are ParamErrors)."""
        self._note(name)
        raw = self.raw.get(name)
        if raw is None:
            raise ParamError(f"{params_path()}: no section '{name}'")
        return build_dataclass(cls, raw, where=f"{params_path()}:{name}")

    def value(self, dotted: str) -> Any:
        """The value at `section.key` (a ParamError naming it when absent)."""
        self._note(dotted)
        node: Any = self.raw
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ParamError(f"{params_path()}: no key '{dotted}'")
            node = node[part]
        return node

    def runtime(self) -> RuntimeParams:
        """The `runtime` section: device, precision, processes per node (its defaults, which are params.yaml's,
        for a params file written before the section existed)."""
        self._note("runtime")
        return build_dataclass(RuntimeParams, self.raw.get("runtime") or {}, f"{params_path()}:runtime")

    def lora(self) -> LoRAConfig:
        """`model.lora` as rlhf.lora.LoRAConfig (off, r = 0, for a params file written before the key existed)."""
        from rlhf.lora import LoRAConfig

        self._note("model.lora")
        raw = (self.raw.get("model") or {}).get("lora")
        return LoRAConfig() if raw is None else build_dataclass(LoRAConfig, raw, f"{params_path()}:model.lora")

    def logged(self) -> dict[str, Any]:
        """What the stage read, as its MLflow params: {"sft": {...}, "judge.gold": "..."}."""
        out: dict[str, Any] = {}
        for key in self.read:
            node: Any = self.raw
            for part in key.split("."):
                node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
            if node is not _ABSENT:  # an absent optional section (runtime) is logged by nothing
                out[key] = node
        return out

    def _note(self, key: str) -> None:
        if key not in self.read:
            self.read.append(key)


def entry(
    description: str,
    run: Callable[..., Any],
    *,
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
    before: Callable[[dict[str, Any]], None] | None = None,
) -> Callable[[], None]:
    """A stage's `main`: `python -m tasks.<stage> [--params FILE]` and the options `add_args` declares, passed to
    `run(params, **options)`; a user's error is one line on stderr, exit 2 (stage_main). The metrics are printed
    by rank 0 (torchrun's RANK: the process group is gone by then)."""

    @stage_main
    def main() -> None:
        extra = {k: v for k, v in vars(cli(description, add_args)).items() if k != "params"}
        params = load_params()
        if before is not None:
            before(params)
        metrics = run(params, **extra)
        if os.environ.get("RANK", "0") == "0":
            print(metrics, flush=True)

    return main


def model_free_entry(stage: str, description: str, configure: Callable[[Params], T], run: Callable[[T], Any]):
    """The `main` of a stage that runs no model (world, prepare, tokenizer): its params read once by `configure`,
    then `run(config)` inside the stage's MLflow run, which logs what `configure` read."""

    def configured(params: dict[str, Any]) -> Any:
        from tasks import tracking  # tracking imports this module

        p = Params(params)
        cfg = configure(p)
        with tracking.stage_run(stage, p.logged()):
            return run(cfg)

    return entry(description, configured)
