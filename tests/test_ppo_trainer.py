"""The PPO loop: ratio 1 at the first minibatch, resume equivalence, the NaN halt, and that it learns."""

import copy

import pytest
import torch

from rlhf.model import GPT, GPTConfig, ScalarHeadModel
from rlhf.ppo_run import RunOptions, train_ppo
from rlhf.ppo_trainer import PPOConfig, make_state, ppo_iteration
from rlhf.tokenizer import train_tokenizer

WORDS = ["yes", "no", "cat", "dog", "red", "blue", "one", "two"]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([" ".join(WORDS)] * 10 + [f"say {w}" for w in WORDS], vocab_size=300)


@pytest.fixture
def models(tok):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32)
    actor = GPT(cfg)
    return actor, ScalarHeadModel.from_lm(actor, head_std=0.0), copy.deepcopy(actor).eval()


def _score_fn(tok):
    target = tok.encode("yes")[0]

    def score(ro):  # a toy reward: how often the response says "yes"
        return ((ro.responses == target).float() * ro.mask).sum(1)

    return score


PROMPTS = [f"say {w}" for w in WORDS] * 2
CFG = PPOConfig(
    iterations=6,
    batch_size=8,
    mini_batches=2,
    ppo_epochs=2,
    lr=3e-3,
    critic_lr=3e-3,
    max_new_tokens=8,
    kl_coef=0.01,
    seed=1,
)


def test_first_minibatch_ratio_is_one(tok, models):
    actor, critic, ref = models
    state = make_state(actor, critic, CFG)
    _, stats = ppo_iteration(state, ref, _score_fn(tok), tok, PROMPTS, CFG)
    assert stats["ppo/policy/first_approxkl"] < 1e-10
    # the actor started equal to the reference: the KL of the first batch is zero
    assert abs(stats["objective/kl"]) < 1e-5


def _train(tok, cfg, tmp_path, name, stop_at=None):
    torch.manual_seed(0)
    gcfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32)
    actor = GPT(gcfg)
    critic, ref = ScalarHeadModel.from_lm(actor, head_std=0.0), copy.deepcopy(actor).eval()
    state = make_state(actor, critic, cfg)
    hist = train_ppo(
        state,
        ref,
        _score_fn(tok),
        tok,
        PROMPTS,
        cfg,
        lambda m, s: None,
        RunOptions(tmp_path / name, checkpoint_every=2, stop_at=stop_at),
    )
    return state, hist


