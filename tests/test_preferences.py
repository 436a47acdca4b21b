"""Preference collection never writes an empty response into the pairs; it counts the samples it left out."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd


def test_empty_samples_are_left_out_and_counted(monkeypatch):
    from tasks import preferences

    prompts = pd.DataFrame({"id": ["a", "b", "c"], "prompt": ["Name a colour.", "Say hi.", "Count to two."]})
    samples = ["Blue.", "", "Red, I think.", "  \n", "", "Hello!", "", "", "One, two."]  # k = 3 per prompt
    monkeypatch.setattr(preferences, "read_prompts", lambda p: prompts)
    monkeypatch.setattr(preferences, "load_model", lambda *a, **k: SimpleNamespace(to=lambda device: None))
    monkeypatch.setattr(preferences, "ChatTokenizer", SimpleNamespace(load=lambda p: None))
    monkeypatch.setattr(preferences, "file_hash", lambda p: "hash")
    monkeypatch.setattr(preferences, "generate_text", lambda model, tok, texts, sampling, seed, progress=None: samples)
    from tests.test_params import section_values

    cfg = preferences.PreferenceParams(**{**section_values("preferences"), "k": 3})
    df, stats = preferences.collect_world(cfg)
    assert stats["empty_responses"] == 5
    assert (df["chosen"].str.strip() != "").all() and (df["rejected"].str.strip() != "").all()
    # prompt a keeps two answers (one pair), b keeps one (no pair), c keeps one (no pair)
    assert len(df) == 1 and set(df.loc[0, ["chosen", "rejected"]]) == {"Blue.", "Red, I think."}
    assert stats["pairs_dropped"] == 3 * 3 - 1
