"""Hugging Face causal LMs from a local directory, behind the interface of `rlhf.model` and `rlhf.tokenizer`.

With `model.hf_path` set in params.yaml, the pipeline's base model is a `transformers` causal LM read from that
directory (config.json + weights + its tokenizer, as `save_pretrained` writes them). Nothing is ever downloaded:
every load is `local_files_only=True` with `HF_HUB_OFFLINE=1`, no remote code is trusted, and a missing or
invalid directory is an error naming the path and the params key.

    HFCausalLM          the actor / reference / SFT model: forward(idx, attention_mask, position_ids, cache)
                        -> logits (B, T, V), like `GPT`; incremental decoding through HF's DynamicCache
    HFScalarHeadModel   the reward model / critic: the LM's body (`base_model`) + Linear(C, 1), like
                        `ScalarHeadModel`: forward -> (B, T) values, score(idx, mask) -> (B,)
    HFChatTokenizer     AutoTokenizer with the interface of rlhf.backends.Tokenizer: the tokenizer's chat template
                        when it has one, else "User: {prompt}\\nAssistant: "; EOS its eos_token, pad its pad_token
                        (or EOS)

Checkpoints stay the project's format (rlhf.checkpoint): model.safetensors holds this module's state_dict,
config.json holds {"arch": "gpt" | "scalar", "backend": "hf", "model": HFModelConfig, "hf_config": the
transformers config}, and the tokenizer's files sit beside them. `transformers` is imported only here and only
when an HF model is used, so the default pipeline does not pay its import time (about 5 s).

Shapes as in rlhf.model: B batch, T tokens in this pass, S cache length + T, C width, V vocabulary.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from rlhf.backends import Tokenizer
from rlhf.model import check_context, default_positions, scalar_head
from rlhf.padding import last_token_index

PARAMS_KEY = "model.hf_path"
PLAIN_PROMPT = "User: {prompt}\nAssistant: "
"""the chat format of a tokenizer without a chat template"""
VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
"""one of them holds a saved tokenizer's vocabulary"""


@dataclass(frozen=True)
class HFModelConfig:
    """The sizes the pipeline reads from `model.cfg`, taken from the transformers config."""

    vocab_size: int
    """rows of the LM head (may exceed the tokenizer's length: padded vocabularies)"""
    block_size: int
    """longest sequence the pipeline feeds the model: params `model.block_size`, at most the model's context"""
    n_layer: int
    """transformer blocks"""
    n_head: int
    """attention heads"""
    n_embd: int
    """hidden size C (the scalar head's input)"""


def _transformers() -> Any:
    """Import transformers lazily, with the hub switched off for this process (no download, ever)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()  # the stages print their own progress lines
    return transformers


def check_dir(path: str | Path) -> Path:
    """The HF model directory, or a clear error naming it and the params key."""
    p = Path(path)
    hint = (
        "No download is attempted: put a transformers causal LM and its tokenizer there "
        "(model.save_pretrained(dir); tokenizer.save_pretrained(dir)), or set it to null for the built-in GPT."
    )
    if not p.is_dir():
        raise FileNotFoundError(f"{PARAMS_KEY} = {path}: no such directory. {hint}")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{PARAMS_KEY} = {path}: no config.json in that directory. {hint}")
    return p


def _disable_dropout(config: Any) -> None:
    """Zero every dropout rate of a transformers config: the RLHF stages run without dropout (PPO's ratio must be
    exactly 1 at its first step), like the built-in GPT's `model.dropout: 0`."""
    for key, value in config.to_dict().items():
        if isinstance(value, float) and ("dropout" in key or "pdrop" in key):
            setattr(config, key, 0.0)


def _model_config(config: Any, block_size: int, where: str) -> HFModelConfig:
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if context is not None and block_size > context:
        raise ValueError(
            f"{where}: model.block_size {block_size} exceeds the model's context of {context} tokens; lower it"
        )
    return HFModelConfig(
        vocab_size=config.vocab_size,
        block_size=block_size,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        n_embd=config.hidden_size,
    )


