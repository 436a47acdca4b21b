"""Stage `merge_feedback`: the pairs the reward model and DPO learn from: the collected pairs and every feedback file.

    python -m tasks.merge_feedback

Reads data/preferences/collected.parquet (the `preferences` stage: sampled from SFT and ranked by the world's
labeler, or a user's file) and every file in data/feedback/ (new preference data accepted by the retraining
flow), and writes their union to data/preferences/pairs.parquet. It runs no model and reads no params: a new
feedback file reruns this stage (seconds), not the collection (minutes of sampling), so retraining redoes only
the reward model onward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from rlhf.data import import_preferences
from rlhf.io import atomic_path
from tasks import tracking
from tasks.common import Params, entry, path, write_metrics

COLLECTED = "data/preferences/collected.parquet"
OUT = "data/preferences/pairs.parquet"
FEEDBACK = "data/feedback"
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
COLUMNS = [
    "prompt",
    "chosen",
    "rejected",
    "prompt_id",
    "chosen_rank",
    "rejected_rank",
    "labeler_seed",
    "labeler_temperature",
    "labeler_length_bias",
    "sft_hash",
    "source",
]
"""the pairs' schema: the texts and their provenance"""


def imported(file: Path, fmt: str) -> pd.DataFrame:
    """A user's preference file in the pairs schema; provenance columns they lack stay empty (-1 / "")."""
    df = import_preferences(file, fmt)
    out = df[["prompt", "chosen", "rejected", "prompt_id"]].copy()
    out["prompt_id"] = out["prompt_id"].astype(str)
    out["chosen_rank"], out["rejected_rank"], out["labeler_seed"] = 0, 1, -1
    out["labeler_temperature"], out["labeler_length_bias"] = float("nan"), float("nan")
    out["sft_hash"], out["source"] = "", str(file)
    return out[COLUMNS]


def feedback_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.glob("*") if f.suffix in SUFFIXES) if folder.exists() else []


def merge(collected: pd.DataFrame, feedback: list[Path]) -> pd.DataFrame:
    """The collected pairs, then each feedback file's in name order."""
    return pd.concat([collected, *(imported(f, "auto") for f in feedback)], ignore_index=True)


def run(params: dict[str, Any]) -> dict[str, Any]:
    p = Params(params)
    configure(p)
    with tracking.stage_run("merge_feedback", p.logged()) as tracker:
        feedback = feedback_files(path(FEEDBACK))
        collected = pd.read_parquet(path(COLLECTED))
        df = merge(collected, feedback)
        with atomic_path(path(OUT)) as tmp:
            df.to_parquet(tmp, index=False)
        metrics = {
            "n_pairs": len(df),
            "n_prompts": int(df["prompt"].nunique()),
            "n_feedback_files": len(feedback),
            "n_feedback_pairs": len(df) - len(collected),
            "chosen_words": float(df["chosen"].str.split().str.len().mean()),
            "rejected_words": float(df["rejected"].str.split().str.len().mean()),
        }
        tracker.log_metrics({f"merge_feedback/{k}": float(v) for k, v in metrics.items()}, 0)
        write_metrics("merge_feedback", metrics)
    return metrics


def configure(p: Params) -> None:
    """Reads no params: what it merges is files."""


main = entry(__doc__, run)


if __name__ == "__main__":
    main()
