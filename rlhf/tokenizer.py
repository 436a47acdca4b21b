"""Byte-level BPE (Hugging Face `tokenizers`) with the project's one chat format.

The format, used by SFT, the reward model, PPO and evaluation alike:

    <|user|>{prompt}<|assistant|>{response}<|eos|>

`encode_prompt` gives the part up to and including `<|assistant|>` (what a policy is conditioned on) and
`encode_response` the rest. Byte-level BPE maps every byte to a token, so any Unicode string round-trips.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as BPE
from tokenizers import decoders, models, pre_tokenizers, trainers

from rlhf.backends import Tokenizer

PAD, EOS, USER, ASSISTANT = "<|pad|>", "<|eos|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = [PAD, EOS, USER, ASSISTANT]  # ids 0..3, in this order
HF_TOKENIZER_CONFIG = "tokenizer_config.json"  # marks a Hugging Face tokenizer's directory
CONTROL_PATTERN = r"<\|[^|\s<>]{1,64}\|>"
"""the `<|name|>` shape of our markers and of most chat formats' (`<|endoftext|>`, `<|im_start|>`)"""


def control_regex(controls: Iterable[str] = SPECIAL_TOKENS) -> str:
    """One regex matching any of `controls` (a tokenizer's `control_strings`) or any `<|name|>` string.

    User text that contains one is refused (by import, the gate and the served actor) rather than escaped: the
    tokenizer would encode it as the control token itself, forging a turn boundary or an EOS, and a user's
    text with such a string in it is a transcript of another chat format or an injection; either way the
    user must decide what it means, and silently rewriting it would train on text the user never wrote."""
    alternatives = [re.escape(c) for c in sorted({c for c in controls if c.strip()}, key=len, reverse=True)]
    return "|".join([*alternatives, CONTROL_PATTERN])


def find_control(text: str, controls: Iterable[str] = SPECIAL_TOKENS) -> str | None:
    """The first control string in `text` (see control_regex), or None when it is plain text."""
    m = re.search(control_regex(controls), text)
    return m.group(0) if m else None


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> ChatTokenizer:
    """Train a byte-level BPE of `vocab_size` tokens (specials included) on an iterator of texts."""
    tok = BPE(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever unknown
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return ChatTokenizer(tok)


class ChatTokenizer(Tokenizer):
    """The built-in tokenizer: a byte-level BPE `tokenizers.Tokenizer`, the special ids and the chat format."""

    def __init__(self, tok: BPE):
        self.tok = tok
        ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
        if None in ids:
            raise ValueError(f"tokenizer lacks the special tokens {SPECIAL_TOKENS}")
        self.pad_id, self.eos_id, self.user_id, self.assistant_id = ids

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """The one tokenizer loader: tokenizer.json, or a directory holding it. Beside a tokenizer_config.json it
        is a Hugging Face tokenizer (params `model.hf_path`), loaded as rlhf.hf.HFChatTokenizer with its own chat
        format (rlhf.hf does not import this module: no cycle)."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        if (folder / HF_TOKENIZER_CONFIG).is_file():
            from rlhf.hf import HFChatTokenizer

            return HFChatTokenizer.load(folder)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no tokenizer file (run the tokenizer stage first)")
        return cls(BPE.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        from rlhf.io import write_text

        write_text(path, self.tok.to_str())

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def _vocab(self) -> Iterable[str]:
        return self.tok.get_vocab()

    @property
    def control_strings(self) -> list[str]:
        """Every string this tokenizer encodes as a special token when it appears in text."""
        return sorted(t.content for t in self.tok.get_added_tokens_decoder().values() if t.special)

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids (special-token strings inside the text become their special ids)."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def encode_prompt(self, prompt: str) -> list[int]:
        return [self.user_id, *self.encode(prompt), self.assistant_id]

    def decode_plain(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)
