"""DPO: the loss on worked numbers, its value at initialisation, masking of prompt and padding, learning a
separable toy preference, resume and the NaN halt."""

import copy
import math

import pytest
import torch

from rlhf.dpo import (
    DPOConfig,
    batch_plan,
    dpo_loss,
    evaluate_dpo,
    grouped_logps,
    reference_logps,
    response_logps,
    sequence_logps,
    train_dpo,
)
from rlhf.lm_data import sft_batch
from rlhf.model import GPT
from rlhf.reward import Pairs

# Two pairs, beta = 0.5. logits = (pi_c - pi_r) - (ref_c - ref_r) = (1 - 0, -2 - 0) = (1, -2); beta * logits =
# (0.5, -1). Sigmoid: -log s(0.5) = log(1 + e^-0.5) = 0.474077, -log s(-1) = log(1 + e) = 1.313262, mean 0.893669.
# Implicit rewards 0.5 * (pi - ref): chosen (0.25, -0.5), rejected (-0.25, 0.5); margins (0.5, -1.0).
PC, PR = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
RC, RR = torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0])


def test_sigmoid_loss_on_a_worked_example():
    loss, st = dpo_loss(PC, PR, RC, RR, beta=0.5)
    assert loss.item() == pytest.approx((0.474077 + 1.313262) / 2, abs=1e-6)
    assert st["chosen_reward"] == pytest.approx((0.25 - 0.5) / 2)
    assert st["rejected_reward"] == pytest.approx((-0.25 + 0.5) / 2)
    assert st["margin"] == pytest.approx((0.5 - 1.0) / 2)
    assert st["accuracy"] == 0.5


def test_label_smoothing_and_ipo_on_the_worked_example():
    # eps = 0.1: 0.9 * 0.474077 + 0.1 * (-log s(-0.5) = 0.974077) and 0.9 * 1.313262 + 0.1 * (-log s(1) = 0.313262)
    loss, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)
    assert loss.item() == pytest.approx((0.524077 + 1.213262) / 2, abs=1e-6)
    # IPO: target 1 / (2 beta) = 1; (1 - 1)^2 = 0 and (-2 - 1)^2 = 9
    loss, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="ipo")
    assert loss.item() == pytest.approx(4.5)


def test_at_initialisation_loss_is_log2_and_rewards_are_zero():
    g = torch.Generator().manual_seed(0)
    chosen, rejected = -10 * torch.rand(64, generator=g), -10 * torch.rand(64, generator=g)
    loss, st = dpo_loss(chosen, rejected, chosen.clone(), rejected.clone(), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert st["chosen_reward"] == st["rejected_reward"] == st["margin"] == 0.0


DPO_REQUIRED = {"steps": 10, "lr": 1e-5, "eval_every": 5, "patience": 2, "checkpoint_every": 0}


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="hinge")
    with pytest.raises(ValueError, match="loss_type"):
        DPOConfig(**DPO_REQUIRED, loss_type="kto")
    with pytest.raises(ValueError, match="beta"):
        DPOConfig(**DPO_REQUIRED, beta=0.0)


def test_prompt_and_padding_positions_do_not_count():
    seqs, n_prompt = [[2, 5, 6, 3, 9, 10, 1], [2, 8, 3, 11, 1]], [4, 3]
    _, y = sft_batch(seqs, n_prompt, pad_id=0)
    g = torch.Generator().manual_seed(1)
    token_logps = -torch.rand(y.shape, generator=g)
    total, count = response_logps(token_logps, y)
    assert count.tolist() == [3, 2]  # 9, 10, EOS / 11, EOS
    # Any change of the log-probs at prompt or padding targets leaves the sums, hence the loss, unchanged.
    noisy = torch.where(y == -100, token_logps - 100 * torch.rand(y.shape, generator=g), token_logps)
    assert torch.equal(response_logps(noisy, y)[0], total)
    loss = dpo_loss(total[:1], total[1:], torch.zeros(1), torch.zeros(1), 0.1)[0]
    noisy_total = response_logps(noisy, y)[0]
    assert torch.equal(dpo_loss(noisy_total[:1], noisy_total[1:], torch.zeros(1), torch.zeros(1), 0.1)[0], loss)


def test_appending_padding_does_not_change_a_sequence_logp(tiny_cfg):
    torch.manual_seed(0)
    model = GPT(tiny_cfg).eval()
    seq, longer = [2, 5, 6, 3, 9, 10, 1], [2, 8, 3, *range(10, 40), 1]
    with torch.no_grad():
        alone = sequence_logps(model, [seq], [4], pad_id=0)
        padded = sequence_logps(model, [seq, longer], [4, 3], pad_id=0)  # seq now carries 27 pads
    assert torch.allclose(alone[0], padded[0], atol=1e-5)
    # the per-token mean divides by the 3 response targets (9, 10, EOS)
    with torch.no_grad():
        mean = sequence_logps(model, [seq], [4], pad_id=0, average=True)
    assert torch.allclose(mean * 3, alone, atol=1e-5)


