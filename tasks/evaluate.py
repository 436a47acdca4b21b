"""Stage `evaluate`: win-rates of a candidate over a baseline on held-out prompts, the over-optimisation curve,
and a report a person can read.

Default comparison: the PPO actor against SFT. Any two checkpoints can be compared:
    python -m tasks.evaluate --candidate DIR --baseline DIR --out DIR
(the retraining flow uses this to pit a challenger against the registered champion).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlhf.checkpoint import load_model, read_config
from rlhf.data import read_prompts
from rlhf.device import Runtime
from rlhf.evaluation import PolicySamples, compare, judge_samples, sample_policy
from rlhf.generate import SamplingConfig
from rlhf.io import write_json, write_jsonl
from rlhf.judges import Judge, RewardModelJudge
from rlhf.tokenizer import ChatTokenizer
from tasks.common import Params, RuntimeParams, path
from tasks.judge import ContentFn, content_judge, gold_judge
from tasks.plots import plot_overoptimization, write_csv
from tasks.report import PLOTS, write_report
from tasks.stage import Context, entry, lifecycle
from tasks.tracking import log_report_bundle


@dataclass(frozen=True, kw_only=True)
class EvalParams:
    candidate: str = "models/ppo/actor"
    """checkpoint under test"""
    baseline: str = "models/sft"
    """checkpoint it is compared with"""
    reference: str = "models/sft"
    """the KL reference"""
    n_prompts: int
    """evaluation prompts used (0: all)"""
    n_samples: int
    """samples per prompt and policy"""
    temperature: float
    """decoding temperature, the same for both policies"""
    max_new_tokens: int
    """longest response"""
    n_boot: int
    """bootstrap resamples of prompts for the 95% CI"""
    curve_prompts: int
    """prompts per snapshot on the over-optimisation curve (0: no curve)"""
    seed: int
    """sampling and bootstrap seed"""


@dataclass(frozen=True)
class Config:
    eval: EvalParams
    judge: Judge | None
    content: ContentFn | None
    runtime: RuntimeParams


def configure(p: Params) -> Config:
    return Config(p.section("evaluate", EvalParams), gold_judge(p), content_judge(p), p.runtime())


def judges_for(gold: Judge | None, tok: ChatTokenizer, rt: Runtime) -> dict[str, Judge]:
    rm_dir = path("models/reward_model")
    rm_cfg = read_config(rm_dir)
    rm = RewardModelJudge(
        load_model(rm_dir, "scalar").to(rt.device), tok, rm_cfg.get("reward_mean", 0.0), rm_cfg.get("reward_std", 1.0)
    )
    return {"rm": rm, **({"gold": gold} if gold is not None else {})}


# KL is reported at temperature 1: the policies as PPO trained them and as its penalty measured them (spec
# section 8). The evaluation temperature sharpens both policies, which changes their KL (6.25 against 5.41 nats on
# one run), so that figure is reported beside it as `kl_eval_temperature`, never in its place.
KL_TEMPERATURE = 1.0


def kl_at_temperature_one(model, tok, ref, prompts, ids, cfg: EvalParams) -> float:
    """Mean KL per response of `model` from `ref` on samples of its own at temperature 1 (one per prompt)."""
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=KL_TEMPERATURE)
    return float(sample_policy(model, tok, prompts, ids, sampling, 1, cfg.seed + 1, ref).kl.mean())


def overoptimization(cfg: EvalParams, tok, ref, judges, prompts, ids, rt: Runtime) -> list[dict]:
    """Gold and RM score vs sqrt(KL) of each PPO snapshot, each relative to the first (the SFT start). Sampled at
    temperature 1, as PPO trained them, so the x-axis is the KL the penalty controlled (Gao et al.'s curve)."""
    snaps = sorted(path("models/ppo/snapshots").glob("iter_*")) if cfg.curve_prompts else []
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=KL_TEMPERATURE)
    rows = []
    for snap in snaps:
        s = sample_policy(
            load_model(snap, "gpt").to(rt.device),
            tok,
            prompts[: cfg.curve_prompts],
            ids[: cfg.curve_prompts],
            sampling,
            1,
            cfg.seed,
            ref,
        )
        judge_samples(s, judges)
        kl = float(s.kl.mean())
        rows.append(
            {
                "iteration": read_config(snap)["iteration"],
                "kl": kl,
                "sqrt_kl": math.sqrt(max(kl, 0.0)),
                **{f"{k}_score": float(v.mean()) for k, v in s.scores.items()},
            }
        )
    for key in ("rm_score", "gold_score"):
        for r in rows[::-1]:
            if key in r:
                r[key] -= rows[0][key]
    return rows


def summary(cand: PolicySamples, base: PolicySamples, results: dict, kl: float) -> dict:
    """metrics/eval.json in the shape dashboards rely on; `kl` is the candidate's KL at temperature 1."""
    out = {name: {k: r[k] for k in ("win_rate", "ci_low", "ci_high", "n")} for name, r in results.items()}
    out["kl"] = kl
    if cand.kl is not None:  # None under greedy decoding
        out["kl_eval_temperature"] = float(cand.kl.mean())
    out["length"] = {"candidate": float(cand.lengths.mean()), "baseline": float(base.lengths.mean())}
    out["scores"] = {
        name: {"candidate": float(cand.scores[name].mean()), "baseline": float(base.scores[name].mean())}
        for name in results
    }
    return out


