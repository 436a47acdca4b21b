"""`bin/label prepare`: sample K responses per prompt from the current champion and store them as tasks.

The model is the registry's `rlhf-actor@champion` (downloaded from MLflow), or models/sft while there is no
champion, or any checkpoint directory given with --model. Generation happens here, never while someone
waits in the app. Prompts that already have tasks are not drawn again.
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rlhf.checkpoint import file_hash, load_model
from rlhf.data import read_prompts
from rlhf.generate import SamplingConfig, generate_text
from rlhf.progress import Progress
from rlhf.tokenizer import ChatTokenizer
from tasks.labeling import db

DEFAULT_PROMPTS = "data/prepared/prompts_pref.jsonl"


@dataclass(frozen=True)
class PrepareConfig:
    n: int = 50
    """prompts to turn into tasks"""
    k: int = 4
    """responses per task"""
    max_labelers: int = 1
    """people each task is served to (2 or more gives overlap for agreement)"""
    max_new_tokens: int = 64
    temperature: float = 1.0
    seed: int = 0
    batch_prompts: int = 16
    """prompts generated per batch (a progress line after each)"""

    def check(self) -> None:
        if self.n < 1 or self.k < 2 or self.max_labelers < 1 or self.max_new_tokens < 1 or self.temperature <= 0:
            raise ValueError(
                f"prepare: need n >= 1, k >= 2, max_labelers >= 1, max_new_tokens >= 1 and temperature > 0; got {self}"
            )


def champion(root: Path, dst: Path) -> tuple[Path, str]:
    """(checkpoint dir, model version) of rlhf-actor@champion, or of models/sft when there is none."""
    from tasks import registry

    version = registry.alias_version(registry.ACTOR, registry.CHAMPION)
    if version is not None:
        return registry.download_checkpoint(registry.ACTOR, version, dst), f"{registry.ACTOR}/v{version}"
    sft = root / "models/sft"
    if not (sft / "model.safetensors").exists():
        raise FileNotFoundError(f"no {registry.ACTOR}@champion and no {sft}: run the pipeline first")
    return sft, f"models/sft@{file_hash(sft / 'model.safetensors')[:12]}"


def draw_prompts(prompts_file: Path, n: int, seed: int, exclude: set[str]) -> list[tuple[str, str]]:
    """Up to n (id, prompt) of the file not in `exclude`, drawn at random (reproducibly for a seed)."""
    df = read_prompts(prompts_file)
    pool = [(str(i), p) for i, p in zip(df["id"], df["prompt"], strict=True) if p not in exclude]
    random.Random(seed).shuffle(pool)
    return pool[:n]


def make_tasks(
    checkpoint: Path, model_version: str, prompts: list[tuple[str, str]], cfg: PrepareConfig
) -> list[db.NewTask]:
    model = load_model(checkpoint, arch="gpt")
    tok = ChatTokenizer.load(checkpoint)
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    progress = Progress("prepare", len(prompts), unit="prompts")
    out: list[db.NewTask] = []
    for start in range(0, len(prompts), cfg.batch_prompts):
        chunk = prompts[start : start + cfg.batch_prompts]
        flat = [p for _, p in chunk for _ in range(cfg.k)]
        texts = generate_text(model, tok, flat, sampling, seed=cfg.seed + start)
        for i, (pid, prompt) in enumerate(chunk):
            responses = distinct_responses(texts[i * cfg.k : (i + 1) * cfg.k])
            if len(responses) >= 2:  # else nothing to rank: the prompt is left for a later batch
                out.append(db.NewTask(prompt, pid, responses, model_version))
        progress.update(len(chunk))
    return out


def distinct_responses(texts: list[str]) -> list[str]:
    """The non-empty texts, each once, in their order. A peaked policy (a PPO champion) often samples the same
    answer twice: ranking two copies apart would make the exported pairs repeat and contradict each other, which
    the retraining gate rightly refuses, and a labeler cannot rank identical answers anyway."""
    seen: set[str] = set()
    out = []
    for t in texts:
        if t.strip() and t.strip() not in seen:
            seen.add(t.strip())
            out.append(t)
    return out


def prepare(
    conn: sqlite3.Connection, root: Path, prompts_file: Path, cfg: PrepareConfig, model_dir: Path | None = None
) -> dict[str, object]:
    """Draw prompts, generate, store: {"tasks": n added, "model_version": ...}. Bad params fail first."""
    import torch

    cfg.check()
    prompts = draw_prompts(prompts_file, cfg.n, cfg.seed, db.known_prompts(conn))
    if not prompts:
        return {"tasks": 0, "model_version": None, "note": f"every prompt of {prompts_file} already has tasks"}
    with tempfile.TemporaryDirectory(prefix="rlhf-label-") as tmp, torch.no_grad():
        if model_dir is not None:
            ckpt, version = model_dir, f"{model_dir}@{file_hash(model_dir / 'model.safetensors')[:12]}"
        else:
            ckpt, version = champion(root, Path(tmp))
        tasks = make_tasks(ckpt, version, prompts, cfg)
    ids = db.add_tasks(conn, tasks, cfg.max_labelers)
    return {
        "tasks": len(ids),
        "model_version": version,
        "prompts_without_two_distinct_answers": len(prompts) - len(ids),
    }