@pytest.mark.parametrize("average", [False, True])
def test_reference_pass_scores_each_distinct_response_once_and_matches_pair_by_pair(tiny_cfg, average):
    """Ranked data: each prompt's K responses make K(K-1)/2 pairs. The pass scores the distinct sequences only,
    in another batch layout than pair by pair, so the values agree to float tolerance."""
    torch.manual_seed(0)
    model = GPT(tiny_cfg).eval()
    g = torch.Generator().manual_seed(3)

    def tokens(lo: int, hi: int) -> list[int]:
        return torch.randint(10, 60, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    pairs = Pairs([], [])
    for _ in range(5):  # 5 prompts x 4 responses of random lengths = 30 pairs over 20 distinct sequences
        head = [2, *tokens(2, 9), 3]
        resp = [[*tokens(1, 12), 1] for _ in range(4)]
        for a in range(4):
            for b in range(a + 1, 4):
                pairs.chosen.append(head + resp[a])
                pairs.rejected.append(head + resp[b])
                pairs.n_prompt.append(len(head))
    idx = [7, 0, 29, 3, 3, 12]  # any order, repeats allowed
    calls = []
    original = model.forward
    model.forward = lambda x, *a, **k: calls.append(len(x)) or original(x, *a, **k)
    got = reference_logps(model, pairs, idx, pad_id=0, average=average, batch_size=4)
    distinct = {tuple(s) for i in idx for s in (pairs.chosen[i], pairs.rejected[i])}
    assert sum(calls) == len(distinct) < 2 * len(idx)
    model.forward = original
    with torch.no_grad():  # pair by pair: both sides of each pair, duplicates and all
        sides = [pairs.chosen[i] for i in idx] + [pairs.rejected[i] for i in idx]
        each = sequence_logps(model, sides, [pairs.n_prompt[i] for i in idx] * 2, pad_id=0, average=average)
        grouped = torch.stack(grouped_logps(model, pairs, idx, pad_id=0, average=average), 1)
    assert got.shape == grouped.shape == (len(idx), 2)
    assert torch.allclose(got, torch.stack(each.split(len(idx)), 1), atol=1e-5)
    assert torch.allclose(grouped, got, atol=1e-5)
    assert reference_logps(model, pairs, [], pad_id=0).shape == (0, 2)


def test_a_step_takes_whole_prompts_and_an_epoch_every_pair_once():
    groups = [[0, 1, 2], [3], [4, 5], [6, 7, 8, 9], [10], [11, 12]]
    cfg = DPOConfig(steps=10, batch_size=4, lr=1e-5, eval_every=5, patience=2, checkpoint_every=0, seed=3)
    steps = batch_plan(groups, cfg)
    assert len(steps) == cfg.steps and steps == batch_plan(groups, cfg)  # the same batches again (resume)
    epoch, seen = [], 0
    for step in steps:
        assert len(step) >= cfg.batch_size
        # every prompt of the step is there whole, its pairs together
        assert all(any(step[i : i + len(g)] == g for i in range(len(step))) for g in groups if g[0] in step)
        epoch += step
        if len(epoch) >= 13:  # the steps of one epoch cover every pair once
            assert sorted(epoch) == list(range(13))
            epoch, seen = [], seen + 1
    assert seen >= 2 and steps[: len(steps) // 2] != steps[len(steps) // 2 :]


def toy_pairs(n: int, seed: int) -> Pairs:
    """Prompts of random tokens; the chosen answer is `7 7 7`, the rejected `9 9 9` (then EOS = 1)."""
    g = torch.Generator().manual_seed(seed)
    out = Pairs([], [])
    for _ in range(n):
        head = [2, *torch.randint(10, 60, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist(), 3]
        noise = torch.randint(10, 60, (2,), generator=g).tolist()
        out.chosen.append([*head, 7, 7, *noise, 7, 1])
        out.rejected.append([*head, 9, 9, *noise, 9, 1])
        out.n_prompt.append(len(head))
    return out


def _train(tiny_cfg, tmp_path, stop_at=None, state="state", cfg=None):
    torch.manual_seed(0)
    model = GPT(tiny_cfg)
    reference = copy.deepcopy(model).eval()
    cfg = cfg or DPOConfig(
        steps=30, batch_size=16, lr=3e-3, warmup_steps=2, beta=0.5, eval_every=10, patience=5, checkpoint_every=50
    )
    logged = []
    best = train_dpo(
        model, reference, toy_pairs(128, 0), toy_pairs(64, 1), cfg, 0, tmp_path / state,
        lambda m, s: logged.append((s, m)), stop_at=stop_at,
    )  # fmt: skip
    return model, reference, best, logged


def test_a_separable_toy_preference_is_learned(tiny_cfg, tmp_path):
    model, reference, best, logged = _train(tiny_cfg, tmp_path)
    assert logged[0][1]["dpo/loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference at step 1
    assert best["accuracy"] >= 0.95 and best["loss"] < 0.3
    val = toy_pairs(64, 1)
    ref = torch.stack(sequence_logps(reference, val.chosen + val.rejected, val.n_prompt * 2, 0).detach().split(64), 1)
    again = evaluate_dpo(model, val, ref, 0.5, 0)  # the model ends with the weights of its best evaluation
    assert again["loss"] == pytest.approx(best["loss"], rel=1e-4)


def test_resume_equals_uninterrupted(tiny_cfg, tmp_path):
    cfg = DPOConfig(steps=12, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=4, patience=5, checkpoint_every=5)
    straight, _, best_a, _ = _train(tiny_cfg, tmp_path, state="a", cfg=cfg)
    _train(tiny_cfg, tmp_path, stop_at=7, state="b", cfg=cfg)  # interrupted after step 7
    resumed, _, best_b, log_b = _train(tiny_cfg, tmp_path, state="b", cfg=cfg)
    assert log_b[0][0] == 8  # picked up after the interruption, not from scratch
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), k
    assert best_a["loss"] == pytest.approx(best_b["loss"], rel=1e-6)


def test_a_non_finite_loss_halts(tiny_cfg, tmp_path, monkeypatch):
    import rlhf.dpo

    real = rlhf.dpo.dpo_loss
    monkeypatch.setattr(rlhf.dpo, "dpo_loss", lambda *a, **k: (real(*a, **k)[0] * math.nan, real(*a, **k)[1]))
    with pytest.raises(FloatingPointError, match="step 1"):
        _train(tiny_cfg, tmp_path)
    assert not (tmp_path / "state").exists()
