"""Checks of a request to the served models (tasks/actor_model.py, tasks/scorer_model.py), before any work.

A request is refused with a `RequestError` whose message is one line naming the field and the rule; the pyfunc
models turn it into MLflow's INVALID_PARAMETER_VALUE, which the scoring server answers with HTTP 400 and no
stack trace. The texts are bounded in characters before they are tokenised (a 1 MB prompt costs nothing) and in
tokens after, and they may not hold the tokenizer's control strings (rlhf.tokenizer.control_regex).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rlhf.generate import SamplingConfig
from rlhf.tokenizer import ChatTokenizer, find_control

MAX_ROWS = 256
"""rows per request: more is a batch job, not a request"""
DEFAULTS: dict[str, Any] = {"max_new_tokens": 64, "temperature": 0.7, "top_p": 1.0, "seed": 0}
"""the served actor's sampling params when a request gives none: the pipeline's generation length and evaluation
temperature (params.yaml `evaluate`; tests/test_params.py holds them equal), cut to the model's context"""


class RequestError(ValueError):
    """A request the served model refuses; the message is the one-line reason sent back."""


def texts(values: Sequence[Any], column: str, tok: ChatTokenizer, block_size: int) -> list[str]:
    """The column's values, each a string that could fit the context and holds no control string."""
    if len(values) > MAX_ROWS:
        raise RequestError(f"{len(values)} rows in one request; send at most {MAX_ROWS}")
    max_chars = block_size * tok.max_token_chars  # more characters than this cannot fit the context
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise RequestError(f"row {i}, column '{column}': expected a string, got {type(value).__name__}")
        if len(value) > max_chars:
            raise RequestError(
                f"row {i}, column '{column}': {len(value)} characters cannot fit the model's context of "
                f"{block_size} tokens; send a shorter text"
            )
        found = find_control(value, tok.control_strings)
        if found is not None:
            raise RequestError(f"row {i}, column '{column}': contains the chat control string {found!r}; remove it")
        out.append(value)
    return out


def _number(params: Mapping[str, Any], key: str, kind: type) -> Any:
    value = params[key]
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or not math.isfinite(value):
        raise RequestError(f"param '{key}': expected a finite {kind.__name__}, got {value!r}")
    return kind(value)


def sampling(params: Mapping[str, Any], block_size: int) -> tuple[SamplingConfig, int]:
    """(SamplingConfig, seed) from a request's params (defaults filled in), each checked against its range."""
    max_new = _number(params, "max_new_tokens", int)
    if not 1 <= max_new <= block_size:
        raise RequestError(f"param 'max_new_tokens': must be in [1, {block_size}] (the context), got {max_new}")
    temperature, top_p = _number(params, "temperature", float), _number(params, "top_p", float)
    if temperature < 0:
        raise RequestError(f"param 'temperature': must be >= 0 (0: greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise RequestError(f"param 'top_p': must be in (0, 1], got {top_p}")
    seed = _number(params, "seed", int)
    if seed < 0:
        raise RequestError(f"param 'seed': must be >= 0, got {seed}")
    return SamplingConfig(max_new_tokens=max_new, temperature=temperature, top_p=top_p), seed
