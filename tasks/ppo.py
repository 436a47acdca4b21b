"""Stage `ppo`: align the SFT model against the reward model with PPO (rlhf.ppo_trainer), then measure it.

The reward source is the trained reward model or, with `ppo.reward` set to an import path "module:function", any
judge of (prompts, responses) — the same interface evaluation uses. Either is normalised (the spec's reward
scaling) by the mean and std of its scores on the SFT policy's own rollouts of the probe prompts, measured at the
start through the very code that scores PPO's rollouts (`rlhf.ppo_trainer.reward_statistics`).
The gold judge is watched during training for monitoring only; it never enters the loss. Actor snapshots saved
along training feed the evaluation's over-optimisation curve.

With `runtime.nproc_per_node` > 1 (or under torchrun) every rank rolls out its share of each iteration's prompts
and DDP averages the gradients (rlhf.ppo_trainer); rank 0 alone probes the policies and writes.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass

import numpy as np
import torch

from rlhf import distributed
from rlhf.checkpoint import fingerprint, load_model, read_config, resumable_meta, write_model
from rlhf.data import read_prompts
from rlhf.device import Runtime, freeze
from rlhf.evaluation import judge_samples, sample_policy
from rlhf.generate import SamplingConfig
from rlhf.io import atomic_dir
from rlhf.judges import Judge, RewardModelJudge, load_judge
from rlhf.lora import LoRAConfig, ppo_models, save_stage_model, servable, set_gradient_checkpointing
from rlhf.model import GPT, ScalarHeadModel, normalise_head
from rlhf.ppo_run import RunOptions, train_ppo
from rlhf.ppo_trainer import PPOConfig, PPOState, ScoreFn, check_batch_sizes, make_state, reward_statistics
from rlhf.rollout import reward_model_scores
from rlhf.tokenizer import ChatTokenizer
from tasks import tracking
from tasks.common import ParamError, Params, RuntimeParams, path, resume_inputs, with_lora, write_metrics
from tasks.judge import gold_judge
from tasks.plots import plot_curves, write_csv
from tasks.stage import entry, lifecycle

STATE = "state/ppo"


@dataclass(frozen=True, kw_only=True)
class PPOParams(PPOConfig):
    reward: str
    """"reward_model", or a judge's import path "module:function" scoring (prompts, responses)"""
    critic_init: str
    """"reward_model" (TRL's choice) or "sft" (the spec's: SFT body with a fresh zero head)"""
    checkpoint_every: int
    """iterations between resumable checkpoints"""
    snapshot_every: int
    """actor snapshots for the over-optimisation curve at iterations 1, 2, 4, ... below it, then every this many,
    and the last (0: none; rlhf.ppo_run.snapshot_due)"""
    probe_prompts: int
    """PPO prompts on which the reward is normalised and the SFT start and the final actor are measured"""


def raw_score_fn(spec: str, rm: ScalarHeadModel, tok: ChatTokenizer) -> ScoreFn:
    """The reward source as a function of a rollout -> raw score (B,), before PPO's normalisation."""
    if spec == "reward_model":
        return lambda ro: reward_model_scores(rm, ro)
    judge = load_judge(spec)
    return lambda ro: torch.tensor(judge(ro.prompts, ro.texts(tok)))


def normalised(score_fn: ScoreFn, mean: float, std: float) -> ScoreFn:
    return lambda ro: (score_fn(ro) - mean) / std


def make_critic(cfg: PPOParams, actor: GPT, rm: ScalarHeadModel, mean: float, std: float) -> ScalarHeadModel:
    """The critic: the reward model with PPO's normalisation folded into its head, so that its first values are
    in the reward's units (TRL starts from the raw RM and pays for it with a first iteration of large value
    losses); with a judge as the reward the RM's head knows nothing of the judge's scale, so it starts at zero.
    With critic_init "sft": the SFT body with a zero head (the spec's choice)."""
    if cfg.critic_init == "sft":
        return ScalarHeadModel.from_lm(actor, head_std=0.0)
    critic = copy.deepcopy(rm).train().requires_grad_(True)
    if cfg.reward == "reward_model":
        return normalise_head(critic, mean, std)
    with torch.no_grad():
        critic.head.weight.zero_()
        critic.head.bias.zero_()
    return critic


