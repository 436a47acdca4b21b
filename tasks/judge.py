"""The judges of a stage, from params.yaml, loaded and checked once (one function each, for every stage).

`judge.gold` scores pairs (win-rates); `judge.content` gives each pair a content verdict (rlhf/content.py: right
answer? on topic?). Apart from tasks/stage.py so that a stage which judges nothing does not depend on
rlhf/judges.py (dvc.yaml deps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlhf.content import check_verdicts, content_summary
from rlhf.judges import Judge, import_callable, load_judge
from tasks.common import ParamError, Params, params_path

ContentFn = Callable[[list[str], list[str]], dict[str, Any]]


def _load(p: Params, key: str, loader: Callable[[str], Callable]) -> tuple[str, Callable] | None:
    spec = p.value(key)
    if not isinstance(spec, str):
        raise ParamError(f"{params_path()}:{key}: expected 'module:function' or 'none', got {spec!r}")
    try:
        return None if spec == "none" else (spec, loader(spec))
    except ValueError as e:
        raise ParamError(f"{params_path()}:{key}: {e}") from e


def gold_judge(p: Params) -> Judge | None:
    """The evaluating judge of `judge.gold` ("none": no gold metrics), loaded once per stage; every answer it gives
    is checked (rlhf.judges.load_judge). Loaded while configuring, so a bad import path fails before any model."""
    loaded = _load(p, "judge.gold", load_judge)
    return loaded[1] if loaded else None


def content_judge(p: Params) -> ContentFn | None:
    """`judge.content` ("none": no content metrics) as a function (prompts, responses) -> the checked verdicts
    summarised (rlhf.content.content_summary): shares of correct and on-topic answers, overall and per group."""
    loaded = _load(p, "judge.content", import_callable)
    if loaded is None:
        return None
    spec, fn = loaded

    def summarise(prompts: list[str], responses: list[str]) -> dict[str, Any]:
        return content_summary(check_verdicts(spec, fn(prompts, responses), len(prompts)))

    return summarise
