"""The one lifecycle of a stage that runs a model: its runtime, its MLflow run, its clock, its clean-up.

A stage `tasks/<name>.py` has two functions and a `main`:

    def configure(p: Params) -> Config      # every params.yaml value the stage reads, parsed and checked
    def run(params: dict) -> dict          # conf = configure(Params(params)); with lifecycle(...) as ctx: ...
    main = stage.entry("tasks.<name>", __doc__, run)

`tasks.common.Params` records what `configure` reads (a section, or one dotted key), and the stage's MLflow run
logs exactly that: tests/test_stage.py checks it equals the stage's `params:` in dvc.yaml, so the keys DVC watches
are the keys the stage reads and logs. The gold judge is read there too, once (tasks/judge.py). `lifecycle` then
opens, in this order and for every stage alike: the runtime (device, precision, and for a training stage under
torchrun the process group), the MLflow run (rank 0; a null tracker elsewhere), the clock; the body's `Context`
gives the cost metrics (seconds, peak memory, world size); on leaving, when the stage finished, its resumable
state is removed. Stages that run no model use `tasks.common.model_free_entry` instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rlhf import distributed
from rlhf.device import Runtime, peak_memory_mb, reset_peak_memory, resolve
from tasks import tracking
from tasks.common import Params, RuntimeParams
from tasks.common import entry as plain_entry


@dataclasses.dataclass
class Context:
    """What a stage's body runs with."""

    stage: str
    rt: Runtime
    tracker: tracking.Tracker
    t0: float
    peak_all_ranks: float = 0.0

    @property
    def is_main(self) -> bool:
        """Rank 0 (or a single process): the one that reports and writes."""
        return distributed.is_main()

    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def sync_peak_memory(self) -> None:
        """Record the peak memory of the busiest rank so far: a collective, so every rank calls it (after
        training, before the other ranks leave rank 0 to report)."""
        self.peak_all_ranks = distributed.all_reduce_max(peak_memory_mb(self.rt.device))

    def cost(self, seconds: float) -> dict[str, float]:
        """The cost metrics every stage reports: seconds, peak memory in MiB, processes."""
        peak = max(self.peak_all_ranks, peak_memory_mb(self.rt.device))
        return {"seconds": seconds, "peak_memory_mb": peak, "world_size": distributed.world_size()}


@contextlib.contextmanager
def lifecycle(
    stage: str, p: Params, rp: RuntimeParams | None, state_dir: Path | None = None, *, ddp: bool = True
) -> Iterator[Context]:
    """Runtime, MLflow run and clock of one stage; `rp` None for a stage that runs no model. With `ddp` False
    (a stage that generates but does not train) no process group is joined. `state_dir`: the stage's resumable
    state, whose MLflow run a resumed stage continues and which is removed once the stage has finished."""
    rt = resolve(rp.device, rp.precision) if rp is not None else Runtime()
    main = True
    with contextlib.ExitStack() as stack:
        if rp is not None and ddp:
            distributed.init(rt.device)
            stack.callback(distributed.shutdown)
        reset_peak_memory(rt.device)
        main = distributed.is_main()
        run = tracking.stage_run(stage, p.logged(), state_dir=state_dir) if main else None
        tracker = stack.enter_context(run) if run is not None else tracking.NULL_TRACKER
        yield Context(stage, rt, tracker, time.perf_counter())
    if state_dir is not None and main:  # rank 0 may still be copying from it while the others leave
        shutil.rmtree(state_dir, ignore_errors=True)  # finished: nothing left to resume


def torchrun_command(module: str, nproc_per_node: int, args: list[str]) -> list[str]:
    """One node, N processes; --standalone picks a free rendezvous port on localhost."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}"]
    return [*torchrun, "-m", module, *args]


def relaunch_if_asked(module: str, params: dict) -> None:
    """Under runtime.nproc_per_node > 1 and not yet under torchrun: run this stage under torchrun with the same
    arguments and exit with its status (`dvc repro` and the flows need nothing else). A stage already under
    torchrun never relaunches (several nodes: start torchrun on each yourself, docs/distributed.md)."""
    if distributed.launched():
        return
    n = Params(params).runtime().nproc_per_node
    if n > 1:
        cmd = torchrun_command(module, n, sys.argv[1:])
        print(f"[{module}] runtime.nproc_per_node={n}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        sys.exit(subprocess.call(cmd))


def entry(
    module: str,
    description: str,
    run: Callable[..., dict],
    *,
    ddp: bool = True,
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> Callable[[], None]:
    """The `main` of a stage that runs a model (tasks.common.entry, the command line); a training stage (`ddp`)
    with runtime.nproc_per_node > 1 relaunches itself under torchrun first."""
    before = (lambda params: relaunch_if_asked(module, params)) if ddp else None
    return plain_entry(description, run, add_args=add_args, before=before)