def test_resume_gives_the_same_metrics(tok, tmp_path):
    _, straight = _train(tok, CFG, tmp_path, "a")
    _train(tok, CFG, tmp_path, "b", stop_at=3)
    _state, resumed = _train(tok, CFG, tmp_path, "b")
    assert len(resumed) == len(straight) == CFG.iterations
    for a, b in zip(straight, resumed, strict=True):
        for key in ("objective/rm_score", "objective/kl", "ppo/policy/pg_loss", "ppo/val/vf_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def test_nan_halts_before_checkpoint(tok, models, tmp_path):
    actor, critic, ref = models
    state = make_state(actor, critic, CFG)
    ckpt = tmp_path / "ckpt"
    train_ppo(
        state,
        ref,
        _score_fn(tok),
        tok,
        PROMPTS,
        CFG,
        lambda m, s: None,
        RunOptions(ckpt, checkpoint_every=2, stop_at=2),
    )
    before = {p.name: p.read_bytes() for p in ckpt.rglob("*") if p.is_file()}

    def nan_score(ro):
        return torch.full((ro.responses.shape[0],), float("nan"))

    with pytest.raises(FloatingPointError, match="loss is nan"):
        train_ppo(state, ref, nan_score, tok, PROMPTS, CFG, lambda m, s: None, RunOptions(ckpt, checkpoint_every=1))
    after = {p.name: p.read_bytes() for p in ckpt.rglob("*") if p.is_file()}
    assert before == after


TOY_REWARD_CFG = PPOConfig(
    iterations=25,
    batch_size=16,
    mini_batches=2,
    ppo_epochs=4,
    lr=1e-2,
    critic_lr=1e-2,
    max_new_tokens=6,
    kl_coef=0.0,
    ent_coef=0.0,
    seed=0,
)
"""a run that raises the toy reward within seconds (tests/test_lora.py runs it with adapters)"""


def test_ppo_raises_a_toy_reward(tok, models, tmp_path):
    cfg = TOY_REWARD_CFG
    actor, critic, ref = models
    state = make_state(actor, critic, cfg)
    hist = train_ppo(
        state, ref, _score_fn(tok), tok, PROMPTS, cfg, lambda m, s: None, RunOptions(tmp_path / "c", checkpoint_every=0)
    )
    first = sum(h["objective/rm_score"] for h in hist[:3]) / 3
    last = sum(h["objective/rm_score"] for h in hist[-3:]) / 3
    assert last > first + 1.0


def test_dropout_in_the_checkpoint_is_switched_off(tok):
    """A checkpoint trained with dropout still starts PPO with ratio 1: make_state zeroes every dropout."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32, dropout=0.1)
    actor = GPT(cfg)
    critic, ref = ScalarHeadModel.from_lm(actor, head_std=0.0), copy.deepcopy(actor).eval()
    state = make_state(actor, critic, CFG)
    assert all(m.p == 0.0 for m in (*actor.modules(), *critic.modules()) if isinstance(m, torch.nn.Dropout))
    _, stats = ppo_iteration(state, ref, _score_fn(tok), tok, PROMPTS, CFG)
    # rollout (batch of 8) and first minibatch (4 rows) take other kernel paths: equal up to float32 rounding
    assert stats["ppo/policy/first_approxkl"] < 1e-9


def test_reward_statistics_normalise_ppo_rollouts(tok, models):
    """The normalisation is measured on rollouts drawn and scored as PPO's are: the scores it saw, normalised,
    have mean 0 and std 1, and every one of them came as a Rollout of raw ids no longer than max_new_tokens."""
    from rlhf.ppo_trainer import reward_statistics
    from rlhf.rollout import Rollout

    actor, _, _ = models
    seen = []

    def score(ro):
        seen.append(ro)
        return _score_fn(tok)(ro) * 3.0 + 2.0 + ro.mask.sum(1)

    mean, std = reward_statistics(actor, score, tok, PROMPTS, CFG)
    assert seen and all(isinstance(ro, Rollout) and ro.responses.shape[1] <= CFG.max_new_tokens for ro in seen)
    z = (torch.cat([score(ro) for ro in list(seen)]).double() - mean) / std
    assert len(z) == len(PROMPTS)
    assert abs(float(z.mean())) < 1e-6 and abs(float(z.std(unbiased=False)) - 1.0) < 1e-6


def test_batch_sizes_fail_loudly_with_the_numbers():
    import dataclasses

    from rlhf.ppo_trainer import check_batch_sizes

    with pytest.raises(ValueError, match="needs at least that many PPO prompts, but there are 40"):
        check_batch_sizes(dataclasses.replace(CFG, batch_size=64), n_prompts=40)
    with pytest.raises(ValueError, match="mini_batches 3 does not divide"):
        dataclasses.replace(CFG, batch_size=8, mini_batches=3)  # refused when the config is built
    with pytest.raises(ValueError, match="does not split evenly over 4 processes"):
        check_batch_sizes(dataclasses.replace(CFG, batch_size=6), n_prompts=45, world_size=4)
    with pytest.raises(ValueError, match="is 6 rollouts each, which mini_batches 4 does not divide"):
        check_batch_sizes(dataclasses.replace(CFG, batch_size=12, mini_batches=4), n_prompts=45, world_size=2)
    check_batch_sizes(dataclasses.replace(CFG, batch_size=8), n_prompts=45, world_size=2)  # 4 each, 2 minibatches


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_ppo_refuses_a_temperature_without_sampling(temperature):
    import dataclasses

    with pytest.raises(ValueError, match="temperature must be above 0"):
        dataclasses.replace(CFG, temperature=temperature)


def test_critic_from_the_reward_model_starts_at_the_normalised_reward(tok, models):
    """PPO's reward is (r − mean) / std: a critic copied from the reward model starts in those units, so its value
    at the last token is the normalised reward; with a judge as the reward it starts at zero instead."""
    from tasks.ppo import PPOParams, make_critic
    from tests.test_params import section_values

    PPO_PARAMS = section_values("ppo")

    actor, _, _ = models
    torch.manual_seed(3)
    rm = ScalarHeadModel.from_lm(actor)  # a random head, as a trained one would have
    with torch.no_grad():
        rm.head.bias.fill_(-0.98)
    rm.requires_grad_(False)
    ids = torch.randint(3, tok.vocab_size, (4, 12))
    mask = torch.ones_like(ids)
    mean, std = -0.98, 1.008
    critic = make_critic(PPOParams(**PPO_PARAMS), actor, rm, mean, std)
    with torch.no_grad():
        expected = (rm.score(ids, mask) - mean) / std
        torch.testing.assert_close(critic.score(ids, mask), expected, rtol=1e-5, atol=1e-6)
        judge_critic = make_critic(
            PPOParams(**{**PPO_PARAMS, "reward": "mypackage.judges:score"}), actor, rm, mean, std
        )
        assert judge_critic(ids).abs().max() == 0.0
    assert all(p.requires_grad for p in critic.parameters()) and not any(p.requires_grad for p in rm.parameters())


def test_resume_is_refused_when_the_reward_or_the_sft_model_changed(tok, tmp_path, monkeypatch):
    """A checkpoint resumes only the run it came from: another reward spec or another SFT checkpoint under the
    same PPO config is refused, naming what changed and the directory to delete."""
    from rlhf.checkpoint import ResumeRefused
    from rlhf.lora import LoRAConfig
    from tasks.ppo import ppo_inputs

    root = tmp_path / "root"
    monkeypatch.setenv("RLHF_ROOT", str(root))
    for rel, text in {
        "models/sft/model.safetensors": "sft weights",
        "models/reward_model/model.safetensors": "rm weights",
        "models/reward_model/config.json": "{}",
        "data/prepared/prompts_ppo.jsonl": '{"prompt": "say yes"}\n',
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    params = {"ppo": {"reward": "reward_model", "critic_init": "reward_model"}, "judge": {"gold": "none"}}

    def run(p, stop_at=None, lora=None):
        torch.manual_seed(0)
        gcfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32)
        actor = GPT(gcfg)
        state = make_state(actor, ScalarHeadModel.from_lm(actor, head_std=0.0), CFG)
        ckpt = tmp_path / "state" / "checkpoint"
        log = lambda m, s: None  # noqa: E731
        opts = RunOptions(
            ckpt, 2, stop_at=stop_at, inputs=ppo_inputs(p, lora or LoRAConfig()), start_over=tmp_path / "state"
        )
        return train_ppo(state, copy.deepcopy(actor).eval(), _score_fn(tok), tok, PROMPTS, CFG, log, opts)

    run(params, stop_at=2)
    other_reward = {**params, "ppo": {**params["ppo"], "reward": "mypackage.judges:score"}}
    with pytest.raises(ResumeRefused, match=r"params\.ppo\.reward: \"reward_model\" -> \"mypackage") as e:
        run(other_reward)
    assert f"rm -rf {tmp_path / 'state'}" in str(e.value)
    with pytest.raises(ResumeRefused, match=r"model\.lora"):  # adapters now: another set of trained tensors
        run(params, lora=LoRAConfig(r=4))
    (root / "models/sft/model.safetensors").write_text("another sft model")
    with pytest.raises(ResumeRefused, match=r"sha256\.models/sft/model\.safetensors"):
        run(params)
    (root / "models/sft/model.safetensors").write_text("sft weights")
    assert len(run(params)) == CFG.iterations  # the very inputs it started from: resumed to the end


def test_snapshots_are_early_and_dense_then_regular():
    from rlhf.ppo_run import snapshot_due

    assert [i for i in range(1, 41) if snapshot_due(i, 16, 40)] == [1, 2, 4, 8, 16, 32, 40]
    assert [i for i in range(1, 13) if snapshot_due(i, 5, 12)] == [1, 2, 4, 5, 10, 12]
    assert not any(snapshot_due(i, 0, 40) for i in range(41))
