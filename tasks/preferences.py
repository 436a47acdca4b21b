"""Stage `preferences`: the preference pairs the reward model learns from.

With `data.preferences: world` the SFT model samples K responses per preference prompt, the world's simulated
labeler ranks them, and each ranking becomes all its pairs (the spec's "Building the Preference Dataset").
Otherwise a user's file is imported (TRL pairs, Anthropic-HH transcripts or ranked lists) and must pass the
preference gate (tasks/validate.py) before anything is written: a bad file leaves the last good outputs in place
(dvc.yaml marks them `persist`, so DVC does not delete them before the stage runs either). Output:
data/preferences/collected.parquet with prompt, chosen, rejected and provenance columns; the `merge_feedback`
stage adds the files of data/feedback/ to it (a new feedback file does not rerun this stage's sampling).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from rlhf.checkpoint import file_hash, load_model
from rlhf.data import DataError, borrowed, near_borrowed, nearest_prompts, ranking_to_pairs, read_prompts
from rlhf.device import CPU, Runtime
from rlhf.generate import SamplingConfig, generate_text
from rlhf.io import atomic_path
from rlhf.tokenizer import ChatTokenizer
from tasks.common import ParamError, Params, RuntimeParams, path, write_metrics
from tasks.merge_feedback import COLLECTED as OUT
from tasks.merge_feedback import COLUMNS, imported
from tasks.stage import entry, lifecycle


@dataclass(frozen=True, kw_only=True)
class PreferenceParams:
    k: int
    """responses sampled per prompt"""
    borrowed: int
    """responses of other prompts ranked with each prompt's own (rlhf.data.borrowed): off-topic answers and
    refusals of harmless requests then appear in the pairs, losing"""
    borrowed_near: int
    """responses of each prompt's most alike prompt ranked with its own (rlhf.data.near_borrowed): answers about
    another subject of the same kind (other operands, another name) then appear in the pairs, losing"""
    temperature: float
    """sampling temperature of the SFT model"""
    max_new_tokens: int
    """longest sampled response"""
    labeler_temperature: float
    """noise of the simulated labeler (Plackett–Luce temperature on the gold utility)"""
    labeler_length_bias: float
    """the labeler's mild taste for length: utility += bias · words"""
    labeler_seed: int
    """the labeler's own random stream"""
    seed: int
    """sampling seed"""


