"""Stage `tokenizer`: train the byte-level BPE on the corpus and the demonstrations."""

from __future__ import annotations

import json
from dataclasses import dataclass

from rlhf.tokenizer import train_tokenizer
from tasks.common import cli, load_params, path, section


@dataclass(frozen=True)
class TokenizerParams:
    vocab_size: int = 2048
    """tokens, special tokens included"""


def texts() -> list[str]:
    """Corpus documents, then every prompt and response of the demonstrations."""
    corpus = path("data/prepared/corpus.txt").read_text(encoding="utf-8")
    out = [d for d in corpus.split("\n\n") if d]
    with open(path("data/prepared/demos.jsonl"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            out += [row["prompt"], row["response"]]
    return out


def run(cfg: TokenizerParams) -> dict:
    tok = train_tokenizer(texts(), cfg.vocab_size)
    tok.save(path("data/tokenizer/tokenizer.json"))
    return {"vocab_size": tok.vocab_size}


def main() -> None:
    cli(__doc__)
    print(run(section(load_params(), "tokenizer", TokenizerParams)))


if __name__ == "__main__":
    main()
