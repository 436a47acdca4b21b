"""The PPO loop of the spec (section 13) with the details that keep it stable (../guides/ppo-details.md).

Four models: the actor (learning, initialised from SFT), the critic (learning; SFT body or reward model with a
scalar head), the reference (frozen SFT) and the reward source (frozen reward model, or any judge). One iteration:
  1. rollout     sample responses with the KV cache from the actor as it is (π_old); mask after EOS
  2. score       normalised reward of each full response; penalty for responses that never emit EOS
  3. reward      per-token KL estimate vs the reference, R_aug(t) = -β·KL(t) (+ score on the last token)
  4. advantage   critic values, GAE over valid tokens, returns = A + V, advantages whitened over valid tokens
  5. learn       E epochs × minibatches of clipped policy loss + value loss − entropy bonus, clipped grads
  6. KL control  fixed β, or Ziegler et al.'s adaptive controller
Shapes (the project's legend, ARCHITECTURE.md): B rollouts, T response tokens.

Under torchrun (`rlhf.distributed`) each rank rolls out its own contiguous share of the iteration's prompts with
its own sampling seed, the frozen models score its share, advantages are whitened with the mean and variance of
every rank's tokens, and the metrics (KL included, which drives the controller) are reduced across ranks. In
learning each rank shuffles its own rollouts into minibatches of batch_size / (W · mini_batches) and DDP averages
the gradients, each rank's loss weighted by its share of the minibatch's tokens; with one minibatch per epoch a
step is then exactly the step one process takes on the whole batch. With several minibatches the global
minibatches are unions of per-rank shuffles, not the single process's shuffle: the same distribution of
minibatches, other draws.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rlhf import distributed
from rlhf.device import CPU, Runtime
from rlhf.generate import SamplingConfig
from rlhf.model import GPT, ScalarHeadModel, disable_dropout
from rlhf.ppo import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    kl_penalized_rewards,
    masked_mean,
    masked_whiten,
    per_token_kl,
    policy_loss,
    total_loss,
    value_loss,
)
from rlhf.rollout import Rollout, has_eos, policy_forward, sample_rollout, value_forward
from rlhf.tokenizer import ChatTokenizer

LogFn = Callable[[dict[str, float], int], None]
ScoreFn = Callable[[Rollout], torch.Tensor]  # raw reward (B,) of a rollout


@dataclass(frozen=True, kw_only=True)
class PPOConfig:
    iterations: int = 16
    """rollout + learning rounds"""
    batch_size: int = 64
    """rollouts per iteration"""
    mini_batches: int = 2
    """minibatches per epoch (batch_size must divide evenly)"""
    ppo_epochs: int = 4
    """passes over each static batch"""
    lr: float
    """actor learning rate (annealed linearly to 0 over the run)"""
    critic_lr: float
    """critic learning rate (annealed likewise)"""
    max_new_tokens: int
    """longest response"""
    temperature: float = 1.0
    """rollout temperature; training divides logits by the same value"""
    kl_coef: float = 0.1
    """β, the initial value when adaptive"""
    adaptive_kl: bool = False
    """Ziegler et al.'s controller instead of a fixed β"""
    kl_target: float = 6.0
    """target KL per response (adaptive only)"""
    kl_horizon: int = 10000
    """controller horizon in episodes (adaptive only)"""
    kl_estimator: str = "k1"
    """per-token KL estimate in the reward: k1 = logp − ref_logp (the spec's) or k3"""
    cliprange: float = 0.2
    """ε of the clipped policy loss"""
    cliprange_value: float | None = 0.2
    """value clipping around the rollout's values (None: off)"""
    vf_coef: float = 0.1
    """weight of the value loss"""
    ent_coef: float = 0.01
    """weight of the entropy bonus"""
    gamma: float = 1.0
    """discount"""
    lam: float = 0.95
    """GAE λ"""
    missing_eos_penalty: float = 1.0
    """subtracted from the normalised score of a response that never emits EOS (0: off)"""
    grad_clip: float = 1.0
    """max gradient norm of actor and critic"""
    seed: int = 0
    """prompt order and sampling"""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            # Greedy rollouts have no log-probs to take a ratio of: logits / 0 makes every loss NaN.
            raise ValueError(f"ppo.temperature must be above 0 (sampling), got {self.temperature}")
        check_batch_sizes(self)
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"ppo.kl_estimator must be 'k1' or 'k3', got '{self.kl_estimator}'")


