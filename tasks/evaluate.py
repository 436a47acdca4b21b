"""Stage `evaluate`: win-rates of a candidate over a baseline on held-out prompts, the over-optimisation curve,
and a report a person can read.

Default comparison: the PPO actor against SFT. Any two checkpoints can be compared:
    python -m tasks.evaluate --candidate DIR --baseline DIR --out DIR
(the retraining flow uses this to pit a challenger against the registered champion).
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlhf.checkpoint import load_model, read_config
from rlhf.data import read_prompts
from rlhf.evaluation import PolicySamples, compare, judge_samples, sample_policy
from rlhf.generate import SamplingConfig
from rlhf.io import write_json, write_jsonl
from rlhf.judges import RewardModelJudge, load_judge
from rlhf.tokenizer import ChatTokenizer
from tasks import tracking
from tasks.common import build_dataclass, load_params, path, stage_main
from tasks.plots import plot_overoptimization, write_csv
from tasks.report import write_report


@dataclass(frozen=True)
class EvalParams:
    candidate: str = "models/ppo/actor"
    """checkpoint under test"""
    baseline: str = "models/sft"
    """checkpoint it is compared with"""
    reference: str = "models/sft"
    """the KL reference"""
    n_prompts: int = 200
    """evaluation prompts used (0: all)"""
    n_samples: int = 2
    """samples per prompt and policy"""
    temperature: float = 0.7
    """decoding temperature, the same for both policies"""
    max_new_tokens: int = 48
    """longest response"""
    n_boot: int = 1000
    """bootstrap resamples of prompts for the 95% CI"""
    curve_prompts: int = 100
    """prompts per snapshot on the over-optimisation curve (0: no curve)"""
    seed: int = 0
    """sampling and bootstrap seed"""


def judges_for(params: dict, tok: ChatTokenizer) -> dict:
    rm_dir = path("models/reward_model")
    rm_cfg = read_config(rm_dir)
    rm = RewardModelJudge(
        load_model(rm_dir, "scalar"), tok, rm_cfg.get("reward_mean", 0.0), rm_cfg.get("reward_std", 1.0)
    )
    spec = params.get("judge", {}).get("gold", "none")
    return {"rm": rm, **({"gold": load_judge(spec)} if spec != "none" else {})}


# KL is reported at temperature 1: the policies as PPO trained them and as its penalty measured them (spec
# section 8). The evaluation temperature sharpens both policies, which changes their KL (6.25 against 5.41 nats on
# one run), so that figure is reported beside it as `kl_eval_temperature`, never in its place.
KL_TEMPERATURE = 1.0


def kl_at_temperature_one(model, tok, ref, prompts, ids, cfg: EvalParams) -> float:
    """Mean KL per response of `model` from `ref` on samples of its own at temperature 1 (one per prompt)."""
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=KL_TEMPERATURE)
    return float(sample_policy(model, tok, prompts, ids, sampling, 1, cfg.seed + 1, ref).kl.mean())


def overoptimization(cfg: EvalParams, tok, ref, judges, prompts, ids) -> list[dict]:
    """Gold and RM score vs sqrt(KL) of each PPO snapshot, each relative to the first (the SFT start). Sampled at
    temperature 1, as PPO trained them, so the x-axis is the KL the penalty controlled (Gao et al.'s curve)."""
    snaps = sorted(path("models/ppo/snapshots").glob("iter_*")) if cfg.curve_prompts else []
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=KL_TEMPERATURE)
    rows = []
    for snap in snaps:
        s = sample_policy(
            load_model(snap, "gpt"),
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
    cfg = build_dataclass(EvalParams, params["evaluate"], "params.yaml:evaluate")
    cand_dir, base_dir = path(candidate or cfg.candidate), path(baseline or cfg.baseline)
    default_run = out is None
    out_dir = path(out or "reports/eval")
    tok = ChatTokenizer.load(cand_dir)
    ref = load_model(path(cfg.reference), "gpt").eval()
    df = read_prompts(path("data/prepared/prompts_eval.jsonl"))
    df = df.iloc[: cfg.n_prompts] if cfg.n_prompts else df
    prompts, ids = df["prompt"].tolist(), df["id"].astype(str).tolist()
    families = dict(zip(ids, df["family"], strict=True)) if "family" in df.columns else None
    judges = judges_for(params, tok)
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    with tracking.stage_run("evaluate", {"evaluate": params["evaluate"]}) as tr:
        policies = {}
        for name, d in (("candidate", cand_dir), ("baseline", base_dir)):
            model = load_model(d, "gpt")
            policies[name] = sample_policy(model, tok, prompts, ids, sampling, cfg.n_samples, cfg.seed, ref)
            judge_samples(policies[name], judges)
            if name == "candidate":
                kl = kl_at_temperature_one(model, tok, ref, prompts, ids, cfg)
        cand, base = policies["candidate"], policies["baseline"]
        results = {j: compare(cand, base, j, families, cfg.n_boot, cfg.seed) for j in judges}
        metrics = summary(cand, base, results, kl)
        curve = overoptimization(cfg, tok, ref, judges, prompts, ids) if default_run else []
        if curve:
            write_csv(path("plots/overoptimization.csv"), curve)
            plot_overoptimization(curve, path("plots/overoptimization.png"))
        side_by_side = [
            {
                "prompt": p,
                "candidate": c,
                "baseline": b,
                **{
                    f"{j}_{k}": float(s.scores[j][i])
                    for j in judges
                    for k, s in (("candidate", cand), ("baseline", base))
                },
            }
            for i, (p, c, b) in enumerate(zip(cand.prompts, cand.responses, base.responses, strict=True))
        ]
        write_jsonl(out_dir / "samples.jsonl", side_by_side)
        write_json(out_dir / "results.json", {"results": results, "curve": curve})
        write_report(out_dir / "report.md", metrics, results, side_by_side, curve, cand_dir, base_dir)
        tr.log_metrics(_flat("eval", metrics), 0)
        tr.log_artifact(out_dir / "report.md")
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


@stage_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=None)
    parser.add_argument("--candidate", default=None, help="checkpoint dir (default: evaluate.candidate)")
    parser.add_argument("--baseline", default=None, help="checkpoint dir (default: evaluate.baseline)")
    parser.add_argument("--out", default=None, help="output dir for a non-default comparison")
    args = parser.parse_args()
    if args.params:
        os.environ["RLHF_PARAMS"] = str(args.params.resolve())
    m = run(load_params(), args.candidate, args.baseline, args.out)
    print({k: m[k] for k in ("gold", "rm", "kl") if k in m})


if __name__ == "__main__":
    main()
