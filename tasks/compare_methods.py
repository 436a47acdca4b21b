"""Stage `compare_methods`: DPO against SFT and PPO against DPO, with the evaluate stage's machinery.

Both comparisons are `tasks.evaluate.run` on other checkpoints (the same prompts, decoding, judges, bootstrap
and report as PPO's evaluation), so the methods are judged alike:
    DPO vs SFT  -> metrics/eval_dpo.json (the shape of metrics/eval.json), reports/compare/dpo_vs_sft/
    PPO vs DPO  -> reports/compare/ppo_vs_dpo/
and the two methods side by side, with their training cost, in metrics/compare_methods.json,
reports/compare/report.md and plots/compare_methods.png. PPO's figures against SFT are the evaluate stage's
(metrics/eval.json); its cost includes the reward model it needs, which DPO does not.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from rlhf.io import write_json, write_text
from tasks import evaluate
from tasks.common import Params, path
from tasks.plots import plot_methods
from tasks.stage import entry, lifecycle

OUT = "reports/compare"
WIN = ("win_rate", "ci_low", "ci_high", "n")


def _read(rel: str) -> dict[str, Any]:
    return json.loads(path(rel).read_text())


def method_summary(vs_sft: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """Win-rates against SFT under each judge, KL from SFT, mean length and training seconds of one method."""
    out: dict[str, Any] = {j: {k: vs_sft[j][k] for k in WIN} for j in ("gold", "rm") if j in vs_sft}
    return {**out, "kl": vs_sft["kl"], "length": vs_sft["length"]["candidate"], "seconds": train["seconds"]}


configure = evaluate.configure  # the evaluate stage's params, judge and runtime: the methods are judged alike


def run(params: dict) -> dict:
    p = Params(params)
    conf = configure(p)
    with torch.no_grad(), lifecycle("compare_methods", p, conf.runtime, ddp=False) as ctx:
        samples: dict = {}  # DPO's samples serve both comparisons
        eval_dpo = evaluate.evaluate(conf, ctx, "models/dpo", "models/sft", f"{OUT}/dpo_vs_sft", samples)
        write_json(path("metrics/eval_dpo.json"), eval_dpo)
        head = evaluate.evaluate(conf, ctx, "models/ppo/actor", "models/dpo", f"{OUT}/ppo_vs_dpo", samples)
    return summarise(eval_dpo, head)


def summarise(eval_dpo: dict[str, Any], head: dict[str, Any]) -> dict[str, Any]:
    """The two methods side by side (metrics/compare_methods.json, its report and plot)."""
    judge = "gold" if "gold" in head else "rm"
    rm_metrics, dpo_metrics = _read("metrics/reward_model.json"), _read("metrics/dpo.json")
    ppo = method_summary(_read("metrics/eval.json"), _read("metrics/ppo.json"))
    ppo["reward_model_seconds"] = rm_metrics["seconds"]  # PPO cannot run without it
    result = {
        "judge": judge,
        "ppo_vs_dpo": {k: head[judge][k] for k in WIN},
        "ppo": ppo,
        "dpo": method_summary(eval_dpo, dpo_metrics),
        "heldout_pairs": {
            "n": dpo_metrics["n_val"],
            "dpo_implicit_reward_accuracy": dpo_metrics["val_accuracy"],
            "reward_model_accuracy": rm_metrics["accuracy"],
        },
    }
    plot_methods(result, path("plots/compare_methods.png"))
    write_text(path(f"{OUT}/report.md"), report(result))
    write_json(path("metrics/compare_methods.json"), result)
    return result


def _win(r: dict[str, Any] | None) -> str:
    return f"{r['win_rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if r else "–"


def report(result: dict[str, Any]) -> str:
    ppo, dpo, head, held = result["ppo"], result["dpo"], result["ppo_vs_dpo"], result["heldout_pairs"]
    plot = os.path.relpath(path("plots/compare_methods.png"), path(OUT))
    rows = [
        ("gold win-rate vs SFT [95% CI]", _win(ppo.get("gold")), _win(dpo.get("gold"))),
        ("RM win-rate vs SFT [95% CI]", _win(ppo.get("rm")), _win(dpo.get("rm"))),
        ("KL from SFT (nats per response)", f"{ppo['kl']:.2f}", f"{dpo['kl']:.2f}"),
        ("mean response length (tokens)", f"{ppo['length']:.1f}", f"{dpo['length']:.1f}"),
        (
            "training seconds",
            f"{ppo['seconds']:.0f} (+{ppo['reward_model_seconds']:.0f} reward model)",
            f"{dpo['seconds']:.0f}",
        ),
    ]
    lines = [
        "# PPO and DPO side by side",
        "",
        "Both start from the same SFT model and learn from the same preference pairs; both are judged on the same "
        "held-out evaluation prompts with the same decoding, judges and bootstrap as `reports/eval/report.md` "
        "(PPO vs SFT). Details and answers: `dpo_vs_sft/report.md`, `ppo_vs_dpo/report.md`.",
        "",
        "| | PPO | DPO |",
        "|---|---|---|",
        *[f"| {name} | {a} | {b} |" for name, a, b in rows],
        "",
        f"**PPO against DPO head to head** ({result['judge']} judge): win-rate {_win(head)}, n = {head['n']}.",
        "",
        f"On the {held['n']} held-out preference pairs (the reward model's held-out prompts), DPO's implicit "
        f"reward ranks the chosen answer first in {held['dpo_implicit_reward_accuracy']:.1%} of pairs; the reward "
        f"model in {held['reward_model_accuracy']:.1%}.",
        "",
        f"![PPO and DPO against SFT]({plot})",
    ]
    return "\n".join(lines) + "\n"


main = entry("tasks.compare_methods", __doc__, run, ddp=False)


if __name__ == "__main__":
    main()