def check_batch_sizes(cfg: PPOConfig, n_prompts: int | None = None, world_size: int = 1) -> None:
    """Fail loudly, with the numbers, where a batch would silently shrink or split unevenly (lm-human's
    `exact_div`): more rollouts than prompts, a batch that the processes or the minibatches do not divide."""
    if cfg.batch_size < 1 or cfg.mini_batches < 1:
        raise ValueError(f"ppo.batch_size ({cfg.batch_size}) and ppo.mini_batches ({cfg.mini_batches}) must be >= 1")
    if n_prompts is not None and n_prompts < cfg.batch_size:
        raise ValueError(
            f"ppo.batch_size {cfg.batch_size} needs at least that many PPO prompts, but there are {n_prompts}: "
            "lower batch_size or add prompts"
        )
    if cfg.batch_size % world_size:
        raise ValueError(f"ppo.batch_size {cfg.batch_size} does not split evenly over {world_size} processes")
    local = cfg.batch_size // world_size
    if local % cfg.mini_batches:
        raise ValueError(
            f"ppo.batch_size {cfg.batch_size} over {world_size} process(es) is {local} rollouts each, which "
            f"mini_batches {cfg.mini_batches} does not divide: make batch_size a multiple of both"
        )


@dataclass
class PPOState:
    """Everything that changes during training: what a checkpoint must hold for an identical resume."""

    actor: GPT
    critic: ScalarHeadModel
    optimizer: torch.optim.Optimizer
    kl_ctl: FixedKLController | AdaptiveKLController
    iteration: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    runtime: Runtime = CPU
    """device and precision of the forward passes"""
    train_actor: torch.nn.Module | None = None
    """what the training forward of the actor goes through: its DDP wrapper under torchrun (None: the actor)"""
    train_critic: torch.nn.Module | None = None
    """likewise for the critic"""


def make_state(actor: GPT, critic: ScalarHeadModel, cfg: PPOConfig, runtime: Runtime = CPU) -> PPOState:
    """Optimizer and KL controller for actor and critic (on their device); DDP wrappers when distributed.
    Dropout is switched off in both, whatever their checkpoints say (see `disable_dropout`)."""
    check_batch_sizes(cfg, world_size=distributed.world_size())
    disable_dropout(actor)
    disable_dropout(critic)
    # Only what requires grad: with LoRA (rlhf.lora) the frozen bodies carry no optimizer state.
    trainable = [[p for p in m.parameters() if p.requires_grad] for m in (actor, critic)]
    groups = [
        {"params": trainable[0], "lr": cfg.lr, "initial_lr": cfg.lr},
        {"params": trainable[1], "lr": cfg.critic_lr, "initial_lr": cfg.critic_lr},
    ]
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=0.0, eps=1e-5, fused=True)
    kl_ctl = (
        AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        if cfg.adaptive_kl
        else FixedKLController(cfg.kl_coef)
    )
    train_actor, train_critic = distributed.wrap(actor), distributed.wrap(critic)
    return PPOState(actor, critic, opt, kl_ctl, runtime=runtime, train_actor=train_actor, train_critic=train_critic)


def _generator(seed: int, iteration: int, device: torch.device | None = None) -> torch.Generator:
    # Sampling on a GPU needs a generator of that device; everything else draws on the CPU.
    return torch.Generator(device=device or "cpu").manual_seed(seed * 1_000_003 + iteration)


