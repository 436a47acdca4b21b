"""Where the reward model loses accuracy: held-out pairs per family and per kind of difference.

    python bench/rm_diagnostics.py [--model models/reward_model]

For each held-out pair (the reward_model stage's split) it prints the RM's accuracy, the labeler's ceiling (its
expected Bayes accuracy, what metrics/reward_model.json reports) and the accuracy against the actual labels of
oracles that see the gold rubric's terms:

- `bayes`: the labeler's own utility, the best possible model; its accuracy is the ceiling as realised on these
  labels (they are one noisy draw, so it differs from the expectation by about one standard error, ±1.4 points
  at n = 1000).
- `no_facts`: every term a reader who does not know the world's facts could still judge: all style terms, the
  labeler's length taste, and whether the response gives an answer of the right kind at all. A right and a wrong
  answer of the right kind get the same content value (and no grounding, which only a right answer earns); the
  column is the best over the values that content could take (-1.5 ... 2.0): what a judge that cannot tell a
  right answer from a wrong one reaches at best, however well it judges the rest.
- `style`: every term but content and grounding, plus the length taste; `content`: content + grounding only.
- `sft_loglik`: no oracle but a feature the SFT model has: the response with the higher mean token log-probability
  under `--sft` wins. It is what the policy "knows" about an answer; near 0.5 means it knows little.

The issue's bar is `ceiling - 0.05`; the last line prints it. Runs on the repo's current outputs; nothing is
written.
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
import torch  # noqa: E402

from rlhf.checkpoint import load_model  # noqa: E402
from rlhf.padding import right_pad  # noqa: E402
from rlhf.ppo import logprobs_from_logits  # noqa: E402
from rlhf.reward import (  # noqa: E402
    encode_pairs,
    margins,
    split,
)
from rlhf.tokenizer import ChatTokenizer  # noqa: E402
from rlhf.world.families import FAMILIES, parse_prompt  # noqa: E402
from rlhf.world.judge import explain  # noqa: E402
from rlhf.world.labeler import SimulatedLabeler  # noqa: E402


@torch.no_grad()
def mean_logprob(sft: torch.nn.Module, prompt_lens: list[int], seqs: list[list[int]], pad_id: int) -> np.ndarray:
    """Mean log-probability of each sequence's response tokens (after its prompt) under the SFT model."""
    out = []
    for i in range(0, len(seqs), 128):
        chunk = seqs[i : i + 128]
        ids, _ = right_pad(chunk, pad_id)
        logp = logprobs_from_logits(sft(ids)[:, :-1].float(), ids[:, 1:])  # (B, T-1)
        out += [logp[j, prompt_lens[i + j] - 1 : len(s) - 1].mean().item() for j, s in enumerate(chunk)]
    return np.array(out)


def oracle_margin(prompt: str, a: str, b: str, keys: set[str], length_bias: float) -> float:
    ea, eb = explain(prompt, a), explain(prompt, b)
    m = sum(ea[k] - eb[k] for k in keys if k in ea)
    if "length" in keys:
        m += length_bias * (len(a.split()) - len(b.split()))
    return m


ATTEMPT = ("correct", "wrong")  # verdicts a reader without the facts cannot tell apart
MERGED_VALUES = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)


def no_facts_utility(prompt: str, response: str, merged: float, length_bias: float) -> float:
    """The labeler's utility with right and wrong answers of the right kind valued alike (`merged`)."""
    terms = explain(prompt, response)
    task = parse_prompt(prompt)
    if task is not None and FAMILIES[task.family].verdict(task, response) in ATTEMPT and terms["content"] > -2.0:
        terms["content"] = min(merged, 0.0) if terms["parroting"] < 0 else merged  # the judge caps a parrot at 0
    terms["grounding"] = 0.0
    return sum(terms.values()) + length_bias * len(response.split())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/reward_model")
    ap.add_argument("--sft", default="models/sft")
    ap.add_argument("--pairs", default="data/preferences/pairs.parquet")
    ap.add_argument("--val-frac", type=float, default=0.1)
    args = ap.parse_args()
    _, val = split(pd.read_parquet(args.pairs), args.val_frac)
    tok = ChatTokenizer.load(args.model)
    rm = load_model(args.model, "scalar")
    enc = encode_pairs(tok, val["prompt"].tolist(), val["chosen"].tolist(), val["rejected"].tolist(), rm.cfg.block_size)
    m = margins(rm, enc, tok.pad_id).numpy()
    sft = load_model(args.sft, "gpt").eval()
    prompt_lens = [len(tok.encode_prompt(p)) for p in val["prompt"]]
    loglik = mean_logprob(sft, prompt_lens, enc.chosen, tok.pad_id) - mean_logprob(
        sft, prompt_lens, enc.rejected, tok.pad_id
    )
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
            for v in MERGED_VALUES:
                u_c = no_facts_utility(p, c, v, lab.length_bias)
                d[f"no_facts{v}"].append(u_c > no_facts_utility(p, r, v, lab.length_bias))
            d["sft_loglik"].append(loglik[i] > 0)
            d["style"].append(oracle_margin(p, c, r, style, lab.length_bias) > 0)
            d["content"].append(oracle_margin(p, c, r, {"content", "grounding"}, 0.0) > 0)
            d["same_content"].append(explain(p, c)["content"] == explain(p, r)["content"])
    best_v = max(MERGED_VALUES, key=lambda v: np.mean(rows["ALL"][f"no_facts{v}"]))
    cols = ("rm", "ceiling", "bayes", "no_facts", "style", "content", "sft_loglik", "same_content")
    print(f"{'family':<12}{'n':>6}" + "".join(f"{c:>{max(9, len(c) + 2)}}" for c in cols))
    for fam, d in sorted(rows.items()):
        d["no_facts"] = d[f"no_facts{best_v}"]
        print(f"{fam:<12}{len(d['rm']):>6}" + "".join(f"{np.mean(d[c]):>{max(9, len(c) + 2)}.3f}" for c in cols))
    print(
        f"bar (ceiling - 0.05): {np.mean(rows['ALL']['ceiling']) - 0.05:.3f}; no_facts uses content {best_v:+.1f} "
        "for any answer of the right kind"
    )


if __name__ == "__main__":
    main()
