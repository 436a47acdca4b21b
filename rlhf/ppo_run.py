"""Running PPO for many iterations: progress, monitoring, snapshots along training and resumable checkpoints.

A checkpoint holds the actor, the critic, the optimizer, the KL controller, torch's RNG, the iteration and the
metric history. Prompts and sampling are seeded by the iteration, so a run resumed from a checkpoint logs the
same metrics as an uninterrupted one.

Under torchrun every rank runs this loop on its share of each iteration's prompts; the metrics are reduced
across ranks, and only rank 0 logs, writes checkpoints and takes snapshots. A resume reads the checkpoint on
every rank, so it must live on a filesystem that every node sees.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rlhf import distributed
from rlhf.checkpoint import fingerprint, load_resumable, save_resumable
from rlhf.model import GPT
from rlhf.ppo_trainer import LogFn, PPOConfig, PPOState, ScoreFn, ppo_iteration
from rlhf.progress import Progress
from rlhf.tokenizer import ChatTokenizer

Monitor = Callable[[list[str], list[str]], list[float]]  # a judge watched during training, never trained on


def save_ppo_state(path: Path, state: PPOState, inputs: dict) -> None:
    """Write a complete checkpoint directory; the previous one survives until this one is complete.
    `inputs` is the run's `fingerprint`: a resume checks it."""
    meta = {
        "iteration": state.iteration,
        "inputs": inputs,
        "kl_ctl": state.kl_ctl.state_dict(),
        "history": state.history,
    }
    save_resumable(path, {"actor": state.actor, "critic": state.critic}, {"opt": state.optimizer}, meta)


def load_ppo_state(path: Path, state: PPOState, inputs: dict, start_over: Path | None = None) -> bool:
    """Restore `state` in place from a checkpoint started from these very inputs (a `fingerprint`); False when
    there is none. A checkpoint of other inputs is refused (ResumeRefused), never silently resumed or dropped."""
    models = {"actor": state.actor, "critic": state.critic}
    meta = load_resumable(path, models, {"opt": state.optimizer}, inputs, start_over or path)
    if meta is None:
        return False
    state.kl_ctl.load_state_dict(meta["kl_ctl"])
    state.iteration, state.history = int(meta["iteration"]), meta["history"]
    print(f"[ppo] resumed from {path} at iteration {state.iteration}")
    return True


@dataclass(frozen=True)
class RunOptions:
    """How a PPO run is driven, apart from the maths (PPOConfig): checkpoints, monitoring, snapshots."""

    checkpoint: Path
    """the resumable checkpoint directory"""
    checkpoint_every: int = 10
    """iterations between checkpoints (0: none)"""
    gold: Monitor | None = None
    """a judge watched during training (`objective/gold_score`), never trained on"""
    on_snapshot: Callable[[PPOState], None] | None = None
    """called (rank 0) with the state at the start and every `snapshot_every` iterations"""
    snapshot_every: int = 0
    """iterations between snapshots (0: none)"""
    stop_at: int | None = None
    """stop after this iteration, as an interruption would (tests of resuming)"""
    inputs: dict | None = None
    """params, hashes of the models and data, reward and judge specs: with the PPOConfig, the fingerprint a
    checkpoint must match to be resumed"""
    start_over: Path | None = None
    """the directory a refused resume tells the user to delete"""


def snapshot_due(iteration: int, every: int, last: int) -> bool:
    """Snapshots at iterations 1, 2, 4, 8, ... below `every`, then every `every`, and at the last (0: none).

    Early and dense, because the over-optimisation curve rises fastest at the start: every 10th iteration
    alone left its first point at a KL already past the gold score's rise."""
    if not every:
        return False
    early = iteration < every and iteration & (iteration - 1) == 0
    return early or iteration % every == 0 or iteration == last


def train_ppo(
    state: PPOState,
    ref: GPT,
    score_fn: ScoreFn,
    tok: ChatTokenizer,
    prompts: list[str],
    cfg: PPOConfig,
    log: LogFn,
    opts: RunOptions,
) -> list[dict[str, float]]:
    """Iterate until cfg.iterations (or `opts.stop_at`); returns the metric history."""
    fp = fingerprint(cfg, opts.inputs)
    load_ppo_state(opts.checkpoint, state, fp, opts.start_over)
    distributed.check_agree(state.iteration, "the PPO iteration to resume from")
    main = distributed.is_main()  # the one process that logs and writes
    ref.eval()
    progress = Progress("ppo", cfg.iterations, unit="it", every_s=10, enabled=main)
    progress.done = state.iteration
    if main and opts.on_snapshot and opts.snapshot_every and state.iteration == 0:
        opts.on_snapshot(state)  # the starting point (SFT) is the first point of the over-optimisation curve
    while state.iteration < cfg.iterations:
        ro, stats = ppo_iteration(state, ref, score_fn, tok, prompts, cfg)
        if opts.gold is not None:
            gold = opts.gold(ro.prompts, ro.texts(tok))
            # equal shares: the mean over ranks of each rank's mean is the batch's mean
            stats |= distributed.all_reduce_mean({"objective/gold_score": sum(gold) / len(gold)})
        state.history.append(stats)
        if main:
            log(stats, state.iteration)
        progress.update(1, rm=stats["objective/rm_score"], kl=stats["objective/kl"])
        if main and opts.on_snapshot and snapshot_due(state.iteration, opts.snapshot_every, cfg.iterations):
            opts.on_snapshot(state)
        done = state.iteration >= cfg.iterations
        every, stop_at = opts.checkpoint_every, opts.stop_at
        due = every and (state.iteration % every == 0 or state.iteration == stop_at)
        if main and due and not done:
            save_ppo_state(opts.checkpoint, state, fp)
        if stop_at is not None and state.iteration >= stop_at:
            break
    return state.history