def iteration_prompts(prompts: list[str], cfg: PPOConfig, iteration: int) -> list[str]:
    """The batch of one iteration: a seeded pass order over the prompt set, a pure function of the iteration."""
    per_pass = max(1, len(prompts) // cfg.batch_size)
    epoch, k = divmod(iteration, per_pass)
    order = torch.randperm(len(prompts), generator=_generator(cfg.seed, -1 - epoch)).tolist()
    take = order[k * cfg.batch_size : (k + 1) * cfg.batch_size]
    return [prompts[i] for i in (take if len(take) == cfg.batch_size else order[: cfg.batch_size])]


@torch.no_grad()
def make_experience(
    state: PPOState, ref: GPT, score_fn: ScoreFn, tok: ChatTokenizer, prompts: list[str], cfg: PPOConfig
) -> tuple[Rollout, dict[str, float]]:
    """Steps 1–4 on this rank's `prompts`: rollout, score, KL-penalised rewards, advantages.

    Returns the static batch and its stats (reduced over ranks: the same on every rank).
    """
    timings: dict[str, float] = {}
    reduce = distributed.reducer()  # under DDP the masked statistics are over every rank's tokens
    # 1. rollout: this rank's prompts, sampled by the current policy at the rollout temperature
    t = time.perf_counter()
    device, amp = next(state.actor.parameters()).device, state.runtime.autocast
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    gen = _generator(distributed.rank_seed(cfg.seed), state.iteration, device)  # each rank samples its own
    with amp():
        ro = sample_rollout(state.actor, tok, prompts, sampling, gen)
    timings["time/rollout"] = time.perf_counter() - t
    # 2. score: normalised reward, minus the penalty for never emitting EOS. The frozen models run in inference
    # mode; clone() turns their outputs into ordinary tensors that autograd may meet later.
    t = time.perf_counter()
    with torch.inference_mode(), amp():
        raw_scores = score_fn(ro)
    ro.raw_scores = raw_scores.float().to(device).clone()
    eos = has_eos(ro, tok.eos_id)
    ro.scores = ro.raw_scores - cfg.missing_eos_penalty * (~eos).float()
    # forward passes of π_old, π_ref and the critic over the same sequences
    with amp():
        ro.logprobs, _ = policy_forward(state.actor, ro, cfg.temperature)
        with torch.inference_mode():
            ref_logprobs, _ = policy_forward(ref, ro, cfg.temperature)
        ro.values = value_forward(state.critic.eval(), ro)  # learn() puts it back in train mode
    ro.ref_logprobs = ref_logprobs.clone()
    timings["time/score_and_forward"] = time.perf_counter() - t
    # 3. augmented rewards R_aug(t) = -β·KL(t) + score on the last valid token (spec section 8)
    beta = state.kl_ctl.value
    ro.rewards = kl_penalized_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, ro.mask, beta, cfg.kl_estimator)
    # 4. advantages over valid tokens only; returns from the raw advantages; then whiten (TRL's order)
    advantages, ro.returns = gae(ro.rewards, ro.values * ro.mask, ro.mask, cfg.gamma, cfg.lam)
    ro.advantages = masked_whiten(advantages, ro.mask, reduce=reduce)  # mean, variance over every rank's tokens
    kl_tokens = per_token_kl(ro.logprobs, ro.ref_logprobs, ro.mask, "k1")
    # Per-rollout means reduce exactly (equal shares); token means are global already.
    stats = {
        "objective/rm_score": float(ro.raw_scores.mean()),
        "objective/score": float(ro.scores.mean()),
        "objective/kl": float(kl_tokens.sum(1).mean()),  # per response: sum over its tokens
        "objective/kl_coef": beta,
        "objective/non_eos_frac": float((~eos).float().mean()),
        "ppo/mean_response_length": float(ro.mask.sum(1).mean()),
        "ppo/returns_mean": float(masked_mean(ro.returns, ro.mask, reduce=reduce)),
        "ppo/val/values_mean": float(masked_mean(ro.values, ro.mask, reduce=reduce)),
        **timings,
    }
    return ro, distributed.all_reduce_mean(stats)


@torch.no_grad()
def reward_statistics(
    actor: GPT, score_fn: ScoreFn, tok: ChatTokenizer, prompts: list[str], cfg: PPOConfig, runtime: Runtime = CPU
) -> tuple[float, float]:
    """Mean and std of the reward source's raw score on rollouts of the starting policy, for the spec's reward
    scaling. Sampled and scored exactly as PPO's rollouts are (same temperature, length, EOS handling and
    `score_fn` on raw ids), so the normalised reward has mean 0 and std 1 where PPO starts. Under torchrun each
    rank scores its share of `prompts` and the sums are reduced."""
    device = next(actor.parameters()).device
    gen = _generator(distributed.rank_seed(cfg.seed), -(10**6), device)
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    mine = prompts[distributed.split_slice(len(prompts))]  # uneven shares are fine: sums are reduced
    scores = [torch.zeros(0, dtype=torch.float64)]
    for start in range(0, len(mine), cfg.batch_size):
        with runtime.autocast():
            ro = sample_rollout(actor, tok, mine[start : start + cfg.batch_size], sampling, gen)
            scores.append(score_fn(ro).double().cpu())
    s = torch.cat(scores)
    n, total, squares = distributed.all_reduce_sum(torch.stack([torch.tensor(float(len(s))), s.sum(), (s * s).sum()]))
    mean = float(total / n)
    std = math.sqrt(max(float(squares / n) - mean * mean, 0.0))
    return mean, (std if std > 1e-8 else 1.0)


