"""Stage `sft`: supervised fine-tuning of the base model on the demonstrations (loss on response tokens only).

Also measures what SFT bought, on the held-out evaluation prompts: the mean judge score of the base and the SFT
model (`gold_score_base`, `gold_score_sft` in metrics/sft.json) and the share of right answers
(`content_correct_base`, `content_correct_sft`; per prompt group under `content`): the spec's parrot-to-assistant
step, measured.

With `runtime.nproc_per_node` > 1 (or under torchrun) every rank trains on its share of each batch; rank 0 alone
judges the two models and writes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import torch

from rlhf import distributed
from rlhf.checkpoint import fingerprint, load_model, resumable_meta
from rlhf.data import read_demos, read_prompts
from rlhf.generate import SamplingConfig, generate_text
from rlhf.io import write_jsonl
from rlhf.judges import Judge
from rlhf.lm_data import EpochSampler, sft_example
from rlhf.lm_train import TrainConfig, train_lm
from rlhf.lora import LoRAConfig, save_stage_model, trainee
from rlhf.tokenizer import ChatTokenizer
from tasks.common import Params, RuntimeParams, path, resume_inputs, with_lora, write_metrics
from tasks.judge import ContentFn, content_judge, gold_judge
from tasks.stage import entry, lifecycle

TOKENIZER = "data/tokenizer/tokenizer.json"
DEMOS = "data/prepared/demos.jsonl"
EVAL_PROMPTS = "data/prepared/prompts_eval.jsonl"
STATE = "state/sft"  # checkpoint/ (training state) and the MLflow run to continue


@dataclass(frozen=True, kw_only=True)
class SFTParams(TrainConfig):
    heldout_frac: float
    """share of demonstrations held out for the validation loss (chosen by a hash of the prompt)"""
    eval_prompts: int
    """evaluation prompts on which base and SFT are judged (0: skip)"""
    eval_temperature: float
    """sampling temperature of that comparison"""
    max_new_tokens: int
    """longest sampled response"""


def split_examples(tok: ChatTokenizer, df, block_size: int, heldout_frac: float):
    """Encode demonstrations; a stable hash of the prompt decides the held-out split (same prompt, same side)."""
    train: tuple[list, list] = ([], [])
    held: tuple[list, list] = ([], [])
    for row, (prompt, response) in enumerate(zip(df["prompt"], df["response"], strict=True), start=1):
        ids = sft_example(tok, prompt, response, block_size, where=f"{DEMOS}, row {row}")
        n_prompt = len(tok.encode_prompt(prompt))
        side = held if zlib.crc32(prompt.encode()) % 10_000 < heldout_frac * 10_000 else train
        side[0].append(ids)
        side[1].append(n_prompt)
    if not held[0]:  # tiny datasets: keep at least one held-out example
        held = ([train[0].pop()], [train[1].pop()])
    return train, held


@dataclass(frozen=True)
class Config:
    sft: SFTParams
    judge: Judge | None
    content: ContentFn | None
    runtime: RuntimeParams
    lora: LoRAConfig


def configure(p: Params) -> Config:
    return Config(p.section("sft", SFTParams), gold_judge(p), content_judge(p), p.runtime(), p.lora())


def judge_models(
    cfg: SFTParams, judge: Judge | None, content: ContentFn | None, models: dict, tok: ChatTokenizer
) -> dict[str, Any]:
    """Mean judge score and content shares of each model's samples on the evaluation prompts; samples saved."""
    if (judge is None and content is None) or cfg.eval_prompts == 0:
        return {}
    prompts = read_prompts(path(EVAL_PROMPTS))["prompt"].tolist()[: cfg.eval_prompts]
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.eval_temperature)
    out, rows = {}, [{"prompt": p} for p in prompts]
    for name, model in models.items():
        responses = generate_text(model, tok, prompts, sampling, seed=cfg.seed)
        for r, text in zip(rows, responses, strict=True):
            r[name] = text
        if judge is not None:
            scores = judge(prompts, responses)
            out[f"gold_score_{name}"] = sum(scores) / len(scores)
            for r, s in zip(rows, scores, strict=True):
                r[f"{name}_score"] = s
        if content is not None:
            summary = content(prompts, responses)
            out[f"content_correct_{name}"] = summary["correct"]
            out.setdefault("content", {})[name] = summary
    write_jsonl(path("reports/sft_samples.jsonl"), rows)
    return out


def run(params: dict) -> dict:
    p = Params(params)
    conf = configure(p)
    cfg = conf.sft
    tok = ChatTokenizer.load(path(TOKENIZER))
    base = load_model(path("models/base"), arch="gpt")
    (train_ids, train_np), (held_ids, held_np) = split_examples(
        tok, read_demos(path(DEMOS)), base.cfg.block_size, cfg.heldout_frac
    )
    sampler = EpochSampler(train_ids, train_np, cfg.batch_size, cfg.seed, tok.pad_id)
    held = EpochSampler(held_ids, held_np, cfg.batch_size, cfg.seed, tok.pad_id).eval_batches()
    inputs = resume_inputs(
        with_lora({"sft": params["sft"]}, conf.lora), ["models/base/model.safetensors", DEMOS, TOKENIZER]
    )
    resumable_meta(path(STATE) / "checkpoint", fingerprint(cfg, inputs), path(STATE))  # refuse early
    with lifecycle("sft", p, conf.runtime, state_dir=path(STATE)) as ctx:
        rt, tr = ctx.rt, ctx.tracker
        model = load_model(path("models/base"), arch="gpt").to(rt.device)
        # LoRA: an adapter on base, drawn from sft.seed
        model = trainee(model, conf.lora, "sft", conf.runtime.gradient_checkpointing, cfg.seed)
        torch.manual_seed(distributed.rank_seed(cfg.seed))  # dropout masks differ per rank
        final = train_lm(
            model, sampler, held, cfg, path(STATE) / "checkpoint", tr.log_metrics, name="sft", runtime=rt,
            inputs=inputs, start_over=path(STATE),
        )  # fmt: skip
        seconds = ctx.seconds()
        ctx.sync_peak_memory()
        if not ctx.is_main:
            return {}  # rank 0 judges, reports and writes
        with rt.autocast():
            judged = judge_models(cfg, conf.judge, conf.content, {"base": base.to(rt.device), "sft": model}, tok)
        metrics = {
            "loss": final["sft/loss"],
            "val_loss": final.get("sft/val_loss"),
            "n_train": len(train_ids),
            "n_heldout": len(held_ids),
            **judged,
            **ctx.cost(seconds),
        }
        tr.log_metrics({f"sft/{k}": v for k, v in metrics.items() if isinstance(v, float)}, cfg.steps)
        save_stage_model(
            path("models/sft"), model, path(TOKENIZER), path("models/base"), "models/base", stage="sft", steps=cfg.steps
        )  # with LoRA: the merged model, for every reader, and models/sft/adapter
        write_metrics("sft", metrics)
    return metrics


main = entry("tasks.sft", __doc__, run)


if __name__ == "__main__":
    main()
