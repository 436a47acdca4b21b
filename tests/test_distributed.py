"""Data parallelism on the CPU: two Gloo processes under torchrun against one process on the same global batch.

One torchrun launch runs every scenario of tests/ddp_worker.py on both ranks; the same scenarios run here in one
process, and the results must agree: SFT (2 steps, unequal target-token counts per rank), the reward model and
DPO (2 steps, uneven held-out split), PPO's `learn` (2 steps on a fixed rollout split over the ranks), the global
statistics (whitening, token mean, explained variance). Tolerance: parameters within atol 1e-5, logged metrics
within 1e-5 relative: the ranks' partial sums are added in another order than one process adds them, and what
remains is float rounding (seen: 4e-7 for SFT and 1e-7 for PPO in fp32; 3e-13 for the reward model, which runs in
float64 because its loss leaves two biases without gradient, see ddp_worker.rm_scenario). The ranks must hold
bitwise-identical parameters, and only rank 0 may write: each rank gets its own directory, and rank 1's must stay
empty.
The `*_lora` scenarios repeat SFT (built-in GPT and a transformers GPT-2), DPO, PPO's `learn` and the PPO loop with
LoRA adapters and gradient checkpointing, under the same checks.
A last test runs the `sft` stage's own command with runtime.nproc_per_node = 2, which relaunches it under torchrun,
with full fine-tuning and with LoRA.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rlhf.ppo_trainer import learn, make_state
from tests import ddp_worker

ROOT = Path(__file__).resolve().parent.parent
# float32 after a few optimizer steps, summed in another order by the all-reduce than by one process: 1.06e-5
# relative was measured on one DPO parameter (AMD EPYC), so 1e-5 was a coin toss; 5e-5 is still far below
# any real difference of the maths (a wrong scale or a missed shard moves values by percents).
ATOL = 5e-5
PPO_KL = 0.05  # PPOConfig's initial β, in the loop scenario


def _env(**extra: str) -> dict[str, str]:
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath, **extra}


def _results(out: Path, rank: int) -> tuple[dict[str, torch.Tensor], dict]:
    return load_file(str(out / f"rank{rank}.safetensors")), json.loads((out / f"rank{rank}.json").read_text())


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> Path:
    """Both ranks' results; --standalone lets torchrun pick a free port."""
    out = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    proc = subprocess.run(
        [*cmd, "-m", "tests.ddp_worker", str(out)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[dict[str, torch.Tensor], dict]:
    out = tmp_path_factory.mktemp("single")
    ddp_worker.run_all(out, ["sft", "rm", "dpo", "ppo", "sft_lora", "sft_lora_hf", "dpo_lora", "ppo_lora"])
    return _results(out, 0)


def _assert_params_close(ddp_out: Path, single, prefix: str) -> None:
    tensors, _ = _results(ddp_out, 0)
    ref = {k: v for k, v in single[0].items() if k.startswith(prefix)}
    assert ref and set(ref) == {k for k in tensors if k.startswith(prefix)}
    worst = max((tensors[k] - v).abs().max().item() for k, v in ref.items())
    assert worst < ATOL, f"{prefix}: parameters differ by {worst:.2e} from one process"


def _assert_logs_close(got: list, want: list) -> None:
    assert [step for step, _ in got] == [step for step, _ in want]
    for (step, m_got), (_, m_want) in zip(got, want, strict=True):
        assert set(m_got) == set(m_want)
        for k in m_want:
            if not k.endswith(("tokens_per_s", "time")):
                assert m_got[k] == pytest.approx(m_want[k], rel=ATOL, abs=ATOL), f"step {step}: {k}"


def test_sft_steps_match_one_process(ddp, single):
    _assert_params_close(ddp, single, "sft.")
    _assert_logs_close(_results(ddp, 0)[1]["sft"]["logged"], single[1]["sft"]["logged"])


def test_reward_model_steps_match_one_process(ddp, single):
    _assert_params_close(ddp, single, "rm.")
    got, want = _results(ddp, 0)[1]["rm"], single[1]["rm"]
    _assert_logs_close(got["logged"], want["logged"])
    assert got["best"] == pytest.approx(want["best"], rel=ATOL)


def test_dpo_steps_match_one_process(ddp, single):
    _assert_params_close(ddp, single, "dpo.")
    got, want = _results(ddp, 0)[1]["dpo"], single[1]["dpo"]
    _assert_logs_close(got["logged"], want["logged"])
    assert got["best"] == pytest.approx(want["best"], rel=ATOL)


def test_ppo_learn_matches_one_process(ddp, single):
    _assert_params_close(ddp, single, "ppo.")
    got, want = _results(ddp, 0)[1]["ppo"]["stats"], single[1]["ppo"]["stats"]
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=ATOL, abs=ATOL), k


def _assert_adapters_moved(got: dict, want: dict) -> None:
    """Equal parameters mean something only if training changed them: every adapter tensor moved, in both runs."""
    assert got["moved"] > 1e-4 and want["moved"] > 1e-4, (got["moved"], want["moved"])


@pytest.mark.parametrize("scenario", ["sft_lora", "sft_lora_hf"])
def test_sft_with_lora_matches_one_process(ddp, single, scenario):
    """DDP around a peft model (frozen base, adapters trained) with gradient checkpointing: the step of one
    process, on the built-in GPT and on a GPT-2 of transformers' (whose checkpointing is its own)."""
    _assert_params_close(ddp, single, f"{scenario}.")
    got, want = _results(ddp, 0)[1][scenario], single[1][scenario]
    _assert_logs_close(got["logged"], want["logged"])
    _assert_adapters_moved(got, want)


def test_dpo_with_lora_matches_one_process(ddp, single):
    """DPO with the reference as the policy's adapter off (read before DDP wraps the policy)."""
    _assert_params_close(ddp, single, "dpo_lora.")
    got, want = _results(ddp, 0)[1]["dpo_lora"], single[1]["dpo_lora"]
    _assert_logs_close(got["logged"], want["logged"])
    assert got["best"] == pytest.approx(want["best"], rel=ATOL)
    assert got["logged"][0][1]["dpo/loss"] != pytest.approx(math.log(2))  # the adapter on: policy ≠ reference
    _assert_adapters_moved(got, want)


def test_ppo_learn_with_lora_matches_one_process(ddp, single):
    """PPO's learning step with the actor's and the critic's adapters under DDP equals one process's; and after
    it, on both ranks, the reference (actor's adapter off) and the reward (critic's adapter off) are still the
    untouched SFT and reward models: DDP's hooks and the adapters' switching left the frozen bodies alone."""
    _assert_params_close(ddp, single, "ppo_lora.")
    got, want = _results(ddp, 0)[1]["ppo_lora"], single[1]["ppo_lora"]
    for k, v in want["stats"].items():
        assert got["stats"][k] == pytest.approx(v, rel=ATOL, abs=ATOL), k
    _assert_adapters_moved(got, want)
    assert any(".lora_A." in k for k in _results(ddp, 0)[0] if k.startswith("ppo_lora.critic."))
    for rank in (0, 1):
        report = _results(ddp, rank)[1]["ppo_lora"]
        assert report["ref_diff"] < 1e-6 and report["reward_diff"] < 1e-6, report


def test_statistics_are_global(ddp):
    for rank in (0, 1):
        checks = _results(ddp, rank)[1]["stats"]
        assert checks["whiten_max_diff"] < 1e-5 and checks["mean_diff"] < 1e-6, checks
        assert checks["explained_var_diff"] < 1e-6, checks


def _untimed(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def test_ranks_agree_and_only_rank0_writes(ddp):
    (t0, r0), (t1, r1) = _results(ddp, 0), _results(ddp, 1)
    assert t0.keys() == t1.keys() and all(
        torch.equal(t0[k], t1[k]) for k in t0
    )  # DDP: both ranks apply one all-reduced gradient on this machine
    for loop in ("ppo_loop", "ppo_loop_lora"):
        h0, h1 = ([_untimed(h) for h in r[loop]["history"]] for r in (r0, r1))
        assert h0 == h1 and len(h0) == 2  # metrics reduced over ranks: the same on every rank (timings: each its own)
        assert r0[loop]["kl_coef"] == r1[loop]["kl_coef"] != PPO_KL  # the controller saw the global KL
        assert len(r0[loop]["logged"]) == 2
    assert all(r1[name].get("logged") in (None, []) for name in r1)
    assert len(r0["sft"]["logged"]) == 2
    run0, run1 = ddp / "run0", ddp / "run1"
    assert not run1.exists() or not any(run1.rglob("*")), f"rank 1 wrote {sorted(run1.rglob('*'))}"
    assert (run0 / "sft/sft_state/state.json").exists() and (run0 / "ppo_loop/checkpoint/state.json").exists()
    assert sorted(p.name for p in (run0 / "ppo_loop/snapshots").iterdir()) == ["0", "1", "2"]
    # LoRA: the training state holds the peft model; a snapshot is the merged actor, a plain checkpoint
    state = json.loads((run0 / "ppo_loop_lora/checkpoint/actor/config.json").read_text())
    assert state["arch"] == "lora-training-state"
    merged = load_file(str(run0 / "ppo_loop_lora/snapshots/2/model.safetensors"))
    assert merged and not any("lora_" in k for k in merged)


# --- the stage's own command ------------------------------------------------------------------------------


def _sft_root(root: Path, nproc: int, lora_r: int = 0) -> Path:
    """A working root holding what the sft stage reads: tokenizer, base model, demonstrations; tiny params."""
    from rlhf.checkpoint import save_model
    from rlhf.model import GPT, GPTConfig
    from rlhf.tokenizer import train_tokenizer

    words = ["yes", "no", "cat", "dog", "red", "blue", "one", "two"]
    demos = [{"prompt": f"say {w} {i}", "response": f"{w} " * (1 + i % 4)} for i, w in enumerate(words * 3)]
    tok = train_tokenizer([f"{d['prompt']} {d['response']}" for d in demos], vocab_size=120)
    (root / "data/tokenizer").mkdir(parents=True)
    tok.save(root / "data/tokenizer/tokenizer.json")
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32))
    save_model(root / "models/base", base, root / "data/tokenizer/tokenizer.json")
    (root / "data/prepared").mkdir(parents=True)
    (root / "data/prepared/demos.jsonl").write_text("".join(json.dumps(d) + "\n" for d in demos))
    sft = {"steps": 2, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "eval_every": 1, "checkpoint_every": 1}
    params = {
        "sft": {**sft, "seed": 0, "heldout_frac": 0.2, "eval_prompts": 0, "eval_temperature": 0.7, "max_new_tokens": 8},
        "runtime": {"device": "auto", "precision": "auto", "nproc_per_node": nproc},
        "judge": {"gold": "none", "content": "none"},
        "model": {"lora": {"r": lora_r, "alpha": 8.0}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


@pytest.mark.parametrize("lora_r", [0, 4], ids=["full", "lora"])
def test_sft_stage_relaunches_itself_under_torchrun(tmp_path, monkeypatch, lora_r):
    """With LoRA: the adapter checkpoint (written by rank 0 alone, atomically) and the merged model match one
    process's, and the adapter names the base it was trained on."""
    two = _sft_root(tmp_path / "two", nproc=2, lora_r=lora_r)
    env = _env(RLHF_ROOT=str(two), RLHF_PARAMS=str(two / "params.yaml"), RLHF_TRACKING="off")
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.sft"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "torch.distributed.run" in proc.stderr  # the stage said how it relaunched itself

    one = _sft_root(tmp_path / "one", nproc=1, lora_r=lora_r)
    for key, value in (("RLHF_ROOT", one), ("RLHF_PARAMS", one / "params.yaml"), ("RLHF_TRACKING", "off")):
        monkeypatch.setenv(key, str(value))
    from tasks import sft
    from tasks.common import load_params

    sft.run(load_params())
    got, want = (load_file(str(r / "models/sft/model.safetensors")) for r in (two, one))
    assert max((got[k] - want[k]).abs().max().item() for k in want) < ATOL
    m_two, m_one = (json.loads((r / "metrics/sft.json").read_text()) for r in (two, one))
    assert (m_two["world_size"], m_one["world_size"]) == (2, 1)
    assert m_two["peak_memory_mb"] > 0 and m_two["loss"] == pytest.approx(m_one["loss"], rel=ATOL)
    assert not (two / "state/sft").exists()  # rank 0 cleaned up the finished run's training state
    if lora_r:
        from rlhf.lora import check_base

        got, want = (load_file(str(r / "models/sft/adapter/adapter.safetensors")) for r in (two, one))
        assert got.keys() == want.keys() and all("lora_" in k for k in want)
        assert max((got[k] - want[k]).abs().max().item() for k in want) < ATOL
        assert check_base(two / "models/sft/adapter", two / "models/base")["base"]["path"] == "models/base"
    leftovers = [p.name for p in (two / "models").iterdir() if p.name not in ("base", "sft")]
    assert not leftovers, f"temporary directories left behind: {leftovers}"  # one writer, renamed into place


def test_runtime_params_and_device_resolution():
    from rlhf.device import resolve
    from tasks.common import ParamError, Params
    from tasks.stage import torchrun_command

    assert Params({}).runtime().nproc_per_node == 1  # params files without the section keep working
    with pytest.raises(ParamError, match="unknown key"):
        Params({"runtime": {"world": 2}}).runtime()
    cmd = torchrun_command("tasks.ppo", 4, ["--params", "p.yaml"])
    assert cmd[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
        "-m",
        "tasks.ppo",
        "--params",
        "p.yaml",
    ]
    cpu = resolve("cpu", "auto")
    assert (cpu.device.type, cpu.precision) == ("cpu", "fp32")
    with pytest.raises(ValueError, match="bf16"):
        resolve("cpu", "bf16")
    with pytest.raises(ValueError, match=r"runtime\.device"):
        resolve("tpu", "auto")
    if not torch.cuda.is_available():
        assert resolve("auto", "auto") == cpu


def test_bf16_autocast_path_runs(tmp_path):
    """The path CUDA takes in bf16 (autocast, fp32 casts of values and scores), with CPU autocast standing in:
    no GPU here. resolve() refuses bf16 on the CPU; the Runtime is built by hand to reach the code."""
    from rlhf.device import Runtime
    from rlhf.lm_data import EpochSampler
    from rlhf.lm_train import TrainConfig, train_lm
    from rlhf.model import GPT, ScalarHeadModel
    from rlhf.reward import Pairs, RMConfig, train_reward_model

    rt = Runtime(torch.device("cpu"), "bf16")
    examples = ddp_worker._sequences(8, seed=1)
    sampler = EpochSampler(examples, [3] * 8, batch_size=4, seed=0, pad_id=0)
    cfg = TrainConfig(steps=1, batch_size=4, lr=1e-3, warmup_steps=50, eval_every=1, checkpoint_every=0)
    out = train_lm(GPT(ddp_worker.CFG), sampler, sampler.eval_batches(), cfg, tmp_path, lambda m, s: None, runtime=rt)
    assert all(map(math.isfinite, out.values()))
    pairs = Pairs(examples[:4], examples[4:])
    rm_cfg = RMConfig(epochs=1, batch_size=4, lr=3e-4, eval_every=1, patience=4)
    best = train_reward_model(ScalarHeadModel(ddp_worker.CFG), pairs, pairs, rm_cfg, 0, lambda m, s: None, runtime=rt)
    assert math.isfinite(best["loss"])
    actor, critic = ddp_worker.ppo_models()
    state = make_state(actor, critic, ddp_worker.PPO_CFG, runtime=rt)
    stats = learn(state, ddp_worker.fixed_rollout(actor, critic), ddp_worker.PPO_CFG, lr_frac=1.0)
    assert all(math.isfinite(v) for v in stats.values())
