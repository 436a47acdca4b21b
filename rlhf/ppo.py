"""The pure math of PPO for language models: masked statistics, KL-shaped rewards, GAE, losses, KL control.

No models, no optimiser, no I/O: every function maps tensors to tensors so it can be tested against a plain
reference (a loop, float64, the spec's worked numbers). The training loop lives elsewhere.

Shapes (the project's legend, ARCHITECTURE.md):
    B  batch (number of responses)
    T  response tokens (the response part only; padding after EOS is on the right)
    V  vocabulary size
`mask` is (B, T), 1.0/True on valid response tokens (up to and including EOS), 0.0/False on the padding
after it. Float and bool masks are both accepted. Padding entries never influence a result, even NaN or inf.

Vocabulary follows TRL / lm-human-preference-details: logprobs, ref_logprobs, values, rewards, advantages,
returns, pg_loss, vf_loss, pg_clipfrac, vf_clipfrac, approxkl. Spec = shared/spec/rlhf-ppo-mathematics.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from rlhf.padding import last_valid_index

KL_ESTIMATORS = ("k1", "k3")


# ----------------------------------------------------------------------------------------------------------
# Masked statistics (TRL's masked_mean / masked_var / masked_whiten, made robust to garbage in padding)
# ----------------------------------------------------------------------------------------------------------


def _bool_mask(mask: Tensor, x: Tensor) -> Tensor:
    """Return `mask` as a bool tensor broadcast to `x`'s shape; raise if the shapes cannot match."""
    try:
        return mask.bool().expand_as(x)
    except RuntimeError as e:
        shapes = f"{tuple(mask.shape)} vs {tuple(x.shape)}"
        raise ValueError(f"mask does not fit the tensor it masks: {shapes}") from e


Reduce = Callable[[Tensor], Tensor]
"""Sums a float64 tensor over every process (DDP: rlhf.distributed.all_reduce_sum); None in one process."""


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None, reduce: Reduce | None = None) -> Tensor:
    """Mean of `x` over entries where `mask` is set; (B, T) -> () or, with `dim`, reduced along `dim`.

    Uses `where` rather than `x * mask` so NaN/inf in padding cannot leak in (0 * inf = NaN). An empty
    selection gives 0 (TRL gives NaN): an all-padding row then adds nothing instead of poisoning a loss.
    With `reduce` the mean is over every process's valid entries (one float64 all-reduce of sum and count).
    """
    m = _bool_mask(mask, x)
    x_valid = torch.where(m, x, torch.zeros_like(x))
    if reduce is not None:
        if dim is not None:
            raise ValueError("masked_mean: a reduction over processes is of the whole tensor (dim=None)")
        total = reduce(torch.stack([x_valid.sum().double(), m.sum().double()]))
        return (total[0] / total[1].clamp(min=1)).to(x.dtype)
    if dim is None:
        return x_valid.sum() / m.sum().clamp(min=1)
    return x_valid.sum(dim) / m.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True, reduce: Reduce | None = None) -> Tensor:
    """Variance of `x` over the valid entries (of every process, with `reduce`); (B, T) -> ().

    Unbiased (Bessel-corrected, divides by n - 1) by default, as TRL's `masked_var`; OpenAI's TensorFlow
    lm-human-preferences used the biased one. They differ by a factor n / (n - 1), negligible at batch scale.
    """
    m = _bool_mask(mask, x)
    n = int(m.sum()) if reduce is None else int(reduce(m.sum().double()))
    if n == 0 or (unbiased and n == 1):
        raise ValueError(
            f"masked_var needs at least {2 if unbiased else 1} valid entries, got {n}: "
            "check the mask (is every response empty?) or use a larger batch"
        )
    centered = x - masked_mean(x, m, reduce=reduce)
    var = masked_mean(centered**2, m, reduce=reduce)
    return var * (n / (n - 1)) if unbiased else var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, reduce: Reduce | None = None) -> Tensor:
    """Normalise `x` to mean 0, (unbiased) variance 1 over valid entries; (B, T) -> (B, T), 0 on padding.

    With `shift_mean=False` the original mean is kept (only the scale changes), as TRL does for rewards.
    The 1e-8 under the square root is TRL's; unlike TRL we zero padding here rather than in the caller.
    """
    m = _bool_mask(mask, x)
    mean, var = masked_mean(x, m, reduce=reduce), masked_var(x, m, reduce=reduce)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(m, whitened, torch.zeros_like(whitened))


