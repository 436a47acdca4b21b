"""PPO math against the spec's worked numbers (sections 8-10) and against plain float64 reference loops."""

import json
import math

import pytest
import torch

from rlhf.ppo import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_penalized_rewards,
    last_valid_index,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    per_token_kl,
    policy_loss,
    total_loss,
    value_loss,
)

# The spec's running example, "very, very, sleepy" (sections 8 and 9).
SPEC_LOGPROBS = torch.tensor([[-0.9, -2.5, -0.5]], dtype=torch.float64)
SPEC_REF_LOGPROBS = torch.tensor([[-1.5, -1.0, -0.5]], dtype=torch.float64)
SPEC_VALUES = torch.tensor([[3.0, 3.5, 4.0]], dtype=torch.float64)


def random_batch(seed: int, B: int = 9, T: int = 7):
    """Random right-padded batch with lengths covering 0 and T; padding is filled with garbage on purpose."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0], lengths[1] = 0, T
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T) bool
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    return lengths, mask, rewards, values


# --- spec worked numbers -----------------------------------------------------------------------------------


def test_spec_section8_augmented_rewards():
    rewards = kl_penalized_rewards(torch.tensor([5.0]), SPEC_LOGPROBS, SPEC_REF_LOGPROBS, torch.ones(1, 3), 0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.06, 0.15, 5.00]], dtype=torch.float64))


def test_spec_section9_gae_advantages_from_section8_rewards():
    rewards = kl_penalized_rewards(torch.tensor([5.0]), SPEC_LOGPROBS, SPEC_REF_LOGPROBS, torch.ones(1, 3), 0.1)
    advantages, returns = gae(rewards, SPEC_VALUES, torch.ones(1, 3), gamma=0.9, lam=0.8)
    assert [round(a, 2) for a in advantages[0].tolist()] == [0.79, 0.97, 1.00]
    torch.testing.assert_close(returns, advantages + SPEC_VALUES)


@pytest.mark.parametrize(
    ("advantage", "ratio", "expected_loss", "clipped"),
    [
        (2.0, 1.1, -2.2, False),  # A) good action, safe update
        (2.0, 1.5, -2.4, True),  # B) good action, aggressive update: the governor kicks in
        (-2.0, 0.9, 1.8, False),  # C) bad action, safe update
        (-2.0, 0.5, 1.6, True),  # D) bad action, aggressive update
    ],
)
def test_spec_section10_clipping_table(advantage, ratio, expected_loss, clipped):
    logprobs = torch.tensor([[math.log(ratio)]], dtype=torch.float64)
    loss, stats = policy_loss(
        logprobs, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([[advantage]]), torch.ones(1, 1), 0.2
    )
    assert loss.item() == pytest.approx(expected_loss)
    assert stats["pg_clipfrac"] == (1.0 if clipped else 0.0)


def test_spec_section10_table_as_one_batch():
    logprobs = torch.log(torch.tensor([[1.1, 1.5, 0.9, 0.5]], dtype=torch.float64))
    advantages = torch.tensor([[2.0, 2.0, -2.0, -2.0]], dtype=torch.float64)
    loss, stats = policy_loss(logprobs, torch.zeros_like(logprobs), advantages, torch.ones(1, 4), 0.2)
    assert loss.item() == pytest.approx((-2.2 - 2.4 + 1.8 + 1.6) / 4)
    assert stats["pg_clipfrac"] == 0.5
    assert stats["ratio_max"] == pytest.approx(1.5)
    assert stats["ratio_mean"] == pytest.approx(1.0)


# --- KL and reward placement -------------------------------------------------------------------------------


def test_k1_matches_spec_and_k3_is_nonnegative():
    kl = per_token_kl(SPEC_LOGPROBS, SPEC_REF_LOGPROBS, torch.ones(1, 3), "k1")
    torch.testing.assert_close(kl, torch.tensor([[0.6, -1.5, 0.0]], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    for scale in (1e-6, 1e-2, 1.0, 10.0):
        logp, ref = scale * torch.randn(64, 50, generator=g), scale * torch.randn(64, 50, generator=g)
        assert (per_token_kl(logp, ref, torch.ones(64, 50), "k3") >= 0).all()
    with pytest.raises(ValueError, match="kl_estimator"):
        per_token_kl(logp, ref, torch.ones(64, 50), "k2")


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_score_lands_on_last_valid_token_and_padding_is_zero(estimator):
    lengths, mask, logp, ref = random_batch(seed=1)
    logp[~mask], ref[~mask] = float("nan"), float("inf")  # garbage in padding must not leak
    scores = torch.randn(len(lengths), dtype=torch.float64)
    rewards = kl_penalized_rewards(scores, logp, ref, mask.float(), beta=0.05, kl_estimator=estimator)
    score_part = rewards + 0.05 * per_token_kl(logp, ref, mask, estimator)
    assert (rewards[~mask] == 0).all()
    for b, n in enumerate(lengths.tolist()):
        expected = torch.zeros(mask.shape[1], dtype=torch.float64)
        if n > 0:  # a row with no valid token gets no score
            expected[n - 1] = scores[b]
        torch.testing.assert_close(score_part[b], expected)
    assert last_valid_index(mask).tolist() == [n - 1 for n in lengths.tolist()]


# --- GAE ---------------------------------------------------------------------------------------------------


def reference_gae(rewards, values, lengths, gamma, lam):
    """A plain reversed loop per row, in Python floats."""
    advantages = torch.zeros_like(rewards)
    for b, n in enumerate(lengths.tolist()):
        last = 0.0
        for t in reversed(range(n)):
            next_value = values[b, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            last = delta + gamma * lam * last
            advantages[b, t] = last
    return advantages


@pytest.mark.parametrize("seed", range(5))
def test_gae_equals_reference_loop(seed):
    lengths, mask, rewards, values = random_batch(seed, B=12, T=9)
    g = torch.Generator().manual_seed(100 + seed)
    gamma, lam = torch.rand(2, generator=g, dtype=torch.float64).tolist()
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    expected = reference_gae(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(advantages, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(returns, torch.where(mask, expected + values, 0.0), rtol=1e-12, atol=1e-12)
    assert (advantages[~mask] == 0).all() and (returns[~mask] == 0).all()


def test_gae_ignores_padding_contents():
    _, mask, rewards, values = random_batch(seed=7)
    a1, r1 = gae(rewards, values, mask, 1.0, 0.95)
    rewards[~mask], values[~mask] = 1e6, -1e6
    a2, r2 = gae(rewards, values, mask, 1.0, 0.95)
    assert torch.equal(a1, a2) and torch.equal(r1, r2)  # same shapes, same kernels: masked cells never enter


# --- masked statistics -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_masked_mean_var_match_valid_subset(seed):
    _, mask, x, _ = random_batch(seed)
    assert masked_mean(x, mask).item() == pytest.approx(x[mask].mean().item())
    assert masked_var(x, mask).item() == pytest.approx(x[mask].var(unbiased=True).item())
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(x[mask].var(unbiased=False).item())
    row_means = masked_mean(x, mask.float(), dim=1)
    for b in range(x.shape[0]):
        expected = x[b][mask[b]].mean().item() if mask[b].any() else 0.0  # empty row -> 0, not NaN
        assert row_means[b].item() == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_masked_whiten_properties(seed):
    _, mask, x, _ = random_batch(seed)
    x = 3.0 + 5.0 * x
    white = masked_whiten(x, mask)
    assert masked_mean(white, mask).item() == pytest.approx(0.0, abs=1e-9)
    assert masked_var(white, mask).item() == pytest.approx(1.0, abs=1e-6)
    assert (white[~mask] == 0).all()
    x_garbage = x.clone()
    x_garbage[~mask] = float("nan")
    assert torch.equal(masked_whiten(x_garbage, mask), white)
    kept = masked_whiten(x, mask, shift_mean=False)
    assert masked_mean(kept, mask).item() == pytest.approx(masked_mean(x, mask).item())


def test_masked_var_needs_two_entries():
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(torch.ones(1, 3), torch.tensor([[1.0, 0.0, 0.0]]))


# --- log-probs and entropy ---------------------------------------------------------------------------------


def test_logprobs_and_entropy_match_categorical():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    tokens = torch.randint(0, 11, (3, 5), generator=g)
    dist = torch.distributions.Categorical(logits=logits)
    torch.testing.assert_close(logprobs_from_logits(logits, tokens), dist.log_prob(tokens))
    torch.testing.assert_close(entropy_from_logits(logits), dist.entropy())
    logits[..., :3] = float("-inf")  # banned tokens: entropy stays finite
    assert torch.isfinite(entropy_from_logits(logits)).all()


# --- policy loss -------------------------------------------------------------------------------------------


def test_policy_loss_at_ratio_one():
    _, mask, advantages, logp = random_batch(seed=3)
    loss, stats = policy_loss(logp, logp.clone(), advantages, mask, 0.2)
    assert stats["approxkl"] == 0.0 and stats["pg_clipfrac"] == 0.0
    assert stats["ratio_mean"] == 1.0 and stats["ratio_max"] == 1.0
    assert loss.item() == pytest.approx(-masked_mean(advantages, mask).item())


@pytest.mark.parametrize(
    ("advantage", "ratio", "grad_sign"),
    [
        (1.0, 1.1, -1),  # inside the corridor: descent raises logp of a good action
        (-1.0, 0.9, +1),  # inside: descent lowers logp of a bad action
        (1.0, 1.5, 0),  # good action already up-weighted past 1 + eps: no more push
        (-1.0, 0.5, 0),  # bad action already down-weighted past 1 - eps: no more push
        (-1.0, 1.5, +1),  # bad action up-weighted: unclipped term wins, still pushed back
        (1.0, 0.5, -1),  # good action down-weighted: still pushed up
    ],
)
def test_policy_loss_gradient_signs(advantage, ratio, grad_sign):
    logp = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    loss, _ = policy_loss(
        logp, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([[advantage]]), torch.ones(1, 1), 0.2
    )
    loss.backward()
    assert torch.sign(logp.grad).item() == grad_sign


def test_policy_loss_padding_gives_no_nan_and_no_gradient():
    _, mask, advantages, old = random_batch(seed=4)
    logp = old.clone() + 0.1
    logp[~mask] = 1e4  # exp(1e4) overflows if padding were not masked before the exp
    logp.requires_grad_(True)
    loss, _ = policy_loss(logp, old, advantages, mask, 0.2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert (logp.grad[~mask] == 0).all()


# --- value loss, explained variance, total loss ------------------------------------------------------------


def test_value_loss_clipping_equivalences():
    _, mask, returns, old_values = random_batch(seed=5)
    values = old_values + 0.5 * torch.randn_like(old_values)
    plain, plain_stats = value_loss(values, old_values, returns, mask, None)
    assert plain.item() == pytest.approx(0.5 * ((values - returns)[mask] ** 2).mean().item())
    assert plain_stats["vf_clipfrac"] == 0.0
    huge, huge_stats = value_loss(values, old_values, returns, mask, 1e9)  # a clip that never binds
    assert huge.item() == pytest.approx(plain.item()) and huge_stats["vf_clipfrac"] == 0.0
    same, same_stats = value_loss(old_values, old_values, returns, mask, 0.2)  # v == v_old: clip is a no-op
    assert same.item() == pytest.approx(value_loss(old_values, old_values, returns, mask, None)[0].item())
    assert same_stats["vf_clipfrac"] == 0.0
    clipped, _ = value_loss(values, old_values, returns, mask, 0.2)
    assert clipped.item() >= plain.item()  # max of two squared errors can only be larger


def test_value_loss_hand_values():
    ones, zeros = torch.ones(1, 1), torch.zeros(1, 1)
    # v moved 0 -> 1 towards R = 1: clip(v) = 0.2, (0.2 - 1)^2 = 0.64 beats (1 - 1)^2 = 0 -> clipped
    loss, stats = value_loss(ones, zeros, ones, ones, 0.2)
    assert loss.item() == pytest.approx(0.32) and stats["vf_clipfrac"] == 1.0
    # v moved 0 -> 1 away from R = 0: (1 - 0)^2 = 1 beats (0.2 - 0)^2 -> unclipped term kept
    loss, stats = value_loss(ones, zeros, zeros, ones, 0.2)
    assert loss.item() == pytest.approx(0.5) and stats["vf_clipfrac"] == 0.0


def test_explained_variance():
    _, mask, returns, _ = random_batch(seed=6)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros_like(returns), returns, mask) == pytest.approx(0.0, abs=1e-6)
    constant = torch.full_like(returns, 2.0)
    assert math.isnan(explained_variance(constant, constant, mask))


def test_total_loss_signs():
    pg, vf, ent = torch.tensor(0.3), torch.tensor(2.0), torch.tensor(4.0)
    assert total_loss(pg, vf, ent, vf_coef=0.1, ent_coef=0.01).item() == pytest.approx(0.3 + 0.2 - 0.04)
    # minimising must lower the value error and raise the entropy: d/d vf > 0, d/d entropy < 0
    vf.requires_grad_(True)
    ent.requires_grad_(True)
    total_loss(pg, vf, ent, 0.1, 0.01).backward()
    assert vf.grad.item() > 0 and ent.grad.item() < 0


# --- KL controllers ----------------------------------------------------------------------------------------


def test_adaptive_kl_controller_direction_and_bounds():
    ctl = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10_000)
    ctl.update(current_kl=7.0, n_steps=64)
    assert ctl.value > 0.1
    ctl = AdaptiveKLController(0.1, 6.0, 10_000)
    ctl.update(current_kl=5.0, n_steps=64)
    assert ctl.value < 0.1
    ctl = AdaptiveKLController(0.1, 6.0, 10_000)
    ctl.update(current_kl=1e6, n_steps=64)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 64 / 10_000))
    ctl = AdaptiveKLController(0.1, 6.0, 10_000)
    ctl.update(current_kl=0.0, n_steps=64)  # error clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * (1 - 0.2 * 64 / 10_000))
    ctl.update(current_kl=6.0, n_steps=64)  # on target: unchanged
    assert ctl.value == pytest.approx(0.1 * (1 - 0.2 * 64 / 10_000))


def test_kl_controllers_state_round_trip():
    kls = [3.0, 9.0, 6.5, 0.1, 12.0, 5.9]
    straight = AdaptiveKLController(0.15, 6.0, 1000)
    for kl in kls:
        straight.update(kl, 32)
    first = AdaptiveKLController(0.15, 6.0, 1000)
    for kl in kls[:3]:
        first.update(kl, 32)
    state = json.loads(json.dumps(first.state_dict()))  # plain floats survive a JSON checkpoint
    assert all(type(v) is float for v in state.values())
    resumed = AdaptiveKLController(0.15, 6.0, 1000)
    resumed.load_state_dict(state)
    for kl in kls[3:]:
        resumed.update(kl, 32)
    assert resumed.value == straight.value  # bit-identical continuation
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.15, 3.0, 1000).load_state_dict(state)
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 32)
    other = FixedKLController(1.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == fixed.value == 0.05
