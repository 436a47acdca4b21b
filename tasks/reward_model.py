"""Stage `reward_model`: brain surgery on the SFT model and Bradley–Terry training on the preference pairs.

Held-out pairs are split by prompt (no prompt on both sides). Reported: loss, pairwise accuracy, the labeler's
ceiling on the same held-out pairs (when the pairs came from the world's labeler), Spearman correlation with the
gold judge on fresh SFT samples, mean margin and a calibration table. The mean and std of the reward model's
scores on SFT samples are saved with it, so PPO sees normalised rewards (the spec's "reward scaling").

With `runtime.nproc_per_node` > 1 (or under torchrun) every rank trains on its share of each batch of pairs;
rank 0 alone measures and writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from rlhf.checkpoint import load_model
from rlhf.data import read_prompts
from rlhf.device import Runtime
from rlhf.generate import SamplingConfig
from rlhf.judges import Judge
from rlhf.lora import LoRAConfig, save_stage_model, trainee
from rlhf.model import ScalarHeadModel
from rlhf.reward import Pairs, RMConfig, encode_frame, margins, split, train_reward_model
from rlhf.rollout import Rollout, reward_model_scores, sample_rollout
from rlhf.stats import calibration_table, pairwise_accuracy, spearman
from rlhf.tokenizer import ChatTokenizer
from tasks.common import Params, RuntimeParams, path, write_metrics
from tasks.judge import gold_judge
from tasks.plots import plot_calibration, write_csv
from tasks.stage import entry, lifecycle

PAIRS = "data/preferences/pairs.parquet"


@dataclass(frozen=True, kw_only=True)
class RewardParams(RMConfig):
    val_frac: float
    """share of prompts whose pairs are held out"""
    n_samples: int
    """fresh SFT samples (on PPO prompts) for the normalisation and the Spearman correlation with gold"""
    sample_temperature: float
    """temperature of those samples (PPO's rollout temperature)"""
    max_new_tokens: int
    """longest sampled response"""


def labeler_ceiling(val: pd.DataFrame) -> float | None:
    """Mean Bayes accuracy of the labeler that made these pairs; None for pairs of unknown origin."""
    if not (val["labeler_seed"] >= 0).all() or val["labeler_temperature"].isna().any():
        return None
    from rlhf.world.labeler import SimulatedLabeler

    out = []
    for (t, b, s), grp in val.groupby(["labeler_temperature", "labeler_length_bias", "labeler_seed"]):
        lab = SimulatedLabeler(float(t), float(b), int(s))
        out += [
            lab.pair_ceiling(p, c, r) for p, c, r in zip(grp["prompt"], grp["chosen"], grp["rejected"], strict=True)
        ]
    return float(np.mean(out))


def calibration(m: torch.Tensor, seed: int) -> list[dict]:
    """Orient each held-out pair at random (seeded), so P(first wins) is predicted and observed in both ways."""
    flip = np.random.default_rng(seed).random(len(m)) < 0.5
    signed = np.where(flip, -m.numpy(), m.numpy())
    return calibration_table(signed, (~flip).astype(float))


@torch.no_grad()
def sft_rollouts(cfg: RewardParams, tok: ChatTokenizer, rt: Runtime) -> Rollout:
    """Fresh SFT samples on PPO prompts, drawn as PPO's rollouts are (rlhf.rollout.sample_rollout: raw ids,
    truncated at max_new_tokens with no EOS appended), so the reward model scores them as PPO's reward will."""
    prompts = read_prompts(path("data/prepared/prompts_ppo.jsonl"))["prompt"].tolist()[: cfg.n_samples]
    sft = load_model(path("models/sft"), arch="gpt").to(rt.device)
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.sample_temperature)
    gen = torch.Generator(device=rt.device).manual_seed(cfg.seed + 1)
    with rt.autocast():
        return sample_rollout(sft, tok, prompts, sampling, gen)


@dataclass(frozen=True)
class Config:
    rm: RewardParams
    judge: Judge | None
    runtime: RuntimeParams
    lora: LoRAConfig


def configure(p: Params) -> Config:
    return Config(p.section("reward_model", RewardParams), gold_judge(p), p.runtime(), p.lora())


def run(params: dict) -> dict:
    p = Params(params)
    conf = configure(p)
    cfg = conf.rm
    tok = ChatTokenizer.load(path("models/sft"))
    sft = load_model(path("models/sft"), arch="gpt")
    train_df, val_df = split(pd.read_parquet(path(PAIRS)), cfg.val_frac)
    train, val = encode_frame(tok, train_df, sft.cfg.block_size), encode_frame(tok, val_df, sft.cfg.block_size)
    with lifecycle("reward_model", p, conf.runtime) as ctx:
        rt, tr = ctx.rt, ctx.tracker
        torch.manual_seed(cfg.seed)  # the same head on every rank (DDP also broadcasts rank 0's weights)
        model = ScalarHeadModel.from_lm(sft).to(rt.device)
        # LoRA: an adapter on the SFT body, the scalar head trained whole (peft's modules_to_save)
        model = trainee(model, conf.lora, "reward", conf.runtime.gradient_checkpointing, cfg.seed)
        best = train_reward_model(model, train, val, cfg, tok.pad_id, tr.log_metrics, runtime=rt)
        ctx.sync_peak_memory()
        if not ctx.is_main:
            return {}  # rank 0 measures, reports and writes
        measured, table = measure(conf.judge, cfg, model, val, val_df, tok, rt)
        metrics = {
            "loss": best["loss"],
            **measured,
            "n_train": len(train),
            "n_val": len(val),
            "steps": best["steps"],
            **ctx.cost(ctx.seconds()),
        }
        write_csv(path("plots/rm_calibration.csv"), table)
        plot_calibration(table, path("plots/rm_calibration.png"))
        tr.log_metrics({f"rm/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, best["steps"])
        tr.log_artifact(path("plots/rm_calibration.png"))
        save_stage_model(
            path("models/reward_model"),
            model,
            path("models/sft/tokenizer.json"),
            path("models/sft"),
            "models/sft",
            stage="reward_model",
            reward_mean=metrics["reward_mean"],
            reward_std=metrics["reward_std"],
        )
        write_metrics("reward_model", metrics)
    return metrics


def measure(
    judge: Judge | None, cfg: RewardParams, model: ScalarHeadModel, val: Pairs, val_df: pd.DataFrame, tok, rt: Runtime
) -> tuple[dict, list[dict]]:
    """Held-out accuracy and margins, the RM's scores of fresh SFT samples (their mean/std, Spearman with gold),
    and the calibration table."""
    m = margins(model, val, tok.pad_id, runtime=rt)
    ro = sft_rollouts(cfg, tok, rt)
    with torch.no_grad(), rt.autocast():
        raw = reward_model_scores(model.eval(), ro).float().cpu().numpy()
    gold = judge(ro.prompts, ro.texts(tok)) if judge is not None else None
    measured = {
        "accuracy": pairwise_accuracy(m.numpy()),
        "ceiling": labeler_ceiling(val_df),
        "spearman_gold": spearman(raw, gold) if gold is not None else None,
        "margin": float(m.mean()),
        "reward_mean": float(np.mean(raw)),
        "reward_std": float(np.std(raw)) or 1.0,
    }
    return measured, calibration(m, cfg.seed)


main = entry("tasks.reward_model", __doc__, run)


if __name__ == "__main__":
    main()
