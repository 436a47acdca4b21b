"""Same seed, same tiny models: three PPO iterations, reward-model training and four DPO steps -> their numbers as
JSON, to compare two checkouts on one machine (a refactor must leave them identical):

    mkdir -p /tmp/old && git archive main rlhf tasks | tar -x -C /tmp/old
    PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/tmp/old python bench/same_numbers.py > old.json
    PYTHONPATH=. python bench/same_numbers.py > new.json && cmp old.json new.json

(Configs give every field, so checkouts whose config defaults differ still run the same computation.)
"""

import copy
import json
import tempfile
from pathlib import Path

import torch

from rlhf.dpo import DPOConfig, train_dpo
from rlhf.model import GPT, GPTConfig, ScalarHeadModel
from rlhf.ppo_trainer import PPOConfig, make_state, ppo_iteration
from rlhf.reward import RMConfig, encode_pairs, train_reward_model
from rlhf.tokenizer import train_tokenizer

words = ["yes", "no", "cat", "dog", "red", "blue", "one", "two"]
tok = train_tokenizer([f"say {w} {w}" for w in words] * 4, vocab_size=120)
torch.manual_seed(0)
gcfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32, dropout=0.0)
actor = GPT(gcfg)
critic, ref = ScalarHeadModel.from_lm(actor, head_std=0.0), copy.deepcopy(actor).eval()
cfg = PPOConfig(
    iterations=3,
    batch_size=8,
    mini_batches=2,
    ppo_epochs=2,
    lr=3e-3,
    critic_lr=3e-3,
    max_new_tokens=8,
    kl_coef=0.01,
    seed=1,
)
target = tok.encode("yes")[0]


def score(ro):
    return (ro.responses == target).float().sum(1)


state = make_state(actor, critic, cfg)
out = {}
for i in range(3):
    _, st = ppo_iteration(state, ref, score, tok, [f"say {w}" for w in words], cfg)
    out[f"ppo{i}"] = {k: v for k, v in st.items() if not k.startswith("time/")}
out["actor_sum"] = float(sum(p.double().sum() for p in state.actor.parameters()))
torch.manual_seed(0)
rm = ScalarHeadModel.from_lm(GPT(gcfg))
pairs = encode_pairs(tok, [f"say {w}" for w in words], [w for w in words], [w + " " + w for w in words], 32)
rmc = RMConfig(epochs=2, batch_size=4, lr=3e-3, warmup_steps=1, eval_every=2, patience=10)
best = train_reward_model(rm, pairs, pairs, rmc, tok.pad_id, lambda m, s: None)
out["rm"] = {k: float(v) for k, v in best.items()}
torch.manual_seed(0)
pol = GPT(gcfg)
refm = copy.deepcopy(pol).eval()
dc = DPOConfig(steps=4, batch_size=4, lr=3e-3, warmup_steps=1, eval_every=2, patience=5, checkpoint_every=50)
with tempfile.TemporaryDirectory() as d:
    b = train_dpo(pol, refm, pairs, pairs, dc, tok.pad_id, Path(d) / "ck", lambda m, s: None)
out["dpo"] = {k: float(v) for k, v in b.items() if isinstance(v, (int, float))}
print(json.dumps(out, sort_keys=True))
