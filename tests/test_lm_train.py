"""LM training: SFT's loss ignores prompt tokens, resume equals an uninterrupted run, schedule shape."""

import torch

from rlhf.lm_data import IGNORE, EpochSampler, WindowSampler, sft_batch
from rlhf.lm_train import TrainConfig, lm_loss, lr_at, train_lm
from rlhf.model import GPT


def test_prompt_tokens_carry_no_gradient(tiny_cfg):
    torch.manual_seed(0)
    model = GPT(tiny_cfg)
    examples = [[2, 5, 6, 7, 3, 9, 10, 1], [2, 8, 3, 11, 1]]
    n_prompt = [5, 3]  # up to and including <|assistant|> (id 3)
    x, y = sft_batch(examples, n_prompt, pad_id=0)
    assert y[0].tolist() == [IGNORE] * 4 + [9, 10, 1]
    assert y[1].tolist() == [IGNORE] * 2 + [11, 1] + [IGNORE] * 3
    # The gradient w.r.t. the logits is zero wherever the target is a prompt token or padding.
    logits = model(x)
    logits.retain_grad()
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE).backward()
    grad_norm = logits.grad.norm(dim=-1)  # (B, T)
    assert torch.all(grad_norm[y == IGNORE] == 0)
    assert torch.all(grad_norm[y != IGNORE] > 0)
    # The loss is the mean cross-entropy over response targets alone (float64 reference on the same logits).
    logp = torch.log_softmax(model(x).detach().double(), -1)
    keep = y != IGNORE
    reference = -logp[keep].gather(1, y[keep][:, None]).mean()
    assert abs(lm_loss(model, x, y).item() - float(reference)) < 1e-5


def _run(tiny_cfg, tmp_path, stop_at=None, state="state"):
    torch.manual_seed(0)
    model = GPT(tiny_cfg)
    stream = torch.randint(4, tiny_cfg.vocab_size, (2000,))
    sample = WindowSampler(stream, 16, 4, seed=3)
    cfg = TrainConfig(steps=12, batch_size=4, lr=1e-2, warmup_steps=3, eval_every=4, checkpoint_every=5)
    logged = []
    train_lm(
        model,
        sample,
        [sample(10**6)],
        cfg,
        tmp_path / state,
        lambda m, s: logged.append((s, m)),
        stop_at=stop_at,
    )
    return model, logged


def test_resume_equals_uninterrupted(tiny_cfg, tmp_path):
    straight, log_a = _run(tiny_cfg, tmp_path, state="a")
    _run(tiny_cfg, tmp_path, stop_at=7, state="b")  # interrupted after step 7
    resumed, log_b = _run(tiny_cfg, tmp_path, state="b")  # a new process would start the same way
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), k
    assert log_b[0][0] == 8  # picked up after the interruption, not from scratch
    # the resumed weights live in other storage, so kernels may round differently: float32 tolerance
    assert abs(log_a[-1][1]["train/loss"] - log_b[-1][1]["train/loss"]) < 1e-5


def test_sft_sampler_is_a_function_of_the_step():
    ex = [[2, i, 3, i + 1, 1] for i in range(4, 20)]
    s = EpochSampler(ex, [3] * len(ex), batch_size=4, seed=1, pad_id=0)
    assert torch.equal(s(5)[0], s(5)[0])
    epoch0 = torch.cat([s(k)[0] for k in range(s.per_epoch)])
    assert sorted(epoch0[:, 1].tolist()) == list(range(4, 20))  # one pass sees every example once


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, checkpoint_every=0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == 0.1 and lr_at(9, cfg) == 1.0
    assert abs(lr_at(100, cfg) - 0.1) < 1e-9
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


def test_resume_is_refused_when_the_inputs_changed(tiny_cfg, tmp_path):
    """A training state of other inputs (here: another base model's hash) is an error naming what changed."""
    import pytest

    from rlhf.checkpoint import ResumeRefused

    def run(inputs, stop_at=None):
        torch.manual_seed(0)
        stream = torch.randint(4, tiny_cfg.vocab_size, (2000,))
        sample = WindowSampler(stream, 16, 4, seed=3)
        cfg = TrainConfig(steps=6, batch_size=4, lr=1e-2, warmup_steps=1, eval_every=3, checkpoint_every=2)
        log = lambda m, s: None  # noqa: E731
        return train_lm(
            GPT(tiny_cfg), sample, [sample(10**6)], cfg, tmp_path / "s", log, stop_at=stop_at, inputs=inputs
        )

    run({"sha256": {"models/base/model.safetensors": "aaa"}}, stop_at=3)
    with pytest.raises(ResumeRefused, match=r"sha256\.models/base/model\.safetensors: \"aaa\" -> \"bbb\""):
        run({"sha256": {"models/base/model.safetensors": "bbb"}})
