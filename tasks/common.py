"""Shared plumbing of the stage entry points: params.yaml sections as typed configs, metrics files, paths."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rlhf.io import write_json

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def params_path() -> Path:
    """params.yaml of the working root, or the file named by RLHF_PARAMS (tests point it at tiny params)."""
    return Path(os.environ.get("RLHF_PARAMS", workdir() / "params.yaml"))


def load_params(path: Path | None = None) -> dict[str, Any]:
    path = path or params_path()
    with open(path, encoding="utf-8") as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of stage sections at the top level")
    return params


def section(params: dict[str, Any], name: str, cls: type[T]) -> T:
    """Build the dataclass `cls` from params[name]; unknown or missing keys are errors that name the file."""
    raw = params.get(name)
    if raw is None:
        raise KeyError(f"{params_path()}: no section '{name}'")
    return build_dataclass(cls, raw, where=f"{params_path()}:{name}")


def build_dataclass(cls: type[T], raw: dict[str, Any], where: str) -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise KeyError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = build_dataclass(hint, value, f"{where}.{key}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise KeyError(f"{where}: {e}") from e


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


def cli(description: str) -> argparse.Namespace:
    """The common command line of a stage: `python -m tasks.<stage> [--params FILE]`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", type=Path, default=None, help="params file (default: params.yaml)")
    args = parser.parse_args()
    if args.params is not None:
        os.environ["RLHF_PARAMS"] = str(args.params.resolve())
    return args