def ppo_inputs(params: dict, lora: LoRAConfig) -> dict:
    """What a PPO checkpoint must have been started from to be resumed: all of `ppo` (reward spec and critic
    init included), the gold judge's spec, the SFT and reward-model weights (and the RM's normalisation), the
    prompts."""
    files = ["models/sft/model.safetensors", "models/reward_model/model.safetensors"]
    files += ["models/reward_model/config.json", "data/prepared/prompts_ppo.jsonl"]
    read = {"ppo": params["ppo"], "judge.gold": params.get("judge", {}).get("gold", "none")}
    return resume_inputs(with_lora(read, lora), files)


def probe(actor, ref, tok, prompts, cfg: PPOParams, judges, rt: Runtime) -> dict[str, float]:
    """RM score, gold score, KL and length of a policy on a fixed prompt set (same seed for every policy)."""
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    with rt.autocast():
        ids = [str(i) for i in range(len(prompts))]
        s = sample_policy(actor, tok, prompts, ids, sampling, 1, cfg.seed + 7, ref, progress=None)  # a probe: quiet
        judge_samples(s, judges)
    return {
        "kl": float(s.kl.mean()),
        "length": float(s.lengths.mean()),
        **{f"{k}_score": float(v.mean()) for k, v in s.scores.items()},
    }


def load_models(rt: Runtime, lora: LoRAConfig) -> tuple[GPT, GPT | None, ScalarHeadModel]:
    """Actor (learning), reference and reward model (frozen), on the runtime's device. With LoRA there is no
    reference to load: it is the actor with its adapter off (`trained_models`)."""
    actor = load_model(path("models/sft"), "gpt").to(rt.device)
    ref = None if lora.enabled else freeze(load_model(path("models/sft"), "gpt").to(rt.device))
    rm = freeze(load_model(path("models/reward_model"), "scalar").to(rt.device).eval())
    return actor, ref, rm


def trained_models(
    conf: Config, actor: GPT, ref: GPT | None, rm: ScalarHeadModel, mean: float, std: float, rt: Runtime
) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """(actor, reference, critic, reward model) as PPO trains and reads them. With LoRA (rlhf.lora.ppo_models):
    the actor an adapter on the SFT body and the reference that body with the adapter off; the critic an
    adapter + value head on the reward model's body and the reward that body with the critic's adapter off, so
    the reward must be read through the returned model, never the `rm` passed in (which now carries the critic)."""
    cfg, lora = conf.ppo, conf.lora
    if lora.enabled:
        norm = (mean, std) if cfg.reward == "reward_model" else (None, None)  # a judge: the value head at zero
        actor, ref, critic, rm = ppo_models(actor, rm, lora, *norm, seed=cfg.seed)
        critic.train()  # as make_critic's copy (dropout is off in both all the same: make_state)
    else:
        critic = make_critic(cfg, actor, rm, mean, std).to(rt.device)
    for model in (actor, critic):
        set_gradient_checkpointing(model, conf.runtime.gradient_checkpointing)
    return actor, ref, critic, rm


@dataclass(frozen=True)
class Config:
    ppo: PPOParams
    """the core's PPOConfig and what the stage adds (reward source, critic init, checkpoints, probes)"""
    judge: Judge | None
    runtime: RuntimeParams
    lora: LoRAConfig


def configure(p: Params) -> Config:
    conf = Config(p.section("ppo", PPOParams), gold_judge(p), p.runtime(), p.lora())
    if conf.lora.enabled and conf.ppo.critic_init == "sft":
        # A critic on the SFT body would need a third frozen body (a copy of SFT's: the actor's adapter cannot be
        # on while the critic's is, on one module), which is the memory LoRA is there to save.
        raise ParamError(
            "params.yaml: ppo.critic_init 'sft' needs model.lora.r = 0; with LoRA the critic is an adapter and value "
            "head on the reward model's frozen body (ppo.critic_init: reward_model)"
        )
    return conf


