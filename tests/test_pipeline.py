"""Every stage's real entry point, in order, on tiny params in a temporary working root."""

import json
from pathlib import Path

import pandas as pd
import pytest

from rlhf.world.families import FAMILIES
from tests.conftest import working_root

FIXTURE = Path(__file__).parent / "fixtures" / "params_tiny.yaml"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root, mp = working_root(tmp_path_factory, "pipeline", FIXTURE.read_text())
    yield root
    mp.undo()


def _params():
    from tasks.common import load_params

    return load_params()


def test_stages_run_in_order(root, monkeypatch):
    from tasks import (
        compare_methods,
        dpo,
        evaluate,
        merge_feedback,
        ppo,
        preferences,
        prepare,
        pretrain,
        reward_model,
        sft,
        tokenizer,
        validate,
        world,
    )
    from tasks.common import Params

    params = _params()
    world.run(Params(params).section("world", world.WorldConfig))
    prepare.run(Params(params).section("data", prepare.DataParams))
    tokenizer.run(Params(params).section("tokenizer", tokenizer.TokenizerParams))
    validate.run(
        "demos",
        root / "data/prepared/demos.jsonl",
        root / "data/tokenizer/tokenizer.json",
        root / "data/prepared/prompts_eval.jsonl",
        block_size=160,
        min_rows=10,
        report_dir=root / "reports/validation",
    )
    pretrain.run(params)
    m_sft = sft.run(params)
    assert {"gold_score_base", "gold_score_sft", "val_loss"} <= set(m_sft)
    assert {"content_correct_base", "content_correct_sft"} <= set(m_sft)
    assert m_sft["content"]["sft"]["n"] == params["sft"]["eval_prompts"] and set(
        m_sft["content"]["sft"]["by_group"]
    ) <= set(FAMILIES)
    m_pref = preferences.run(params)
    m_merged = merge_feedback.run(params)
    pairs = pd.read_parquet(root / "data/preferences/pairs.parquet")
    assert len(pairs) == m_pref["n_pairs"] == m_merged["n_pairs"] > 0  # no feedback yet
    assert (pairs["chosen"] != pairs["rejected"]).all()
    m_rm = reward_model.run(params)
    assert {"accuracy", "ceiling", "spearman_gold"} <= set(m_rm)
    m_dpo = dpo.run(params)
    assert {"loss", "val_loss", "val_accuracy", "val_margin", "seconds", "peak_memory_mb"} <= set(m_dpo)
    assert m_dpo["n_val"] == m_rm["n_val"]  # the reward model's held-out pairs
    assert not (root / "state/dpo").exists()  # the training state goes once the model is written
    m_ppo = ppo.run(params)
    assert {"kl", "rm_score", "gold_score", "sft_rm_score", "sft_gold_score"} <= set(m_ppo)
    assert sorted(p.name for p in (root / "models/ppo/snapshots").iterdir()) == ["iter_0000", "iter_0001", "iter_0002"]
    evaluate.run(params)
    ev = json.loads((root / "metrics/eval.json").read_text())
    for judge in ("gold", "rm"):
        assert set(ev[judge]) == {"win_rate", "ci_low", "ci_high", "n"}
        assert 0.0 <= ev[judge]["ci_low"] <= ev[judge]["win_rate"] <= ev[judge]["ci_high"] <= 1.0
    assert set(ev["length"]) == {"candidate", "baseline"}
    for side in ("candidate", "baseline"):  # content: shares of right and on-topic answers, per family
        c = ev["content"][side]
        assert c["n"] == ev["gold"]["n"] and 0.0 <= c["correct"] <= c["on_topic"] <= 1.0
        assert sum(g["n"] for g in c["by_group"].values()) == c["n"]
    assert "## Content" in (root / "reports/eval/report.md").read_text()
    # KL at temperature 1 (what PPO's penalty controls) and, beside it, between the tempered policies
    assert ev["kl"] >= -0.5 and "kl_eval_temperature" in ev and ev["kl"] != ev["kl_eval_temperature"]
    assert {"reward_mean", "reward_std"} <= set(m_ppo)
    assert (root / "reports/eval/report.md").read_text().startswith("# Evaluation report")
    sampled = []  # checkpoints compare_methods samples: DPO once, though both of its comparisons use it
    real_sample = evaluate.sample_policy
    monkeypatch.setattr(evaluate, "sample_policy", lambda m, *a, **k: sampled.append(m) or real_sample(m, *a, **k))
    cmp = compare_methods.run(params)
    # dpo, sft and ppo once each, and each comparison's candidate at temperature 1 for its KL: 5, not 6
    assert len(sampled) == 5
    dpo_side = [json.loads(line) for line in (root / "reports/compare/dpo_vs_sft/samples.jsonl").open()]
    ppo_side = [json.loads(line) for line in (root / "reports/compare/ppo_vs_dpo/samples.jsonl").open()]
    assert [r["candidate"] for r in dpo_side] == [r["baseline"] for r in ppo_side]
    ev_dpo = json.loads((root / "metrics/eval_dpo.json").read_text())
    assert set(ev_dpo) == set(ev) and set(ev_dpo["gold"]) == set(ev["gold"])  # the shape of eval.json
    assert cmp["dpo"]["gold"] == ev_dpo["gold"] and cmp["ppo"]["gold"] == ev["gold"]
    assert set(cmp["ppo_vs_dpo"]) == {"win_rate", "ci_low", "ci_high", "n"} and cmp["ppo_vs_dpo"]["n"] == 8
    assert cmp["heldout_pairs"]["reward_model_accuracy"] == m_rm["accuracy"]
    assert "| KL from SFT" in (root / "reports/compare/report.md").read_text()
    plots = ("ppo_curves.png", "overoptimization.png", "rm_calibration.png", "ppo_curves.csv", "compare_methods.png")
    for plot in plots:
        assert (root / "plots" / plot).stat().st_size > 0


def test_bad_demos_row_is_named_and_nothing_is_overwritten(root):
    from rlhf.data import DataError
    from tasks import prepare
    from tasks.common import Params

    before = {p: p.read_bytes() for p in (root / "data/prepared").iterdir()}
    bad = root / "data/user/demos.jsonl"
    bad.write_text('{"prompt": "hi", "response": "hello"}\n{"prompt": "x", "response": \n')
    params = _params()
    params["data"]["demos"] = "data/user/demos.jsonl"
    with pytest.raises(DataError, match=r"demos.jsonl: line 2"):
        prepare.run(Params(params).section("data", prepare.DataParams))
    assert {p: p.read_bytes() for p in (root / "data/prepared").iterdir()} == before
