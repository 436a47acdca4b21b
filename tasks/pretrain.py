"""Stage `pretrain`: the base model, trained from scratch on the corpus (next-token prediction).

With `model.hf_path` set, the base model is that Hugging Face model and nothing is trained: the stage exports it
into models/base in the project's checkpoint format (rlhf.hf), so the stages after it read it like any base.
With `runtime.nproc_per_node` > 1 (or under torchrun) every rank trains on its share of each batch; rank 0 writes.
"""

from __future__ import annotations

import shutil
import time

import torch

from rlhf import distributed
from rlhf.checkpoint import fingerprint, resumable_meta, save_model
from rlhf.lm_data import WindowSampler, encode_documents, fixed_batches
from rlhf.lm_train import TrainConfig, train_lm
from rlhf.model import GPT, GPTConfig
from rlhf.tokenizer import ChatTokenizer
from tasks import launch
from tasks.common import build_dataclass, path, resume_inputs, section, stage_main, write_metrics

TOKENIZER = "data/tokenizer/tokenizer.json"
STATE = "state/pretrain"  # checkpoint/ (training state) and the MLflow run to continue
EVAL_BATCHES = 8


def model_config(params: dict, tokenizer: ChatTokenizer) -> GPTConfig:
    raw = {k: v for k, v in params["model"].items() if k != "hf_path"}
    return build_dataclass(GPTConfig, {**raw, "vocab_size": tokenizer.vocab_size}, "params.yaml:model")


def export_hf(params: dict, hf_path: str) -> dict:
    """The HF model at `hf_path` as models/base (float32, dropout off, context model.block_size); no training."""
    from rlhf.hf import load_pretrained

    t0 = time.perf_counter()
    tok = ChatTokenizer.load(path(TOKENIZER))
    model = load_pretrained(path(hf_path), params["model"]["block_size"])
    if tok.vocab_size > model.cfg.vocab_size:
        raise ValueError(
            f"model.hf_path = {hf_path}: the tokenizer in {TOKENIZER} has {tok.vocab_size} tokens but the model "
            f"only {model.cfg.vocab_size}; rerun the tokenizer stage with this model.hf_path"
        )
    with launch.stage_run("pretrain", {"model": params["model"]}):
        save_model(path("models/base"), model, path(TOKENIZER), stage="pretrain", steps=0, hf_path=str(hf_path))
        metrics = {"n_params": model.num_params(), "train_tokens": 0, "seconds": time.perf_counter() - t0}
        write_metrics("pretrain", metrics)
    return metrics


def run(params: dict) -> dict:
    if params["model"].get("hf_path"):
        return export_hf(params, params["model"]["hf_path"])
    cfg = section(params, "pretrain", TrainConfig)
    tok = ChatTokenizer.load(path(TOKENIZER))
    mcfg = model_config(params, tok)
    docs = [d for d in path("data/prepared/corpus.txt").read_text(encoding="utf-8").split("\n\n") if d]
    n_val = max(1, len(docs) // 20)  # the last 5% of documents are held out
    train = WindowSampler(encode_documents(tok, docs[:-n_val]), mcfg.block_size, cfg.batch_size, cfg.seed)
    val = WindowSampler(encode_documents(tok, docs[-n_val:]), mcfg.block_size, cfg.batch_size, cfg.seed)
    logged = {"model": params["model"], "pretrain": params["pretrain"], "runtime": params.get("runtime", {})}
    inputs = resume_inputs({"model": params["model"]}, ["data/prepared/corpus.txt", TOKENIZER])
    resumable_meta(path(STATE) / "checkpoint", fingerprint(cfg, inputs), path(STATE))  # refuse early
    with launch.session(params) as rt:
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        model = GPT(mcfg).to(rt.device)
        if distributed.is_distributed():
            torch.manual_seed(distributed.rank_seed(cfg.seed))  # dropout masks differ per rank
        t0 = time.perf_counter()
        with launch.stage_run("pretrain", logged, state_dir=path(STATE)) as tr:
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
            peak = launch.peak_memory(rt)
            if not distributed.is_main():
                return {}  # rank 0 reports and writes
            metrics = {
                "loss": final["pretrain/loss"],
                "val_loss": final.get("pretrain/val_loss"),
                "n_params": model.num_params(),
                "train_tokens": cfg.steps * cfg.batch_size * mcfg.block_size,
                "seconds": time.perf_counter() - t0,
                "peak_memory_mb": peak,
                "world_size": distributed.world_size(),
            }
            save_model(path("models/base"), model, path(TOKENIZER), stage="pretrain", steps=cfg.steps)
            write_metrics("pretrain", metrics)
    shutil.rmtree(path(STATE), ignore_errors=True)  # finished: nothing left to resume
    return metrics


@stage_main
def main() -> None:
    launch.main("tasks.pretrain", __doc__, run)


if __name__ == "__main__":
    main()
