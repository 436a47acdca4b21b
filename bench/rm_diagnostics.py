"""Where the reward model loses accuracy: held-out pairs per family and per kind of difference.

    python bench/rm_diagnostics.py [--model models/reward_model]

For each held-out pair (the reward_model stage's split) it prints the RM's accuracy, the labeler's ceiling, and the
accuracy of two oracles that see the gold rubric's terms: `style` (every term but content and grounding, plus
the labeler's length taste) and `content` (content + grounding only). The RM must learn the world's facts to get
past the style oracle. Runs on the repo's current outputs; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from rlhf.checkpoint import load_model  # noqa: E402
from rlhf.reward import encode_pairs, margins  # noqa: E402
from rlhf.tokenizer import ChatTokenizer  # noqa: E402
from rlhf.world.families import parse_prompt  # noqa: E402
from rlhf.world.judge import explain  # noqa: E402
from rlhf.world.labeler import SimulatedLabeler  # noqa: E402
from tasks.reward_model import split  # noqa: E402


def oracle_margin(prompt: str, a: str, b: str, keys: set[str], length_bias: float) -> float:
    ea, eb = explain(prompt, a), explain(prompt, b)
    m = sum(ea[k] - eb[k] for k in keys if k in ea)
    if "length" in keys:
        m += length_bias * (len(a.split()) - len(b.split()))
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/reward_model")
    ap.add_argument("--pairs", default="data/preferences/pairs.parquet")
    ap.add_argument("--val-frac", type=float, default=0.1)
    args = ap.parse_args()
    _, val = split(pd.read_parquet(args.pairs), args.val_frac)
    tok = ChatTokenizer.load(args.model)
    rm = load_model(args.model, "scalar")
    enc = encode_pairs(tok, val["prompt"].tolist(), val["chosen"].tolist(), val["rejected"].tolist(), rm.cfg.block_size)
    m = margins(rm, enc, tok.pad_id).numpy()
    lab = SimulatedLabeler(float(val["labeler_temperature"][0]), float(val["labeler_length_bias"][0]))
    all_terms = set(explain("Hi", "Hi"))
    style = (all_terms - {"content", "grounding"}) | {"length"}
    rows = defaultdict(lambda: defaultdict(list))
    for i, (p, c, r) in enumerate(zip(val["prompt"], val["chosen"], val["rejected"], strict=True)):
        task = parse_prompt(p)
        fam = task.family if task else "unknown"
        ceil_p = lab.prob_prefers(p, c, r)
        for key in (fam, "ALL"):
            d = rows[key]
            d["rm"].append(m[i] > 0)
            d["ceiling"].append(max(ceil_p, 1 - ceil_p))
            d["bayes"].append(ceil_p > 0.5)  # the labeler's likelier order agrees with the label
            d["style"].append(oracle_margin(p, c, r, style, lab.length_bias) > 0)
            d["content"].append(oracle_margin(p, c, r, {"content", "grounding"}, 0.0) > 0)
            d["same_content"].append(explain(p, c)["content"] == explain(p, r)["content"])
    print(f"{'family':<12}{'n':>6}{'rm':>8}{'ceiling':>9}{'style':>8}{'content':>9}{'same_content':>14}")
    for fam, d in sorted(rows.items()):
        print(
            f"{fam:<12}{len(d['rm']):>6}{np.mean(d['rm']):>8.3f}{np.mean(d['ceiling']):>9.3f}"
            f"{np.mean(d['style']):>8.3f}{np.mean(d['content']):>9.3f}{np.mean(d['same_content']):>14.3f}"
        )


if __name__ == "__main__":
    main()
