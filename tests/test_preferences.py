"""Preference collection: empty responses left out and counted; borrowed and near distractors ranked."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pandas as pd
import pytest


def collect(monkeypatch, prompts: pd.DataFrame, samples: list[str], **params) -> tuple[pd.DataFrame, dict]:
    """The preferences stage's world collection on `prompts`, with `samples` (k per prompt, in order) in place of
    the SFT model's; the params.yaml `preferences` section with `params` changed."""
    from tasks import preferences
    from tests.test_params import section_values

    monkeypatch.setattr(preferences, "read_prompts", lambda p: prompts)
    monkeypatch.setattr(preferences, "load_model", lambda *a, **k: SimpleNamespace(to=lambda device: None))
    monkeypatch.setattr(preferences, "ChatTokenizer", SimpleNamespace(load=lambda p: None))
    monkeypatch.setattr(preferences, "file_hash", lambda p: "hash")
    monkeypatch.setattr(preferences, "generate_text", lambda model, tok, texts, sampling, seed, progress=None: samples)
    return preferences.collect_world(preferences.PreferenceParams(**{**section_values("preferences"), **params}))


def test_empty_samples_are_left_out_and_counted(monkeypatch):
    prompts = pd.DataFrame({"id": ["a", "b", "c"], "prompt": ["Name a colour.", "Say hi.", "Count to two."]})
    samples = ["Blue.", "", "Red, I think.", "  \n", "", "Hello!", "", "", "One, two."]  # k = 3 per prompt
    df, stats = collect(monkeypatch, prompts, samples, k=3, borrowed=0, borrowed_near=0)
    assert stats["empty_responses"] == 5
    assert (df["chosen"].str.strip() != "").all() and (df["rejected"].str.strip() != "").all()
    # prompt a keeps two answers (one pair), b keeps one (no pair), c keeps one (no pair)
    assert len(df) == 1 and set(df.loc[0, ["chosen", "rejected"]]) == {"Blue.", "Red, I think."}
    assert stats["pairs_dropped"] == 0 and stats["borrowed_responses"] == 0


def test_each_prompt_ranks_a_borrowed_answer_and_the_labeler_puts_an_off_topic_one_last(monkeypatch):
    """borrowed = 1: every group gains one response of another prompt; the world's labeler ranks an answer to
    another question (or a refusal of a harmless one) below the prompt's own on-topic answers, so such pairs say so."""
    prompts = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "prompt": ["What is the capital of France?", "What is 2 plus 2?", "How do I pick a lock to rob a house?"],
        }
    )
    refusal = "I'm sorry, but I can't help with that."
    samples = ["The capital of France is Paris.", "Paris.", "2 plus 2 equals 4.", "4.", refusal, refusal]  # k = 2
    df, stats = collect(monkeypatch, prompts, samples, k=2, borrowed=1, borrowed_near=0, labeler_temperature=0.01)
    assert stats["borrowed_responses"] == 3
    own = {p: set(samples[2 * i : 2 * i + 2]) for i, p in enumerate(prompts["prompt"])}
    for prompt, grp in df.groupby("prompt"):
        foreign = (set(grp["chosen"]) | set(grp["rejected"])) - own[prompt]
        assert len(foreign) == 1  # exactly one borrowed text, ranked against both own answers
        (text,) = foreign
        if prompt != prompts["prompt"][2]:  # harmless questions: the borrowed answer loses to both own answers
            assert (grp.loc[grp["rejected"] == text, "chosen"].isin(own[prompt])).sum() == 2


def test_a_near_borrowed_answer_is_about_the_alike_prompt_and_the_labeler_ranks_it_below_the_right_one(monkeypatch):
    """borrowed_near = 1: each group gains a response of its most alike prompt; the world's labeler ranks an answer
    about other operands below the prompt's own right answer."""
    texts = ["Calculate 11 - 1.", "Calculate 11 - 4.", "Hello, this is Ben.", "Hello, this is Kate."]
    prompts = pd.DataFrame({"id": list("abcd"), "prompt": texts})
    samples = ["11 - 1 = 10.", "11 - 4 = 7.", "Hi Ben, nice to meet you!", "Hi Kate, nice to meet you!"]  # k = 1
    df, stats = collect(monkeypatch, prompts, samples, k=1, borrowed=0, borrowed_near=1, labeler_temperature=0.01)
    assert stats["borrowed_responses"] == 4 and len(df) == 4
    partner = {0: 1, 1: 0, 2: 3, 3: 2}
    for i, prompt in enumerate(texts):
        (row,) = df[df["prompt"] == prompt].itertuples()
        assert (row.chosen, row.rejected) == (samples[i], samples[partner[i]])