# ----------------------------------------------------------------------------------------------------------
# Log-probabilities and entropy from logits
# ----------------------------------------------------------------------------------------------------------


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """Log-probability of each sampled token; logits (B, T, V), tokens (B, T) -> (B, T).

    One row at a time (TRL's `selective_log_softmax`): the peak extra memory is one (T, V) log_softmax instead
    of a second (B, T, V) tensor. Divide logits by the sampling temperature *before* calling this, both in the
    rollout and in training, or the first PPO ratio is not 1 (ppo-details.md).
    """
    rows = [
        torch.log_softmax(row_logits, dim=-1).gather(-1, row_tokens.unsqueeze(-1)).squeeze(-1)  # (T,)
        for row_logits, row_tokens in zip(logits, tokens, strict=True)
    ]
    return torch.stack(rows)  # (B, T)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the next-token distribution, S = -sum_a p log p (spec section 12); (B, T, V) -> (B, T).

    Row by row for memory, like `logprobs_from_logits`. Log-probs are clamped to the dtype's finite minimum so
    a logit of -inf (a banned token, p = 0) contributes 0 instead of 0 * -inf = NaN.
    """
    rows = []
    for row_logits in logits:  # (T, V)
        logp = torch.log_softmax(row_logits, dim=-1).clamp(min=torch.finfo(row_logits.dtype).min)
        rows.append(-(logp.exp() * logp).sum(-1))  # (T,)
    return torch.stack(rows)  # (B, T)


# ----------------------------------------------------------------------------------------------------------
# KL-penalised rewards (spec section 8)
# ----------------------------------------------------------------------------------------------------------


def per_token_kl(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token KL(policy || reference) estimate on the sampled token; all (B, T) -> (B, T), 0 on padding.

    k1 = logp - ref_logp (spec section 8): unbiased, but a single token's estimate can be negative.
    k3 = (e^r - 1) - r with r = ref_logp - logp (Schulman's "Approximating KL divergence"): unbiased too,
    never negative and lower variance; expm1 keeps it accurate near r = 0.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown kl_estimator {estimator!r}; choose one of {KL_ESTIMATORS}")
    m = _bool_mask(mask, logprobs)
    log_ratio = torch.where(m, logprobs - ref_logprobs, 0.0)  # garbage in padding cannot reach expm1
    kl = log_ratio if estimator == "k1" else torch.expm1(-log_ratio) + log_ratio
    return torch.where(m, kl, torch.zeros_like(kl))


def kl_penalized_rewards(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    beta: float,
    kl_estimator: str = "k1",
) -> Tensor:
    """Augmented per-token rewards R_aug(t) = -beta * KL_t + [t is last] * score (spec section 8).

    scores (B,); logprobs, ref_logprobs, mask (B, T) -> rewards (B, T), exactly 0 on padding.
    The score lands on the LAST VALID response token of each row (the EOS when there is one), as in the spec
    and OpenRLHF; TRL puts it on the first pad slot after EOS, a placement its own users dispute (TRL issues
    #1893, #3750). A row with no valid token gets no score: there is no action to credit it to.
    """
    if scores.shape != logprobs.shape[:1]:
        raise ValueError(f"scores must be (B,) = {tuple(logprobs.shape[:1])}, got {tuple(scores.shape)}")
    rewards = -beta * per_token_kl(logprobs, ref_logprobs, mask, kl_estimator)  # (B, T)
    last = last_valid_index(mask)  # (B,)
    has_token = last >= 0
    score_at_last = torch.where(has_token, scores.to(rewards.dtype), 0.0)  # (B,)
    index = last.clamp(min=0).unsqueeze(1)  # (B, 1); an empty row writes its 0 at position 0
    score_tokens = torch.zeros_like(rewards).scatter(1, index, score_at_last.unsqueeze(1))  # (B, T)
    return rewards + score_tokens


# ----------------------------------------------------------------------------------------------------------
# Generalised advantage estimation (spec section 9)
# ----------------------------------------------------------------------------------------------------------


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """GAE advantages and returns; rewards, values, mask (B, T) -> (advantages, returns), both (B, T).

    delta_t = r_t + gamma * V_{t+1} - V_t, with V = 0 after the last valid token (the episode has ended);
    A_t = delta_t + gamma * lam * A_{t+1}; returns = A + V are the value targets (spec section 12: "A_t + V").
    Both are exactly 0 on padding. No whitening here: whiten the advantages afterwards (`masked_whiten`) but
    keep `returns` from the raw ones, as TRL does. Assumes right padding (valid tokens are a prefix of a row).
    One backward Python loop over T, vectorised over B (as TRL, OpenRLHF and CleanRL).
    """
    m = _bool_mask(mask, rewards)
    zero = torch.zeros_like(rewards)
    rewards, values = torch.where(m, rewards, zero), torch.where(m, values, zero)  # V = 0 past the end
    advantages = torch.zeros_like(rewards)  # (B, T)
    last_gae = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in reversed(range(rewards.shape[1])):
        next_values = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last_gae = torch.where(m[:, t], delta + gamma * lam * last_gae, 0.0)  # A = 0 on padding
        advantages[:, t] = last_gae
    return advantages, advantages + values


# ----------------------------------------------------------------------------------------------------------
# Losses (spec sections 10 and 12)
# ----------------------------------------------------------------------------------------------------------


def _masked_max(x: Tensor, mask: Tensor) -> float:
    m = _bool_mask(mask, x)
    return float(x[m].max()) if bool(m.any()) else float("nan")


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate loss (spec section 10); all inputs (B, T) -> (loss (), stats).

    loss = masked_mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps))), r = exp(logp - old_logp), which equals
    the spec's -min(r * A, clip(r) * A) averaged over valid tokens only (its sketch takes a plain mean).
    Stats: pg_clipfrac = fraction of valid tokens where the clipped term strictly won (TRL's `>`), i.e. where
    the gradient is cut; approxkl = 0.5 * mean((logp - old_logp)^2) (TRL / lm-human-preferences); ratio_mean,
    ratio_max over valid tokens (nan when there are none).
    """
    m = _bool_mask(mask, logprobs)
    # 0 on padding before the exp: garbage there could overflow to inf and turn the gradients into NaN
    log_ratio = torch.where(m, logprobs - old_logprobs, 0.0)
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(pg_losses, pg_losses_clipped), m)
    with torch.no_grad():
        stats = {
            "pg_clipfrac": float(masked_mean((pg_losses_clipped > pg_losses).to(ratio.dtype), m)),
            "approxkl": float(0.5 * masked_mean(log_ratio**2, m)),
            "ratio_mean": float(masked_mean(ratio, m)),
            "ratio_max": _masked_max(ratio, m),
        }
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float | None
) -> tuple[Tensor, dict[str, float]]:
    """Value-function loss; values (new), old_values (rollout), returns, mask, all (B, T) -> (loss, stats).

    Clipped (TRL, OpenRLHF): 0.5 * masked_mean(max((v - R)^2, (clip(v, v_old - c, v_old + c) - R)^2)).
    Unclipped (`clip_range=None`): 0.5 * masked_mean((v - R)^2). The spec's section 12 MSE has no 0.5; we keep
    TRL's 0.5 (its gradient is v - R), which only rescales vf_coef. vf_clipfrac: where the clipped term won.
    """
    m = _bool_mask(mask, values)
    vf_losses = (values - returns) ** 2
    if clip_range is None:
        return 0.5 * masked_mean(vf_losses, m), {"vf_clipfrac": 0.0}
    values_clipped = torch.clamp(values, old_values - clip_range, old_values + clip_range)
    vf_losses_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(vf_losses, vf_losses_clipped), m)
    with torch.no_grad():
        clipfrac = float(masked_mean((vf_losses_clipped > vf_losses).to(values.dtype), m))
    return loss, {"vf_clipfrac": clipfrac}


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor, reduce: Reduce | None = None) -> float:
    """1 - Var(R - V) / Var(R) over valid tokens; 1 is a perfect critic, 0 no better than a constant.

    nan when the returns have no variance (CleanRL's convention). values, returns, mask (B, T) -> float.
    """
    with torch.no_grad():
        var_returns = masked_var(returns, mask, unbiased=False, reduce=reduce)
        if float(var_returns) == 0.0:
            return float("nan")
        return float(1.0 - masked_var(returns - values, mask, unbiased=False, reduce=reduce) / var_returns)