def collect_world(cfg: PreferenceParams, rt: Runtime = CPU) -> tuple[pd.DataFrame, dict]:
    """Sample K responses per prompt from SFT (on the runtime's device and precision), add `borrowed` responses of
    other prompts and `borrowed_near` of the most alike prompt, rank each group with the simulated labeler, expand
    into pairs."""
    from rlhf.world.judge import score as gold
    from rlhf.world.labeler import SimulatedLabeler

    prompts = read_prompts(path("data/prepared/prompts_pref.jsonl"))
    sft_dir = path("models/sft")
    model = load_model(sft_dir, arch="gpt").to(rt.device)
    tok = ChatTokenizer.load(sft_dir)
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    texts = prompts["prompt"].tolist()
    with rt.autocast():
        flat = [p for p in texts for _ in range(cfg.k)]
        responses = generate_text(model, tok, flat, sampling, seed=cfg.seed, progress="preferences")
    labeler = SimulatedLabeler(cfg.labeler_temperature, cfg.labeler_length_bias, cfg.labeler_seed)
    sft_hash = file_hash(sft_dir / "model.safetensors")
    # A model that emits EOS at once gives an empty answer: no labeler would rank it, and the gate refuses
    # blank texts, so it is left out of its group (counted in the metrics) rather than written as a pair.
    own = [[r for r in responses[i * cfg.k : (i + 1) * cfg.k] if r.strip()] for i in range(len(texts))]
    empty = len(responses) - sum(map(len, own))
    near = near_borrowed(own, nearest_prompts(texts), cfg.borrowed_near, cfg.seed + 1)
    far = borrowed(own, cfg.borrowed, cfg.seed)
    groups = [g + b + [t for t in c if t not in b] for g, b, c in zip(own, far, near, strict=True)]
    rows = []
    for pid, prompt, group in zip(prompts["id"], texts, groups, strict=True):
        ranking = labeler.rank(prompt, group)
        rank_of = {idx: r for r, idx in enumerate(ranking)}
        for better, worse in ranking_to_pairs(group, ranking):
            c, r = group[better], group[worse]
            rows.append(
                [
                    prompt,
                    c,
                    r,
                    str(pid),
                    rank_of[better],
                    rank_of[worse],
                    cfg.labeler_seed,
                    float(cfg.labeler_temperature),
                    float(cfg.labeler_length_bias),
                    sft_hash,
                    "world",
                ]
            )
    # Two identical samples of one prompt (A, A, B) yield the pair (A, B) twice: keep one, it is one judgement.
    df = pd.DataFrame(rows, columns=COLUMNS).drop_duplicates(["prompt", "chosen", "rejected"], ignore_index=True)
    triples = list(zip(df["prompt"], df["chosen"], df["rejected"], strict=True))
    stats = {
        # the reward model's ceiling: the Bayes accuracy of the best possible model of this labeler
        "labeler_ceiling": sum(labeler.pair_ceiling(p, c, r) for p, c, r in triples) / max(1, len(df)),
        # how often the labeler's choice is also the gold judge's
        "labeler_gold_agreement": sum(gold(p, c) > gold(p, r) for p, c, r in triples) / max(1, len(df)),
        # pairs of the ranked groups not written: identical texts or repeated pairs
        "pairs_dropped": sum(n * (n - 1) // 2 for n in map(len, groups)) - len(df),
        "borrowed_responses": sum(map(len, groups)) - sum(map(len, own)),
        "empty_responses": empty,  # samples left out for being empty or blank
    }
    return df, stats


def gate_user_file(file, fmt: str, block_size: int) -> None:
    """The preference gate on a user's file, as imported, before the stage writes anything: DataError naming the
    file, its lines and the rules it broke, and saying that the last good outputs are untouched. At least one pair
    (validate.min_pairs is the validate_preferences stage's rule, on the merged set)."""
    import tempfile

    from tasks import validate

    with tempfile.TemporaryDirectory(prefix="rlhf-gate-") as reports:
        try:
            inputs = path("models/sft/tokenizer.json"), path("data/prepared/prompts_eval.jsonl")
            validate.run(
                "preferences", file, *inputs, block_size=block_size, min_rows=1, report_dir=reports,
                import_format=fmt,
            )  # fmt: skip
        except validate.ValidationFailed as e:
            raise DataError(
                f"{e.report.summary()}\n{OUT} and metrics/preferences.json were left as they were (the last good "
                "outputs); fix the file and rerun. If they are missing, `dvc checkout preferences` restores them "
                "from the DVC cache."
            ) from e


@dataclass(frozen=True)
class Config:
    prefs: PreferenceParams
    source: str
    """data.preferences: "world", or a user's preference file"""
    fmt: str
    """data.preferences_format"""
    block_size: int
    """model.block_size: the gate's limit on a user's pairs"""
    runtime: RuntimeParams


def configure(p: Params) -> Config:
    block_size = p.value("model.block_size")
    if not isinstance(block_size, int) or block_size < 1:
        raise ParamError(f"params.yaml:model.block_size: expected an int >= 1, got {block_size!r}")
    return Config(
        p.section("preferences", PreferenceParams),
        str(p.value("data.preferences")),
        str(p.value("data.preferences_format")),
        block_size,
        p.runtime(),
    )


def run(params: dict) -> dict:
    p = Params(params)
    conf = configure(p)
    # generation only: the device and precision of `runtime`, no process group (one process samples)
    with torch.no_grad(), lifecycle("preferences", p, conf.runtime, ddp=False) as ctx:
        stats: dict = {}
        if conf.source == "world":
            df, stats = collect_world(conf.prefs, ctx.rt)
        else:
            gate_user_file(path(conf.source), conf.fmt, conf.block_size)
            df = imported(path(conf.source), conf.fmt)
        with atomic_path(path(OUT)) as tmp:
            df.to_parquet(tmp, index=False)
        metrics = {
            "n_pairs": len(df),
            "n_prompts": int(df["prompt"].nunique()),
            "chosen_words": float(df["chosen"].str.split().str.len().mean()),
            "rejected_words": float(df["rejected"].str.split().str.len().mean()),
            **stats,
        }
        ctx.tracker.log_metrics({f"preferences/{k}": float(v) for k, v in metrics.items()}, 0)
        write_metrics("preferences", metrics)
    return metrics


main = entry("tasks.preferences", __doc__, run, ddp=False)


if __name__ == "__main__":
    main()