def learn(state: PPOState, ro: Rollout, cfg: PPOConfig, lr_frac: float) -> dict[str, float]:
    """Step 5: PPO epochs over this rank's static batch; returns the mean of each statistic over minibatches.

    Every minibatch loss is weighted by the rank's share of the minibatch's tokens (`distributed.token_share`, 1 in
    one process), and so are its token-mean statistics: their mean over ranks is then the global token mean.
    """
    for group in state.optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lr_frac  # linear anneal to 0 (N-implementation-details)
    state.actor.train()
    state.critic.train()
    actor = state.actor if state.train_actor is None else state.train_actor
    critic = state.critic if state.train_critic is None else state.train_critic
    n = ro.responses.shape[0]  # this rank's rollouts: batch_size / W
    mb_size = n // cfg.mini_batches
    g = _generator(cfg.seed, 10**6 + state.iteration)
    sums: dict[str, float] = {}
    count, ratio_max, first_approxkl = 0, 0.0, float("nan")
    for epoch in range(cfg.ppo_epochs):
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, mb_size):
            mb = ro.select(perm[start : start + mb_size])
            share = distributed.token_share(mb.mask.sum())
            with state.runtime.autocast():
                mb_logprobs, mb_entropy = policy_forward(actor, mb, cfg.temperature, with_entropy=True)
                mb_vpred = value_forward(critic, mb)
            pg_loss, pg_stats = policy_loss(mb_logprobs, mb.logprobs, mb.advantages, mb.mask, cfg.cliprange)
            vf_loss, vf_stats = value_loss(mb_vpred, mb.values, mb.returns, mb.mask, cfg.cliprange_value)
            entropy = masked_mean(mb_entropy, mb.mask)
            loss = total_loss(pg_loss, vf_loss, entropy, cfg.vf_coef, cfg.ent_coef)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"PPO iteration {state.iteration + 1}, epoch {epoch + 1}: loss is {loss.item()} "
                    f"(policy {pg_loss.item()}, value {vf_loss.item()}); stopped before any checkpoint"
                )
            state.optimizer.zero_grad(set_to_none=True)
            (loss * share).backward()
            torch.nn.utils.clip_grad_norm_(state.actor.parameters(), cfg.grad_clip)
            torch.nn.utils.clip_grad_norm_(state.critic.parameters(), cfg.grad_clip)
            state.optimizer.step()
            mb_stats = {
                "ppo/policy/pg_loss": pg_loss.item(),
                "ppo/val/vf_loss": vf_loss.item(),
                "ppo/policy/entropy": entropy.item(),
                "ppo/loss/total": loss.item(),
                **{f"ppo/policy/{k}": v for k, v in pg_stats.items()},
                **{f"ppo/val/{k}": v for k, v in vf_stats.items()},
            }
            if epoch == 0 and start == 0:  # the check that rollout and training log-probs agree
                first_approxkl = pg_stats["approxkl"] * share
            ratio_max = max(ratio_max, pg_stats.pop("ratio_max"))
            for k, v in mb_stats.items():
                sums[k] = sums.get(k, 0.0) + v * share
            count += 1
    out = distributed.all_reduce_mean({k: v / count for k, v in sums.items()} | {"first_approxkl": first_approxkl})
    first_approxkl = out.pop("first_approxkl")
    ratio_max = distributed.all_reduce_max(ratio_max)
    return out | {"ppo/policy/ratio_max": ratio_max, "ppo/policy/first_approxkl": first_approxkl}


def check_finite(state: PPOState) -> None:
    """A NaN or Inf in the weights stops the run before any checkpoint is overwritten. Only trained weights can
    turn: frozen ones (LoRA's bodies) are skipped, which also spares a bool copy of each of them."""
    for name, model in (("actor", state.actor), ("critic", state.critic)):
        for pname, p in model.named_parameters():
            if p.requires_grad and not torch.isfinite(p).all():
                raise FloatingPointError(
                    f"PPO iteration {state.iteration}: non-finite values in {name}.{pname}; "
                    "the last good checkpoint was left untouched"
                )


def ppo_iteration(
    state: PPOState, ref: GPT, score_fn: ScoreFn, tok: ChatTokenizer, prompts: list[str], cfg: PPOConfig
) -> tuple[Rollout, dict[str, float]]:
    """One full iteration (steps 1–6); updates `state` in place and returns this rank's rollout and the metrics."""
    t0 = time.perf_counter()
    batch = distributed.shard(iteration_prompts(prompts, cfg, state.iteration))  # this rank's prompts
    ro, stats = make_experience(state, ref, score_fn, tok, batch, cfg)
    # 5. learning: ppo_epochs passes of clipped policy and value losses over minibatches of the static batch
    t = time.perf_counter()
    stats |= learn(state, ro, cfg, lr_frac=1.0 - state.iteration / cfg.iterations)
    stats["time/update"] = time.perf_counter() - t
    with torch.no_grad():
        stats["ppo/val/explained_var"] = explained_variance(ro.values, ro.returns, ro.mask, distributed.reducer())
    # 6. KL control: the controller sees the mean KL per response of this batch
    state.kl_ctl.update(stats["objective/kl"], cfg.batch_size)
    state.iteration += 1
    check_finite(state)
    stats["time/iteration"] = time.perf_counter() - t0
    return ro, {k: v for k, v in stats.items() if not math.isnan(v)}