def _checkpoint_config(arch: str, cfg: HFModelConfig, hf_config: Any) -> dict[str, Any]:
    """config.json of a checkpoint (rlhf.checkpoint.write_model): the role, the sizes, the transformers config."""
    return {
        "arch": arch,
        "backend": "hf",
        "model": asdict(cfg),
        "hf_config": json.loads(hf_config.to_json_string(use_diff=False)),
    }


class HFCache:
    """The `cache=` object of `rlhf.generate` for an HF model: HF's DynamicCache plus the filled length."""

    def __init__(self, config: Any):
        self.pkv = _transformers().DynamicCache(config=config)
        self.length = 0  # positions filled so far, as in rlhf.model.KVCache


def _positions(idx: torch.Tensor, attention_mask: torch.Tensor | None, past: int) -> torch.Tensor:
    """Position ids (B, T) that follow the mask (left padding does not shift them), as rlhf.model does; HF's
    own default counts pads, which would give a left-padded row other positions than it has alone."""
    return default_positions(idx, attention_mask, past).expand(idx.shape[0], -1)


class HFCausalLM(nn.Module):
    """A transformers causal LM with the interface of `rlhf.model.GPT`."""

    def __init__(self, lm: nn.Module, cfg: HFModelConfig):
        super().__init__()
        self.lm = lm
        self.cfg = cfg

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: HFCache | None = None,
        last: int = 0,
    ) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, V), or (B, last, V); attention_mask (B, S) covers the cache too."""
        past = cache.length if cache is not None else 0
        check_context(past + idx.shape[1], self.cfg.block_size)
        if position_ids is None:
            position_ids = _positions(idx, attention_mask, past)
        out = self.lm(
            input_ids=idx,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache.pkv if cache is not None else None,
            use_cache=cache is not None,
            logits_to_keep=last,  # 0: every position
        )
        if cache is not None:
            cache.length = past + idx.shape[1]
        return out.logits  # (B, T, V)

    def new_cache(self, batch: int, max_len: int) -> HFCache:
        """The incremental-decoding cache rlhf.generate asks for (HF's grows as it goes: sizes unused)."""
        return HFCache(self.lm.config)

    def scalar_head(self, head_std: float | None = None) -> HFScalarHeadModel:
        """Brain surgery: a copy of the body with a fresh scalar head (ScalarHeadModel.from_lm calls this)."""
        return HFScalarHeadModel(copy.deepcopy(self.lm.base_model), self.cfg, head_std)

    def checkpoint_config(self) -> dict[str, Any]:
        return _checkpoint_config("gpt", self.cfg, self.lm.config)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class HFScalarHeadModel(nn.Module):
    """An HF body + Linear(C, 1): the reward model and the critic, with the interface of ScalarHeadModel."""

    def __init__(self, body: nn.Module, cfg: HFModelConfig, head_std: float | None = None):
        super().__init__()
        self.body = body
        self.cfg = cfg
        self.head = scalar_head(cfg.n_embd, head_std)

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """idx (B, T) -> one scalar per position (B, T)."""
        check_context(idx.shape[1], self.cfg.block_size)
        if position_ids is None:
            position_ids = _positions(idx, attention_mask, 0)
        hidden = self.body(input_ids=idx, attention_mask=attention_mask, position_ids=position_ids)
        head_in = hidden.last_hidden_state.to(self.head.weight.dtype)  # (B, T, C)
        return self.head(head_in).squeeze(-1)

    def score(self, idx: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """idx, attention_mask (B, T) -> (B,) the scalar at each row's last real token (left or right padded)."""
        values = self(idx, attention_mask)  # (B, T)
        return values.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)

    def checkpoint_config(self) -> dict[str, Any]:
        return _checkpoint_config("scalar", self.cfg, self.body.config)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def load_pretrained(path: str | Path, block_size: int) -> HFCausalLM:
    """The causal LM saved in directory `path` (params `model.hf_path`), in float32 with dropout off."""
    tf = _transformers()
    path = check_dir(path)
    try:
        config = tf.AutoConfig.from_pretrained(path, local_files_only=True)
        _disable_dropout(config)
        lm = tf.AutoModelForCausalLM.from_pretrained(path, config=config, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{PARAMS_KEY} = {path}: not a loadable transformers causal LM: {e}") from e
    return HFCausalLM(lm.eval(), _model_config(config, block_size, f"{PARAMS_KEY} = {path}"))


def from_checkpoint_config(config: dict[str, Any]) -> nn.Module:
    """An empty model (weights to be loaded) for a checkpoint's config.json with backend "hf"."""
    tf = _transformers()
    from transformers.initialization import no_init_weights

    hf_config = tf.AutoConfig.for_model(**config["hf_config"])
    cfg = HFModelConfig(**config["model"])
    auto = {"gpt": tf.AutoModelForCausalLM, "scalar": tf.AutoModel}.get(config["arch"])
    if auto is None:
        raise ValueError(f"unknown arch '{config['arch']}' for a Hugging Face checkpoint")
    # Real (uninitialised) tensors, so buffers computed in __init__ (rotary frequencies) stay right, but no random
    # init of weights the checkpoint replaces, the scalar head's included. no_init_weights also skips the tying of
    # the LM head to the embedding that init would do: tie_weights restores it before the state is loaded.
    with no_init_weights():
        body = auto.from_config(hf_config, dtype=torch.float32)
        body.tie_weights()
        return HFCausalLM(body, cfg) if config["arch"] == "gpt" else HFScalarHeadModel(body, cfg)


class HFChatTokenizer(Tokenizer):
    """An AutoTokenizer (fast) with the project's tokenizer interface and a chat format of its own."""

    def __init__(self, hf_tok: Any, where: str):
        self.hf = hf_tok
        if hf_tok.eos_token_id is None:
            raise ValueError(f"{where}: the tokenizer has no eos_token; set one (tokenizer.eos_token = ...)")
        self.eos_id = hf_tok.eos_token_id
        self.pad_id = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else self.eos_id

    @classmethod
    def load(cls, path: str | Path) -> HFChatTokenizer:
        tf = _transformers()
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no tokenizer directory (for {PARAMS_KEY}, a save_pretrained folder)")
        # Checked here: without its files, transformers 5 silently builds an empty tokenizer of the model's type.
        if not any((path / name).is_file() for name in VOCAB_FILES):
            raise FileNotFoundError(
                f"{path}: no tokenizer files ({', '.join(VOCAB_FILES)}); save the model's tokenizer there too "
                "(tokenizer.save_pretrained(dir))"
            )
        try:
            tok = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a loadable Hugging Face tokenizer: {e}") from e
        if not tok.is_fast:
            raise ValueError(f"{path}: a fast tokenizer (tokenizer.json) is needed; got {type(tok).__name__}")
        return cls(tok, str(path))

    def save(self, path: str | Path) -> None:
        """Write the tokenizer's files into directory `path` (tokenizer.json, tokenizer_config.json, ...)."""
        self.hf.save_pretrained(str(path))

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        return self.hf(text, add_special_tokens=False)["input_ids"]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.hf(texts, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Any) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def decode_plain(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

    def _vocab(self) -> Any:
        return self.hf.get_vocab()

    @property
    def control_strings(self) -> list[str]:
        """Its special tokens (BOS, EOS, pad, the chat template's markers when registered as special)."""
        added = [t.content for t in self.hf.added_tokens_decoder.values() if t.special]
        return sorted({*self.hf.all_special_tokens, *added})

    def encode_prompt(self, prompt: str) -> list[int]:
        """The tokens a policy is conditioned on: the chat template's user turn and assistant header."""
        if self.hf.chat_template:
            messages = [{"role": "user", "content": prompt}]
            # Rendered to text then encoded as is: the template writes its own BOS and markers.
            text = self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = PLAIN_PROMPT.format(prompt=prompt)
        return self.encode(text)


def export_tokenizer(hf_path: str | Path, out: Path) -> HFChatTokenizer:
    """The tokenizer stage with an HF model: the model's own tokenizer, written into `out` (a directory)."""
    from rlhf.io import atomic_dir

    tok = HFChatTokenizer.load(check_dir(hf_path))
    with atomic_dir(out) as tmp:
        tok.save(tmp)
    return tok