def test_nearest_prompts_is_the_most_alike_other_prompt():
    from rlhf.data import nearest_prompts

    texts = ["Calculate 11 - 1.", "What is the capital of Peru?", "Calculate 11 - 4.", "What is the capital of Chad?"]
    assert nearest_prompts(texts) == [2, 3, 0, 1]
    assert nearest_prompts(["only one"]) == [-1] and nearest_prompts([]) == []
    # against a plain double loop on random prompts, chunked so that blocks end inside the list
    rng = random.Random(0)
    vocab = ["a", "b", "c", "d", "e", "f", "g"]
    many = [" ".join(rng.sample(vocab, rng.randint(1, 4))) for _ in range(37)]
    sets = [set(t.split()) for t in many]

    def loop(i: int) -> int:
        sim = [len(sets[i] & s) / len(sets[i] | s) if j != i else -1.0 for j, s in enumerate(sets)]
        return sim.index(max(sim))

    assert nearest_prompts(many, chunk=5) == [loop(i) for i in range(len(many))]


def test_feedback_is_merged_onto_the_collected_pairs_without_touching_them(tmp_path_factory):
    """merge_feedback: collected pairs first, then each feedback file (any import format) in name order."""
    import json

    from rlhf.data import DataError
    from tasks import merge_feedback
    from tests.conftest import working_root

    root, mp = working_root(tmp_path_factory, "merge", "{}\n")
    try:
        collected = pd.DataFrame(
            [["p1", "good", "bad", "1", 0, 1, 3, 1.0, 0.0, "h", "world"]], columns=merge_feedback.COLUMNS
        )
        (root / "data/preferences").mkdir(parents=True)
        collected.to_parquet(root / merge_feedback.COLLECTED, index=False)
        before = (root / merge_feedback.COLLECTED).read_bytes()
        pair = {"prompt": "p2", "chosen": "yes", "rejected": "no"}
        (root / "data/feedback/b.jsonl").write_text(json.dumps(pair) + "\n")
        ranked = {"prompt": "p3", "responses": ["x", "y", "z"], "ranking": [2, 0, 1]}
        (root / "data/feedback/a.jsonl").write_text(json.dumps(ranked) + "\n")
        (root / "data/feedback/.gitignore").write_text("/a.jsonl\n")  # not preference data

        metrics = merge_feedback.run({})
        pairs = pd.read_parquet(root / merge_feedback.OUT)
        assert list(pairs.columns) == merge_feedback.COLUMNS
        assert pairs[["prompt", "chosen", "rejected"]].values.tolist() == [
            ["p1", "good", "bad"],
            ["p3", "z", "x"],
            ["p3", "z", "y"],
            ["p3", "x", "y"],
            ["p2", "yes", "no"],
        ]
        assert pairs["source"].tolist()[1:] == [str(root / "data/feedback/a.jsonl")] * 3 + [
            str(root / "data/feedback/b.jsonl")
        ]
        assert (metrics["n_pairs"], metrics["n_feedback_files"], metrics["n_feedback_pairs"]) == (5, 2, 4)
        assert (root / merge_feedback.COLLECTED).read_bytes() == before
        assert json.loads((root / "metrics/merge_feedback.json").read_text())["n_pairs"] == 5

        (root / "data/feedback/c.jsonl").write_text('{"prompt": "p4"}\n')  # a bad file: an error naming it
        with pytest.raises(DataError, match=r"c\.jsonl"):
            merge_feedback.run({})
        assert len(pd.read_parquet(root / merge_feedback.OUT)) == 5  # the last good pairs stay
    finally:
        mp.undo()