def run(params: dict) -> dict:
    p = Params(params)
    conf = configure(p)
    cfg, gold = conf.ppo, conf.judge
    prompts = read_prompts(path("data/prepared/prompts_ppo.jsonl"))["prompt"].tolist()
    # Before any model loads: a batch the prompts or the processes cannot fill evenly is an error now.
    try:
        check_batch_sizes(cfg, len(prompts), int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError as e:
        raise ParamError(f"params.yaml:ppo: {e}") from e
    tok = ChatTokenizer.load(path("models/sft"))
    inputs = ppo_inputs(params, conf.lora)
    # Refused before anything loads or an MLflow run opens: a checkpoint of other inputs is an error to act on.
    resumable_meta(path(STATE) / "checkpoint", fingerprint(cfg, inputs), path(STATE))
    with lifecycle("ppo", p, conf.runtime, state_dir=path(STATE)) as ctx:
        rt, tr = ctx.rt, ctx.tracker
        actor, ref, rm = load_models(rt, conf.lora)
        probe_set = prompts[: cfg.probe_prompts]
        mean, std = reward_statistics(actor, raw_score_fn(cfg.reward, rm, tok), tok, probe_set, cfg, rt)
        actor, ref, critic, rm = trained_models(conf, actor, ref, rm, mean, std, rt)
        raw_fn = raw_score_fn(cfg.reward, rm, tok)  # with LoRA, `rm` is now the critic's body, adapter off
        rm_cfg = read_config(path("models/reward_model"))
        rm_norm = (
            (mean, std)
            if cfg.reward == "reward_model"
            else (rm_cfg.get("reward_mean", 0.0), rm_cfg.get("reward_std", 1.0))
        )
        judges = {"rm": RewardModelJudge(rm, tok, *rm_norm), **({"gold": gold} if gold else {})}
        start = probe(actor, ref, tok, probe_set, cfg, judges, rt) if ctx.is_main else {}
        torch.manual_seed(distributed.rank_seed(cfg.seed))
        state = make_state(actor, critic, cfg, runtime=rt)
        run_opts = RunOptions(
            checkpoint=path(STATE) / "checkpoint",
            checkpoint_every=cfg.checkpoint_every,
            gold=gold,
            on_snapshot=_snapshot,
            snapshot_every=cfg.snapshot_every,
            inputs=inputs,
            start_over=path(STATE),
        )
        history = train_ppo(state, ref, normalised(raw_fn, mean, std), tok, prompts, cfg, tr.log_metrics, run_opts)
        ctx.sync_peak_memory()
        if not ctx.is_main:
            return {}  # rank 0 probes, reports and writes
        end = probe(state.actor, ref, tok, probe_set, cfg, judges, rt)
        metrics = {
            "kl": end["kl"],
            "rm_score": end["rm_score"],
            "gold_score": end.get("gold_score"),
            "length": end["length"],
            "sft_rm_score": start["rm_score"],
            "sft_gold_score": start.get("gold_score"),
            "sft_length": start["length"],
            "reward_mean": mean,
            "reward_std": std,
            "iterations": len(history),
            "seconds_per_iteration": float(np.mean([h["time/iteration"] for h in history])),
            **ctx.cost(ctx.seconds()),
        }
        _write_outputs(state, history, tr, cfg.reward)
        write_metrics("ppo", metrics)
    return metrics


def _snapshot(state: PPOState) -> None:
    """An actor checkpoint along training (rank 0 only: the core calls it there)."""
    with atomic_dir(path(STATE) / "snapshots" / f"iter_{state.iteration:04d}") as tmp:
        write_model(tmp, servable(state.actor), path("models/sft/tokenizer.json"), {"iteration": state.iteration})


def _write_outputs(state: PPOState, history: list[dict[str, float]], tr: tracking.Tracker, reward: str) -> None:
    """The training curves (CSV, PNG) and models/ppo: actor, critic (merged, with LoRA, and each with its
    adapter/) and the snapshots."""
    rows = [{"iteration": i + 1, **h} for i, h in enumerate(history)]
    write_csv(path("plots/ppo_curves.csv"), rows)
    keys = [
        ("objective/rm_score", f"reward: {'reward model' if reward == 'reward_model' else reward} (normalised)"),
        ("objective/kl", "KL per response"),
        ("objective/gold_score", "gold score (monitor)"),
        ("ppo/mean_response_length", "length"),
        ("ppo/policy/entropy", "entropy"),
        ("ppo/policy/pg_clipfrac", "pg_clipfrac"),
    ]
    plot_curves(rows, [k for k in keys if k[0] in rows[0]], path("plots/ppo_curves.png"), "PPO training")
    tr.log_artifact(path("plots/ppo_curves.png"))
    snapshots = path(STATE) / "snapshots"
    with atomic_dir(path("models/ppo")) as tmp:
        for name, model, base in (
            ("actor", state.actor, "models/sft"),
            ("critic", state.critic, "models/reward_model"),
        ):
            save_stage_model(tmp / name, model, path("models/sft/tokenizer.json"), path(base), base, stage="ppo")
        if snapshots.exists():
            shutil.copytree(snapshots, tmp / "snapshots")


main = entry("tasks.ppo", __doc__, run)


if __name__ == "__main__":
    main()
