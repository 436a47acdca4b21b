"""Reward-model training variants on the pipeline's own pairs: held-out accuracy after each evaluation.

    python bench/rm_variants.py                                  # the default recipe (params.yaml's)
    python bench/rm_variants.py --dropout 0.1                    # dropout in the body during training
    python bench/rm_variants.py --mismatched 1                   # + 1 negative per pair from a similar prompt
    python bench/rm_variants.py --root /tmp/big                  # the body of another SFT model (its models/sft)

Trains `rlhf.reward.train_reward_model` from `<root>/models/sft` on the reward_model stage's split of
`data/preferences/pairs.parquet` (always this repo's pairs, so variants are compared on the same held-out pairs)
and prints the held-out loss and accuracy at every evaluation, the labeler's ceiling and the issue's bar
(ceiling - 0.05). Nothing is written; it is how #4's variants were measured.

`--mismatched K` adds K pairs per training pair whose rejected side is a chosen response to one of the 20 prompts
nearest in words (Jaccard over lower-cased words): a relevance prior that needs no labels (an answer to another
question is worse than this question's chosen answer), as contrastive negatives are used in retrieval.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from rlhf.checkpoint import load_model  # noqa: E402
from rlhf.model import ScalarHeadModel  # noqa: E402
from rlhf.reward import (  # noqa: E402
    Pairs,
    RMConfig,
    encode_pairs,
    split,
    train_reward_model,
)
from rlhf.tokenizer import ChatTokenizer  # noqa: E402
from tasks.common import load_params  # noqa: E402
from tasks.reward_model import labeler_ceiling  # noqa: E402


def words(text: str) -> set[str]:
    return set(text.lower().replace("?", " ").replace(".", " ").replace(",", " ").split())


def mismatched_pairs(train: pd.DataFrame, per_pair: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """(prompt, its chosen response, a chosen response to a nearby prompt) triples, `per_pair` per training pair."""
    rng = random.Random(seed)
    prompts = sorted(set(train["prompt"]))
    chosen_of = train.groupby("prompt")["chosen"].apply(list).to_dict()
    bags = {p: words(p) for p in prompts}

    def nearest(p: str, k: int = 20) -> list[str]:
        others = [q for q in prompts if q != p]
        return sorted(others, key=lambda q: -len(bags[p] & bags[q]) / len(bags[p] | bags[q]))[:k]

    near = {p: nearest(p) for p in prompts}
    out: tuple[list[str], list[str], list[str]] = ([], [], [])
    for p, c in zip(train["prompt"], train["chosen"], strict=True):
        for _ in range(per_pair):
            negative = rng.choice(chosen_of[rng.choice(near[p])])
            if negative != c:
                for col, v in zip(out, (p, c, negative), strict=True):
                    col.append(v)
    return out


def main() -> None:
    rm_params = load_params()["reward_model"]
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, default=ROOT, help="a working root whose models/sft is the body")
    ap.add_argument("--lr", type=float, default=rm_params["lr"])
    ap.add_argument("--epochs", type=int, default=rm_params["epochs"])
    ap.add_argument("--patience", type=int, default=rm_params["patience"])
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--mismatched", type=int, default=0, help="negatives from nearby prompts per training pair")
    ap.add_argument("--seed", type=int, default=rm_params["seed"])
    args = ap.parse_args()
    torch.set_num_threads(2)
    train_df, val_df = split(pd.read_parquet(ROOT / "data/preferences/pairs.parquet"), rm_params["val_frac"])
    tok = ChatTokenizer.load(args.root / "models/sft")
    sft = load_model(args.root / "models/sft", "gpt")

    def enc(prompts: list[str], chosen: list[str], rejected: list[str]) -> Pairs:
        return encode_pairs(tok, prompts, chosen, rejected, sft.cfg.block_size)

    train = enc(train_df["prompt"].tolist(), train_df["chosen"].tolist(), train_df["rejected"].tolist())
    val = enc(val_df["prompt"].tolist(), val_df["chosen"].tolist(), val_df["rejected"].tolist())
    if args.mismatched:
        extra = enc(*mismatched_pairs(train_df, args.mismatched, args.seed))
        train = Pairs(train.chosen + extra.chosen, train.rejected + extra.rejected)
    torch.manual_seed(args.seed)
    model = ScalarHeadModel.from_lm(sft)
    for m in model.modules():  # dropout for training only (evaluation runs in eval mode)
        if isinstance(m, torch.nn.Dropout):
            m.p = args.dropout
        if isinstance(getattr(m, "dropout", None), float):
            m.dropout = args.dropout
    cfg = RMConfig(
        epochs=args.epochs,
        batch_size=rm_params["batch_size"],
        lr=args.lr,
        warmup_steps=rm_params["warmup_steps"],
        eval_every=rm_params["eval_every"],
        patience=args.patience,
        seed=args.seed,
    )
    evals: list[tuple[int, float, float]] = []

    def log(metrics: dict[str, float], step: int) -> None:
        if "rm/val_accuracy" in metrics:
            evals.append((step, round(metrics["rm/val_loss"], 4), round(metrics["rm/val_accuracy"], 4)))

    t0 = time.perf_counter()
    best = train_reward_model(model, train, val, cfg, tok.pad_id, log)
    ceiling = labeler_ceiling(val_df)
    print("evaluations (step, held-out loss, accuracy):", evals)
    print(
        f"SUMMARY rm_variants {json.dumps({k: str(v) for k, v in vars(args).items()})}: n_train {len(train)}, "
        f"best-loss accuracy {best['accuracy']:.4f} (stopped at step {best['steps']}), max over evaluations "
        f"{max(e[2] for e in evals):.4f}; ceiling {ceiling:.4f}, bar {ceiling - 0.05:.4f}; "
        f"{time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