def run(params: dict, candidate: str | None = None, baseline: str | None = None, out: str | None = None) -> dict:
    """The evaluate stage (PPO against SFT by default), or any two checkpoints compared into `out`."""
    p = Params(params)
    conf = configure(p)
    with torch.no_grad(), lifecycle("evaluate", p, conf.runtime, ddp=False) as ctx:
        return evaluate(conf, ctx, candidate, baseline, out)


def evaluate(
    conf: Config,
    ctx: Context,
    candidate: str | None,
    baseline: str | None,
    out: str | None,
    reuse: dict[Path, PolicySamples] | None = None,
) -> dict:
    """Candidate against baseline on the evaluation prompts, written to `out` (default: reports/eval, with the
    over-optimisation curve and metrics/eval.json); logged to the stage's run. `reuse`, shared by the calls of one
    stage (same `conf`), keeps each checkpoint's judged samples, so a policy compared twice is sampled once."""
    cfg, rt, tr = conf.eval, ctx.rt, ctx.tracker
    cand_dir, base_dir = path(candidate or cfg.candidate), path(baseline or cfg.baseline)
    default_run = out is None
    out_dir = path(out or "reports/eval")
    tok = ChatTokenizer.load(cand_dir)
    ref = load_model(path(cfg.reference), "gpt").to(rt.device).eval()
    df = read_prompts(path("data/prepared/prompts_eval.jsonl"))
    df = df.iloc[: cfg.n_prompts] if cfg.n_prompts else df
    prompts, ids = df["prompt"].tolist(), df["id"].astype(str).tolist()
    families = dict(zip(ids, df["family"], strict=True)) if "family" in df.columns else None
    judges = judges_for(conf.judge, tok, rt)
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    memo = {} if reuse is None else reuse
    kl = None
    with rt.autocast():
        for d in (cand_dir, base_dir):
            if d not in memo:  # one checkpoint, prompts, decoding and seed: the same samples, so sampled once
                model = load_model(d, "gpt").to(rt.device)
                memo[d] = sample_policy(model, tok, prompts, ids, sampling, cfg.n_samples, cfg.seed, ref)
                judge_samples(memo[d], judges)
                if d == cand_dir:
                    kl = kl_at_temperature_one(model, tok, ref, prompts, ids, cfg)
        if kl is None:  # the candidate's samples came from an earlier comparison; its KL did not
            kl = kl_at_temperature_one(load_model(cand_dir, "gpt").to(rt.device), tok, ref, prompts, ids, cfg)
        policies = {"candidate": memo[cand_dir], "baseline": memo[base_dir]}
        curve = overoptimization(cfg, tok, ref, judges, prompts, ids, rt) if default_run else []
    cand, base = policies["candidate"], policies["baseline"]
    results = {j: compare(cand, base, j, families, cfg.n_boot, cfg.seed) for j in judges}
    metrics = summary(cand, base, results, kl)
    if conf.content is not None:  # the headline: how many answers are right, and answer what was asked
        metrics["content"] = {name: conf.content(s.prompts, s.responses) for name, s in policies.items()}
    if curve:
        write_csv(path("plots/overoptimization.csv"), curve)
        plot_overoptimization(curve, path("plots/overoptimization.png"))
    side_by_side = [
        {
            "prompt": p,
            "candidate": c,
            "baseline": b,
            **{f"{j}_{k}": float(s.scores[j][i]) for j in judges for k, s in (("candidate", cand), ("baseline", base))},
        }
        for i, (p, c, b) in enumerate(zip(cand.prompts, cand.responses, base.responses, strict=True))
    ]
    write_jsonl(out_dir / "samples.jsonl", side_by_side)
    write_json(out_dir / "results.json", {"results": results, "curve": curve})
    write_report(out_dir / "report.md", metrics, results, side_by_side, curve, cand_dir, base_dir)
    prefix = "eval" if default_run else f"eval/{Path(out_dir).name}"
    tr.log_metrics(_flat(prefix, metrics), 0)
    # the report with its plots, links resolving inside the artifact view (and an HTML copy MLflow renders)
    log_report_bundle(tr, out_dir, [path(p) for _, p in PLOTS], "report" if default_run else Path(out_dir).name)
    write_json(path("metrics/eval.json") if default_run else out_dir / "eval.json", metrics)
    return metrics


def _flat(prefix: str, d: dict) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(f"{prefix}/{k}", v)
        elif isinstance(v, (int, float)) and np.isfinite(v):
            out[f"{prefix}/{k}"] = float(v)
    return out


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--candidate", default=None, help="checkpoint dir (default: evaluate.candidate)")
    parser.add_argument("--baseline", default=None, help="checkpoint dir (default: evaluate.baseline)")
    parser.add_argument("--out", default=None, help="output dir for a non-default comparison")


main = entry("tasks.evaluate", __doc__, run, ddp=False, add_args=_args)


if __name__ == "__main__":
    main()
