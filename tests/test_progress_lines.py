"""Sampling for preferences and evaluation shows progress (rate, ETA) on stderr, and only when asked to."""

from __future__ import annotations

import re

import pytest
import torch

from rlhf.evaluation import sample_policy
from rlhf.generate import SamplingConfig, generate_text
from rlhf.model import GPT, GPTConfig
from rlhf.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def policy() -> tuple[GPT, object]:
    tok = train_tokenizer(["what is the cat", "the cat sat on the mat", "a dog ran"] * 30, 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    return model, tok


LINE = re.compile(r"^\[(\w+)\] (\d+)/(\d+) [\d.]+ responses/s elapsed \d+s eta \d+s$")


def lines(err: str) -> list[tuple[str, int, int]]:
    return [(m[1], int(m[2]), int(m[3])) for m in map(LINE.match, err.splitlines()) if m]


def test_generation_and_evaluation_sampling_report_progress(policy, capsys) -> None:
    model, tok = policy
    sampling = SamplingConfig(max_new_tokens=4, temperature=1.0)
    prompts = ["what is the cat", "a dog ran", "the mat"]
    generate_text(model, tok, prompts * 2, sampling, seed=1, batch_size=4, progress="preferences")
    assert lines(capsys.readouterr().err) == [("preferences", 6, 6)]  # the last batch always reports
    sample_policy(model, tok, prompts, ["1", "2", "3"], sampling, n_samples=2, seed=1, ref=model, batch_size=4)
    assert lines(capsys.readouterr().err) == [("sampling", 6, 6)]


def test_no_progress_unless_asked(policy, capsys) -> None:
    model, tok = policy
    sampling = SamplingConfig(max_new_tokens=4, temperature=1.0)
    generate_text(model, tok, ["a dog ran"], sampling, seed=1)
    sample_policy(model, tok, ["a dog ran"], ["1"], sampling, n_samples=1, seed=1, progress=None)
    assert capsys.readouterr().err == ""
