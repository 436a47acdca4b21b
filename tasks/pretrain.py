"""Stage `pretrain`: the base model, trained from scratch on the corpus (next-token prediction).

With `model.hf_path` set, the base model is that Hugging Face model and nothing is trained: the stage exports it
into models/base in the project's checkpoint format (rlhf.hf), so the stages after it read it like any base.
With `runtime.nproc_per_node` > 1 (or under torchrun) every rank trains on its share of each batch; rank 0 writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf import distributed
from rlhf.checkpoint import fingerprint, resumable_meta, save_model
from rlhf.lm_data import WindowSampler, encode_documents, fixed_batches
from rlhf.lm_train import TrainConfig, train_lm
from rlhf.lora import set_gradient_checkpointing
from rlhf.model import GPT, GPTConfig
from rlhf.tokenizer import ChatTokenizer
from tasks.common import Params, RuntimeParams, build_dataclass, path, resume_inputs, write_metrics
from tasks.stage import entry, lifecycle

TOKENIZER = "data/tokenizer/tokenizer.json"
STATE = "state/pretrain"  # checkpoint/ (training state) and the MLflow run to continue
EVAL_BATCHES = 8
MODEL_KEYS = ("hf_path", "block_size", "n_layer", "n_head", "n_embd", "dropout")
"""what pretrain reads of `model`, key by key: not model.lora, so switching adapters on never retrains the base"""


@dataclass(frozen=True)
class Config:
    model: dict
    """the `model` keys of MODEL_KEYS as written (its GPTConfig needs the tokenizer's vocabulary: `model_config`)"""
    train: TrainConfig | None
    """None when model.hf_path names a Hugging Face model to export instead of training"""
    runtime: RuntimeParams


def configure(p: Params) -> Config:
    model = {k: p.value(f"model.{k}") for k in MODEL_KEYS}
    train = None if model.get("hf_path") else p.section("pretrain", TrainConfig)
    if train is not None:  # checked now, before any file is read (1 stands in for the tokenizer's vocabulary)
        model_config(model, 1)
    return Config(model, train, p.runtime())


def model_config(model: dict, vocab_size: int) -> GPTConfig:
    raw = {k: v for k, v in model.items() if k != "hf_path"}
    return build_dataclass(GPTConfig, {**raw, "vocab_size": vocab_size}, "params.yaml:model")


def export_hf(p: Params, model_params: dict) -> dict:
    """The HF model at `hf_path` as models/base (float32, dropout off, context model.block_size); no training."""
    from rlhf.hf import load_pretrained

    hf_path = model_params["hf_path"]
    tok = ChatTokenizer.load(path(TOKENIZER))
    model = load_pretrained(path(hf_path), model_params["block_size"])
    if tok.vocab_size > model.cfg.vocab_size:
        raise ValueError(
            f"model.hf_path = {hf_path}: the tokenizer in {TOKENIZER} has {tok.vocab_size} tokens but the model "
            f"only {model.cfg.vocab_size}; rerun the tokenizer stage with this model.hf_path"
        )
    with lifecycle("pretrain", p, None) as ctx:
        save_model(path("models/base"), model, path(TOKENIZER), stage="pretrain", steps=0, hf_path=str(hf_path))
        metrics = {"n_params": model.num_params(), "train_tokens": 0, "seconds": ctx.seconds()}
        write_metrics("pretrain", metrics)
    return metrics


def run(params: dict) -> dict:
    p = Params(params)
    conf = configure(p)
    cfg = conf.train
    if cfg is None:
        return export_hf(p, conf.model)
    tok = ChatTokenizer.load(path(TOKENIZER))
    mcfg = model_config(conf.model, tok.vocab_size)
    docs = [d for d in path("data/prepared/corpus.txt").read_text(encoding="utf-8").split("\n\n") if d]
    n_val = max(1, len(docs) // 20)  # the last 5% of documents are held out
    train = WindowSampler(encode_documents(tok, docs[:-n_val]), mcfg.block_size, cfg.batch_size, cfg.seed)
    val = WindowSampler(encode_documents(tok, docs[-n_val:]), mcfg.block_size, cfg.batch_size, cfg.seed)
    inputs = resume_inputs({"model": conf.model}, ["data/prepared/corpus.txt", TOKENIZER])
    resumable_meta(path(STATE) / "checkpoint", fingerprint(cfg, inputs), path(STATE))  # refuse early
    with lifecycle("pretrain", p, conf.runtime, state_dir=path(STATE)) as ctx:
        rt, tr = ctx.rt, ctx.tracker
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        model = set_gradient_checkpointing(GPT(mcfg).to(rt.device), conf.runtime.gradient_checkpointing)
        if distributed.is_distributed():
            torch.manual_seed(distributed.rank_seed(cfg.seed))  # dropout masks differ per rank
        final = train_lm(
            model,
            train,
            fixed_batches(val, EVAL_BATCHES),
            cfg,
            path(STATE) / "checkpoint",
            tr.log_metrics,
            name="pretrain",
            runtime=rt,
            inputs=inputs,
            start_over=path(STATE),
        )
        ctx.sync_peak_memory()
        if not ctx.is_main:
            return {}  # rank 0 reports and writes
        metrics = {
            "loss": final["pretrain/loss"],
            "val_loss": final.get("pretrain/val_loss"),
            "n_params": model.num_params(),
            "train_tokens": cfg.steps * cfg.batch_size * mcfg.block_size,
            **ctx.cost(ctx.seconds()),
        }
        save_model(path("models/base"), model, path(TOKENIZER), stage="pretrain", steps=cfg.steps)
        write_metrics("pretrain", metrics)
    return metrics


main = entry("tasks.pretrain", __doc__, run)


if __name__ == "__main__":
    main()
