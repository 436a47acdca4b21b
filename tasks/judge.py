"""The gold judge of a stage: `judge.gold` of params.yaml, loaded and checked once (one function for every stage).

Apart from tasks/stage.py so that a stage which judges nothing does not depend on rlhf/judges.py (dvc.yaml deps).
"""

from __future__ import annotations

from rlhf.judges import Judge, load_judge
from tasks.common import ParamError, Params, params_path


def gold_judge(p: Params) -> Judge | None:
    """The evaluating judge of `judge.gold` ("none": no gold metrics), loaded once per stage; every answer it gives
    is checked (rlhf.judges.load_judge). Loaded while configuring, so a bad import path fails before any model."""
    spec = p.value("judge.gold")
    if not isinstance(spec, str):
        raise ParamError(f"{params_path()}:judge.gold: expected 'module:function' or 'none', got {spec!r}")
    try:
        return None if spec == "none" else load_judge(spec)
    except ValueError as e:
        raise ParamError(f"{params_path()}:judge.gold: {e}") from e
