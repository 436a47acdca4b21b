"""Reward model: the Bradley–Terry loss against a float64 reference, and learning a separable toy set."""

import numpy as np
import torch

from rlhf.model import GPT, GPTConfig, ScalarHeadModel
from rlhf.padding import right_pad
from rlhf.reward import Pairs, RMConfig, bt_loss, evaluate_pairs, train_reward_model


def test_bt_loss_equals_float64_reference():
    g = torch.Generator().manual_seed(0)
    for scale in (0.1, 1.0, 10.0, 100.0):
        rc, rr = torch.randn(64, generator=g) * scale, torch.randn(64, generator=g) * scale
        d = (rc - rr).double().numpy()
        reference = np.mean(np.log1p(np.exp(-np.abs(d))) + np.maximum(-d, 0))  # -log σ(d), stable
        assert abs(float(bt_loss(rc, rr)) - reference) < 1e-5 * max(1.0, reference)
    # where the spec's -log(sigmoid(.)) underflows to inf, the loss stays finite and right
    assert float(bt_loss(torch.tensor([-200.0]), torch.tensor([0.0]))) == 200.0


def test_sequences_are_right_padded_and_masked():
    ids, mask = right_pad([[5, 6, 7], [5, 8]], pad_id=0)  # rows of unequal length: pads on the right, masks them
    assert ids.tolist() == [[5, 6, 7], [5, 8, 0]] and mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_learns_a_separable_toy_set():
    # chosen responses end in token 9, rejected in token 8, after random prompts of random lengths
    g = torch.Generator().manual_seed(1)

    def pairs(n):
        out = Pairs([], [])
        for _ in range(n):
            prompt = torch.randint(10, 30, (int(torch.randint(2, 8, (1,), generator=g)),), generator=g).tolist()
            body = torch.randint(10, 30, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist()
            out.chosen.append([2, *prompt, 3, *body, 9, 1])
            out.rejected.append([2, *prompt, 3, *body, 8, 1])
        return out

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=32, block_size=24, n_layer=1, n_head=2, n_embd=32)
    rm = ScalarHeadModel.from_lm(GPT(cfg))
    train, val = pairs(256), pairs(64)
    rm_cfg = RMConfig(epochs=4, batch_size=32, lr=3e-3, warmup_steps=4, eval_every=8, patience=10)
    train_reward_model(rm, train, val, rm_cfg, pad_id=0, log=lambda m, s: None)
    assert evaluate_pairs(rm, val, pad_id=0)["accuracy"] >= 0.95


def test_ties_count_half_in_training_and_validation_alike():
    """A reward model that scores everything alike orders no pair: accuracy ½, as rlhf.stats.pairwise_accuracy."""
    from rlhf.reward import Pairs, evaluate_pairs, pair_wins
    from rlhf.stats import pairwise_accuracy

    m = torch.tensor([1.0, 0.0, -2.0, 0.0])
    assert pair_wins(m).tolist() == [1.0, 0.5, 0.0, 0.5]
    assert float(pair_wins(m).mean()) == pairwise_accuracy(m.numpy()) == 0.5
    cfg = GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=16)
    flat = ScalarHeadModel(cfg, head_std=0.0)  # zero head: every score is 0
    pairs = Pairs([[5, 6, 7], [8, 9]], [[5, 6], [8, 9, 10]])
    assert evaluate_pairs(flat, pairs, pad_id=0)["accuracy"] == 0.5


def test_a_step_takes_whole_prompts_and_scores_each_response_once():
    """epoch_steps: every pair once per epoch, a prompt's pairs in one step, every step >= batch_size pairs;
    grouped_margins equals scoring each pair on its own (other batch shapes: float32 tolerance)."""
    from rlhf.reward import epoch_steps, grouped_margins, prompt_groups, sequence_scores

    g = torch.Generator().manual_seed(3)
    pairs = Pairs([], [], [])
    for p in range(23):
        prompt = torch.randint(10, 30, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
        responses = [torch.randint(10, 30, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
                     for _ in range(int(torch.randint(2, 5, (1,), generator=g)))]  # fmt: skip
        for a in range(len(responses)):
            for b in range(a + 1, len(responses)):
                pairs.chosen.append([2, p + 30, *prompt, 3, *responses[a], 1])
                pairs.rejected.append([2, p + 30, *prompt, 3, *responses[b], 1])
                pairs.n_prompt.append(len(prompt) + 3)
    groups = prompt_groups(pairs)
    assert len(groups) == 23 and sorted(i for grp in groups for i in grp) == list(range(len(pairs)))
    for batch_size in (1, 7, 16, 1000):
        steps = epoch_steps(groups, batch_size, torch.Generator().manual_seed(0))
        assert sorted(i for s in steps for i in s) == list(range(len(pairs)))
        assert all(len(s) >= min(batch_size, len(pairs)) for s in steps)
        assert all(any(set(grp) <= set(s) for s in steps) for grp in groups)
    torch.manual_seed(0)
    rm = ScalarHeadModel(GPTConfig(vocab_size=64, block_size=24, n_layer=1, n_head=2, n_embd=32))
    idx = steps[0]
    with torch.no_grad():
        rc = torch.stack([sequence_scores(rm, [pairs.chosen[i]], pad_id=0)[0] for i in idx])
        rr = torch.stack([sequence_scores(rm, [pairs.rejected[i]], pad_id=0)[0] for i in idx])
        torch.testing.assert_close(grouped_margins(rm, pairs, idx, pad_id=0), rc - rr, atol=1e-5, rtol=1e-5)