def total_loss(pg_loss: Tensor, vf_loss: Tensor, entropy: Tensor, vf_coef: float, ent_coef: float) -> Tensor:
    """The minimised PPO loss: pg_loss + vf_coef * vf_loss - ent_coef * entropy; all scalars -> scalar.

    The spec's section 12/13 writes L_Policy - c1 * L_Value + c2 * S. That sign pattern is of an objective to
    *maximise*; handed to a minimiser it would make the critic worse and push entropy down. Minimising, the
    value error is added and the entropy bonus subtracted. `entropy` is the masked mean of
    `entropy_from_logits`.
    """
    return pg_loss + vf_coef * vf_loss - ent_coef * entropy


# ----------------------------------------------------------------------------------------------------------
# KL coefficient controllers (Ziegler et al. 2019, lm-human-preferences)
# ----------------------------------------------------------------------------------------------------------


class FixedKLController:
    """A constant KL coefficient beta."""

    def __init__(self, beta: float):
        if beta < 0:
            raise ValueError(f"KL coefficient beta must be >= 0, got {beta}")
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient is fixed."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller steering the measured KL towards `target` (Ziegler et al. 2019).

    e = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + e * n_steps / horizon), with n_steps the
    episodes in the batch. One update moves beta by at most 20% * n_steps / horizon. lm-human-preferences
    defaults: init 0.15, target 6 nats, horizon 10000. `current_kl` is the sequence KL (sum over valid
    tokens), averaged over the batch.
    """

    def __init__(self, init_beta: float, target: float, horizon: float):
        if init_beta < 0 or target <= 0 or horizon <= 0:
            raise ValueError(
                f"AdaptiveKLController needs init_beta >= 0, target > 0, horizon > 0; "
                f"got init_beta={init_beta}, target={target}, horizon={horizon}"
            )
        self.value, self.target, self.horizon = float(init_beta), float(target), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        if not math.isfinite(current_kl):
            raise ValueError(f"current_kl must be finite, got {current_kl}: the policy has likely diverged")
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore beta; refuse a checkpoint of another target/horizon (it would not resume identically)."""
        if (float(state["target"]), float(state["horizon"])) != (self.target, self.horizon):
            raise ValueError(
                f"KL controller checkpoint has target={state['target']}, horizon={state['horizon']} but this "
                f"run has target={self.target}, horizon={self.horizon}: restore that config or start afresh"
            )
        self.value = float(state["value"])
