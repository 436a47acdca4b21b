"""tasks/summary.py: the headline numbers from the evaluation metrics, and what is left out when missing."""

from __future__ import annotations

from tasks.summary import headline, numbers

GOLD_PPO = {"win_rate": 0.84875, "ci_low": 0.8125, "ci_high": 0.8825, "n": 400}
GOLD_DPO = {"win_rate": 0.695, "ci_low": 0.65371875, "ci_high": 0.74, "n": 400}
CONTENT = {
    "candidate": {"correct": 0.25, "on_topic": 0.5, "n": 8, "by_group": {}},
    "baseline": {"correct": 0.125, "on_topic": 0.75, "n": 8, "by_group": {}},
}


def test_the_headline_of_a_whole_pipeline() -> None:
    ppo = {"gold": GOLD_PPO, "rm": {"win_rate": 0.97, "ci_low": 0.95}, "kl": 5.060212, "content": CONTENT}
    dpo = {"gold": GOLD_DPO, "kl": 3.571028, "content": {"candidate": {"correct": 0.375}}}
    compare = {"ppo_vs_dpo": {"win_rate": 0.7525, "ci_low": 0.70996875}, "ppo": {"seconds": 126.2}}
    rm = {"accuracy": 0.6897590361, "seconds": 189.1, "peak_memory_mb": 1358.4}
    assert headline(ppo, dpo, compare, rm) == {
        "win": {"ppo": 0.8488, "dpo": 0.695, "ppo_dpo": 0.7525},
        "low": {"ppo": 0.8125, "dpo": 0.6537},
        "correct": {"ppo": 0.25, "dpo": 0.375, "sft": 0.125},
        "kl": {"ppo": 5.06, "dpo": 3.571},
        "rm_acc": 0.6898,
    }


def test_missing_numbers_are_left_out_and_the_reward_model_judges_without_gold() -> None:
    ppo = {"rm": {"win_rate": 0.6, "ci_low": 0.55}, "kl": 1.0, "content": {"candidate": {"correct": None}}}
    assert headline(ppo, {}, {}, {}) == {"win": {"ppo": 0.6}, "low": {"ppo": 0.55}, "kl": {"ppo": 1.0}}
    assert headline({}, {}, {}, {}) == {}


def test_numbers_flatten_to_mlflow_metric_names() -> None:
    flat = numbers({"judge": "gold", "ppo_vs_sft": {"win_rate": 0.8, "ci_low": 0.7}, "rm_accuracy": 0.69})
    assert flat == {
        "headline/ppo_vs_sft/win_rate": 0.8,
        "headline/ppo_vs_sft/ci_low": 0.7,
        "headline/rm_accuracy": 0.69,
    }
