"""The tokenizer round-trips any Unicode and keeps the chat format's special tokens apart."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.tokenizer import ChatTokenizer, train_tokenizer

TEXTS = ["The capital of Peru is Lima.", "What is 7 plus 5? A) 10 B) 12", "Sure! Happy to help."] * 20


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=300)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_arbitrary_unicode(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_chat_format(tok):
    p, r = tok.encode_prompt("Hi?"), tok.encode_response("Hello.")
    assert p[0] == tok.user_id and p[-1] == tok.assistant_id
    assert r[-1] == tok.eos_id
    assert tok.decode(p + r) == "<|user|>Hi?<|assistant|>Hello.<|eos|>"
    assert tok.decode_response([*r, tok.pad_id, 42]) == "Hello."
    assert (tok.pad_id, tok.eos_id, tok.user_id, tok.assistant_id) == (0, 1, 2, 3)


def test_save_load(tok, tmp_path):
    tok.save(tmp_path / "tokenizer.json")
    again = ChatTokenizer.load(tmp_path)
    assert again.encode("Lima, Peru") == tok.encode("Lima, Peru")
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        ChatTokenizer.load(tmp_path / "missing")
