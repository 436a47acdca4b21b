"""Model and generation equivalences: KV cache vs recompute, padded vs alone, seeded sampling."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.generate import SamplingConfig, filter_logits, generate, left_pad
from rlhf.model import GPT, KVCache, ScalarHeadModel, rope_tables, rotate
from rlhf.ppo import logprobs_from_logits


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return GPT(cfg).eval()


def test_kv_cache_logits_equal_full_recompute(tiny_cfg):
    model = _model(tiny_cfg)
    ids = torch.randint(4, tiny_cfg.vocab_size, (3, 20))
    full = model(ids)  # (B, T, V)
    cache = KVCache(tiny_cfg, 3, 20, ids.device, torch.float32)
    steps = [model(ids[:, :5], cache=cache)]
    for t in range(5, 20):
        steps.append(model(ids[:, t : t + 1], cache=cache))
    incremental = torch.cat(steps, dim=1)
    assert torch.allclose(incremental, full, atol=1e-5, rtol=0)


def test_generation_logprobs_match_recompute(tiny_cfg):
    model = _model(tiny_cfg)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]
    ids, mask = left_pad(prompts, pad_id=0)
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.7)
    gen = generate(model, ids, mask, cfg, eos_id=1, pad_id=0, generator=torch.Generator().manual_seed(3))
    full_ids = torch.cat([ids, gen.tokens], 1)
    full_mask = torch.cat([mask, gen.mask.long()], 1)
    logits = model(full_ids, attention_mask=full_mask)[:, ids.shape[1] - 1 : -1] / cfg.temperature
    recomputed = logprobs_from_logits(logits, gen.tokens) * gen.mask
    assert torch.allclose(recomputed, gen.logprobs, atol=1e-5)


def test_padded_batch_equals_each_row_alone(tiny_cfg):
    model = _model(tiny_cfg, seed=1)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15], [16, 17]]
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.0)
    ids, mask = left_pad(prompts, pad_id=0)
    batch = generate(model, ids, mask, cfg, eos_id=1, pad_id=0)
    for i, p in enumerate(prompts):
        alone_ids, alone_mask = left_pad([p], pad_id=0)
        alone = generate(model, alone_ids, alone_mask, cfg, eos_id=1, pad_id=0)
        # tokens are discrete: greedy choices agree unless two logits tie within float rounding (not here)
        assert torch.equal(alone.tokens[0], batch.tokens[i])
        assert torch.allclose(alone.logprobs[0], batch.logprobs[i], atol=1e-5)


def test_eos_stops_row_and_masks_after(tiny_cfg):
    model = _model(tiny_cfg, seed=2)
    with torch.no_grad():  # make EOS (id 1) very likely so some rows stop early
        model.transformer.wte.weight[1] += 0.5 * model.transformer.ln_f.bias.new_ones(tiny_cfg.n_embd)
    ids, mask = left_pad([[5, 6]] * 16, pad_id=0)
    gen = generate(
        model,
        ids,
        mask,
        SamplingConfig(max_new_tokens=20, temperature=1.5),
        1,
        0,
        torch.Generator().manual_seed(0),
    )
    for row_tok, row_mask in zip(gen.tokens, gen.mask, strict=True):
        eos = (row_tok == 1).nonzero()
        if len(eos):
            e = int(eos[0])
            assert row_mask[: e + 1].all() and not row_mask[e + 1 :].any()
            assert (row_tok[e + 1 :] == 0).all()
        else:
            assert row_mask.all()


def test_fixed_seed_reproduces_samples(tiny_cfg):
    model = _model(tiny_cfg)
    ids, mask = left_pad([[5, 6, 7]] * 4, pad_id=0)
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.9)
    a = generate(model, ids, mask, cfg, 1, 0, torch.Generator().manual_seed(7))
    b = generate(model, ids, mask, cfg, 1, 0, torch.Generator().manual_seed(7))
    c = generate(model, ids, mask, cfg, 1, 0, torch.Generator().manual_seed(8))
    assert torch.equal(a.tokens, b.tokens)  # the very same computation twice: exact on one machine
    assert not torch.equal(a.tokens, c.tokens)


def test_top_k_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 2, 1.0)).tolist() == [[False, False, True, True]]
    # nucleus 0.7: 0.5 alone is not enough, 0.5 + 0.3 reaches it, the rest is dropped
    assert torch.isinf(filter_logits(logits, 0, 0.7)).tolist() == [[False, False, True, True]]
    assert not torch.isinf(filter_logits(logits, 0, 1.0)).any()


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 10), min_size=1, max_size=5), st.integers(0, 1000))
def test_scalar_score_ignores_padding(lengths, seed):
    torch.manual_seed(seed)
    from rlhf.model import GPTConfig

    cfg = GPTConfig(vocab_size=32, block_size=24, n_layer=1, n_head=2, n_embd=16)
    rm = ScalarHeadModel(cfg).eval()
    seqs = [torch.randint(4, 32, (n,)).tolist() for n in lengths]
    with torch.no_grad():
        alone = [rm.score(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in seqs]
    T = max(lengths) + 3
    right = torch.zeros(len(seqs), T, dtype=torch.long)
    right_mask = torch.zeros_like(right)
    for i, s in enumerate(seqs):
        right[i, : len(s)] = torch.tensor(s)
        right_mask[i, : len(s)] = 1
    left, left_mask = left_pad(seqs, pad_id=0)
    with torch.no_grad():
        r_right = rm.score(right, right_mask)
        r_left = rm.score(left, left_mask)
    for i, a in enumerate(alone):
        assert abs(float(a) - float(r_right[i])) < 1e-5
        assert abs(float(a) - float(r_left[i])) < 1e-5


def test_sampling_never_picks_a_filtered_token():
    """Inverse-CDF sampling with top-k: only the k most likely ids ever come out, in proportion to their mass."""
    from rlhf.generate import _sample

    torch.manual_seed(0)
    logits = torch.randn(4096, 50)
    cfg = SamplingConfig(max_new_tokens=48, temperature=1.0, top_k=3)
    tok, logp = _sample(logits, cfg, torch.Generator().manual_seed(1))
    top3 = logits.topk(3, dim=-1).indices
    assert bool((tok[:, None] == top3).any(1).all())
    assert torch.allclose(logp, logits.log_softmax(-1).gather(1, tok[:, None]).squeeze(1))
    # one fixed row, many draws: frequencies follow the renormalised top-3 probabilities
    row = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]]).expand(20000, 5)
    tok, _ = _sample(row, cfg, torch.Generator().manual_seed(2))
    freq = torch.bincount(tok, minlength=5).float() / len(tok)
    expected = torch.tensor([2.0, 1.0, 0.5]).softmax(-1)
    assert freq[3:].sum() == 0 and torch.allclose(freq[:3], expected, atol=0.015)


def test_checkpoint_loads_exactly_without_a_random_init(tiny_cfg, tmp_path):
    """load_model gives back the saved model's outputs, in trainable tensors of its own, and draws nothing from
    the global RNG (it builds on the meta device): loading a model never shifts a seeded run."""
    from rlhf.checkpoint import load_model, save_model

    torch.manual_seed(0)
    idx = torch.randint(0, tiny_cfg.vocab_size, (2, 9))
    for arch, model in {"gpt": GPT(tiny_cfg), "scalar": ScalarHeadModel(tiny_cfg)}.items():
        save_model(tmp_path / arch, model)
        torch.manual_seed(1)
        loaded = load_model(tmp_path / arch, arch)
        after_load = torch.rand(4)
        torch.manual_seed(1)
        assert torch.equal(after_load, torch.rand(4))
        assert all(p.device.type == "cpu" and p.requires_grad for p in loaded.parameters())
        # The weights come back bit for bit; outputs are compared with a float32 tolerance, since tensors in
        # other storage (alignment) may take another kernel path (seen on AMD EPYC: 2.4e-7 apart).
        saved, back = model.state_dict(), loaded.state_dict()
        assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved)
        with torch.no_grad():
            torch.testing.assert_close(loaded(idx), model(idx), rtol=1e-5, atol=1e-5)
            before = model(idx)
            loaded.transformer.wte.weight.add_(1.0)  # writable storage of its own: the original is untouched
            assert not torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight)
            assert torch.equal(model(idx), before)  # the very same computation again: exact
            torch.testing.assert_close(load_model(tmp_path / arch, arch)(idx), model(idx), rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(0, 120), n=st.integers(0, 120), shift=st.integers(0, 7), seed=st.integers(0, 10_000))
def test_rotary_attention_scores_depend_only_on_the_offset(m, n, shift, seed):
    # The property RoPE is chosen for: q·k of positions (m, n) equals that of (m + s, n + s), and rotation keeps norms.
    g = torch.Generator().manual_seed(seed)
    q, k = (
        torch.randn(1, 1, 1, 32, generator=g, dtype=torch.float64),
        torch.randn(1, 1, 1, 32, generator=g, dtype=torch.float64),
    )

    def score(i: int, j: int) -> torch.Tensor:
        rq, rk = rope_tables(torch.tensor([[i]]), 32), rope_tables(torch.tensor([[j]]), 32)
        return (rotate(q, rq) * rotate(k, rk)).sum()

    assert torch.allclose(score(m, n), score(m + shift, n + shift), atol=1e-5)  # float32 tables
    assert torch.allclose(rotate(q, rope_tables(torch.tensor([[m]]), 32)).norm(), q.norm(), atol=1e-5)  # float32 tables


def test_a_checkpoint_with_learned_positions_is_refused_by_name(tiny_cfg, tmp_path):
    from safetensors.torch import save_file

    from rlhf.checkpoint import load_model, save_model

    save_model(tmp_path / "old", GPT(tiny_cfg))
    state = {k: v.contiguous() for k, v in GPT(tiny_cfg).state_dict().items()}
    state["transformer.wpe.weight"] = torch.zeros(tiny_cfg.block_size, tiny_cfg.n_embd)
    save_file(state, str(tmp_path / "old" / "model.safetensors"))
    with pytest.raises(ValueError, match="learned position embeddings"):
        load_model(tmp_path / "old")
