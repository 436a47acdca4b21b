"""Stage `dpo`: Direct Preference Optimization of the SFT model on the preference pairs (rlhf/dpo.py).

The pairs are the reward model's, after the same validation gate, and the held-out prompts are the same
(`rlhf.reward.split` with `reward_model.val_frac`), so DPO's held-out implicit-reward accuracy and the
reward model's accuracy are measured on the same pairs. The reference (the SFT model) scores every pair once
before training. Writes models/dpo/ (an LM checkpoint like models/sft) and metrics/dpo.json.

With `runtime.nproc_per_node` > 1 (or under torchrun) every rank trains on its share of each batch of pairs;
rank 0 alone writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from rlhf.checkpoint import fingerprint, load_model, resumable_meta
from rlhf.dpo import DPOConfig, train_dpo
from rlhf.lora import AdapterOff, LoRAConfig, save_stage_model, trainee
from rlhf.reward import encode_frame, split
from rlhf.tokenizer import ChatTokenizer
from tasks.common import ParamError, Params, RuntimeParams, path, resume_inputs, with_lora, write_metrics
from tasks.stage import entry, lifecycle

SFT = "models/sft"
PAIRS = "data/preferences/pairs.parquet"
STATE = "state/dpo"


@dataclass(frozen=True)
class Config:
    dpo: DPOConfig
    val_frac: float
    """the reward model's held-out share: DPO holds out the very same prompts"""
    runtime: RuntimeParams
    lora: LoRAConfig


def configure(p: Params) -> Config:
    cfg = p.section("dpo", DPOConfig)
    val_frac = p.value("reward_model.val_frac")
    if not isinstance(val_frac, (int, float)) or not 0 < val_frac < 1:
        raise ParamError(f"params.yaml:reward_model.val_frac must be a number in (0, 1) for DPO, got {val_frac!r}")
    return Config(cfg, float(val_frac), p.runtime(), p.lora())


def run(params: dict) -> dict:
    p = Params(params)
    conf = configure(p)  # bad params fail before any model loads
    cfg, val_frac = conf.dpo, conf.val_frac
    tok = ChatTokenizer.load(path(SFT))
    sft = load_model(path(SFT), arch="gpt")
    train_df, val_df = split(pd.read_parquet(path(PAIRS)), val_frac)
    if train_df.empty or val_df.empty:
        raise ValueError(
            f"{path(PAIRS)}: {len(train_df)} training and {len(val_df)} held-out pairs with "
            f"reward_model.val_frac={val_frac}; DPO needs both (more pairs, or another val_frac)"
        )
    train, val = encode_frame(tok, train_df, sft.cfg.block_size), encode_frame(tok, val_df, sft.cfg.block_size)
    inputs = resume_inputs(
        with_lora({"dpo": params["dpo"], "reward_model.val_frac": params["reward_model"]["val_frac"]}, conf.lora),
        [f"{SFT}/model.safetensors", PAIRS],
    )
    resumable_meta(path(STATE) / "checkpoint", fingerprint(cfg, inputs), path(STATE))  # refuse before any work
    with lifecycle("dpo", p, conf.runtime, state_dir=path(STATE)) as ctx:
        rt, tr = ctx.rt, ctx.tracker
        model = trainee(sft.to(rt.device), conf.lora, "dpo", conf.runtime.gradient_checkpointing, cfg.seed)
        # LoRA: the reference is the policy with its adapter off (TRL's ref_model=None), no second copy
        reference = AdapterOff(model) if conf.lora.enabled else load_model(path(SFT), arch="gpt").to(rt.device).eval()
        best = train_dpo(
            model,
            reference,
            train,
            val,
            cfg,
            tok.pad_id,
            path(STATE) / "checkpoint",
            tr.log_metrics,
            rt,
            inputs=inputs,
            start_over=path(STATE),
        )
        del reference
        seconds = ctx.seconds()
        ctx.sync_peak_memory()
        if not ctx.is_main:
            return {}  # rank 0 reports and writes
        metrics = {
            "loss": best["train_loss"],
            "val_loss": best["loss"],
            "val_accuracy": best["accuracy"],
            "val_margin": best["margin"],
            "n_train": len(train),
            "n_val": len(val),
            "steps": best["steps"],
            **ctx.cost(seconds),
        }
        tr.log_metrics({f"dpo/{k}": float(v) for k, v in metrics.items()}, best["steps"])
        tokenizer = path(f"{SFT}/tokenizer.json")
        save_stage_model(
            path("models/dpo"), model, tokenizer, path(SFT), SFT, stage="dpo", beta=cfg.beta, loss_type=cfg.loss_type
        )
        write_metrics("dpo", metrics)
    return metrics


main = entry("tasks.dpo", __doc__, run)


if __name__ == "__main__":
    main()
