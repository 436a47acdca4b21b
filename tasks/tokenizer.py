"""Stage `tokenizer`: train the byte-level BPE on the corpus and the demonstrations.

With `model.hf_path` set, the Hugging Face model's own tokenizer is used instead: its files are copied into
data/tokenizer/ (tokenizer.json, tokenizer_config.json, ...), and nothing is trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rlhf.io import atomic_dir
from rlhf.tokenizer import train_tokenizer
from tasks.common import Params, model_free_entry, path

OUT = "data/tokenizer"


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


def run(cfg: TokenizerParams, hf_path: str | None = None) -> dict:
    if hf_path:
        from rlhf.hf import export_tokenizer

        return {"vocab_size": export_tokenizer(path(hf_path), path(OUT)).vocab_size}
    tok = train_tokenizer(texts(), cfg.vocab_size)
    # The whole directory is replaced, so no file of an earlier HF tokenizer stays beside the new BPE.
    with atomic_dir(path(OUT)) as tmp:
        tok.save(tmp / "tokenizer.json")
    return {"vocab_size": tok.vocab_size}


def configure(p: Params) -> tuple[TokenizerParams, str | None]:
    return p.section("tokenizer", TokenizerParams), p.value("model.hf_path")


main = model_free_entry("tokenizer", __doc__, configure, lambda c: run(*c))


if __name__ == "__main__":
    main()
