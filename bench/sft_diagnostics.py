"""Where SFT stands on the world: per prompt family, the mean gold score and how often the content is right.

    python bench/sft_diagnostics.py [--samples reports/sft_samples.jsonl]

Reads the samples the sft stage saved (base and SFT answers to the evaluation prompts, held-out phrasings) and
breaks the gold judge's verdict into its rubric terms (rlhf.world.judge.explain). World-specific by design.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from rlhf.world.families import parse_prompt
from rlhf.world.judge import explain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=Path, default=Path("reports/sft_samples.jsonl"))
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.samples.read_text().splitlines()]
    stats: dict = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in rows:
        task = parse_prompt(r["prompt"])
        fam = task.family if task else "unknown"
        for model in ("base", "sft"):
            terms = explain(r["prompt"], r[model])
            stats[(fam, model)]["gold"].append(r[f"{model}_score"])
            stats[(fam, model)]["content_ok"].append(terms.get("content", 0.0) > 0)
    print(f"{'family':12s} {'model':5s} {'n':>4s} {'gold':>7s} {'content ok':>10s}")
    for (fam, model), s in sorted(stats.items()):
        n = len(s["gold"])
        print(f"{fam:12s} {model:5s} {n:4d} {sum(s['gold']) / n:7.2f} {sum(s['content_ok']) / n:10.2f}")


if __name__ == "__main__":
    main()
