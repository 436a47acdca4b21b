"""The one lifecycle of a stage: its params read once, its runtime, its MLflow run, its judge, its clean-up.

A stage `tasks/<name>.py` has two functions and a `main`:

    def configure(p: Params) -> Config      # every params.yaml value the stage reads, parsed and checked
    def run(params: dict) -> dict          # cfg = configure(Params(params)); with lifecycle(...) as ctx: ...
    main = stage.entry("tasks.<name>", __doc__, run)

`Params` records what `configure` reads (a section, or one dotted key), and the stage's MLflow run logs exactly
that: tests/test_stage.py checks it equals the stage's `params:` in dvc.yaml, so the keys DVC watches are the keys
the stage reads and logs. No config class has a default that disagrees with params.yaml (tests/test_params.py).
`lifecycle` then opens, in this order and for every stage alike: the runtime (device, precision, and under
torchrun the process group), the MLflow run (rank 0; a null tracker elsewhere), the clock; on leaving it records
the seconds and peak memory and, when the stage finished, removes its resumable state.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from rlhf import distributed
from rlhf.device import Runtime, peak_memory_mb, reset_peak_memory, resolve
from tasks import tracking
from tasks.common import ParamError, build_dataclass, cli, load_params, params_path, stage_main
from tasks.launch import RuntimeParams, torchrun_command

T = TypeVar("T")
_ABSENT = object()


class Params:
    """params.yaml as a stage reads it: each section or dotted key it asks for is checked and remembered."""

    def __init__(self, raw: dict[str, Any]):
        self.raw = raw
        self.read: list[str] = []

    def section(self, name: str, cls: type[T]) -> T:
        """The section `name` as the dataclass `cls` (unknown or missing keys and bad values are ParamErrors)."""
        self._note(name)
        raw = self.raw.get(name)
        if raw is None:
            raise ParamError(f"{params_path()}: no section '{name}'")
        return build_dataclass(cls, raw, where=f"{params_path()}:{name}")

    def value(self, dotted: str) -> Any:
        """The value at `section.key` (a ParamError naming it when absent)."""
        self._note(dotted)
        node: Any = self.raw
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ParamError(f"{params_path()}: no key '{dotted}'")
            node = node[part]
        return node

    def runtime(self) -> RuntimeParams:
        """The `runtime` section: device, precision, processes per node (its defaults, which are params.yaml's,
        for a params file written before the section existed)."""
        self._note("runtime")
        return build_dataclass(RuntimeParams, self.raw.get("runtime") or {}, f"{params_path()}:runtime")

    def logged(self) -> dict[str, Any]:
        """What the stage read, as its MLflow params: {"sft": {...}, "judge.gold": "..."}."""
        out: dict[str, Any] = {}
        for key in self.read:
            node: Any = self.raw
            for part in key.split("."):
                node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
            if node is not _ABSENT:  # an absent optional section (runtime) is logged by nothing
                out[key] = node
        return out

    def _note(self, key: str) -> None:
        if key not in self.read:
            self.read.append(key)


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


def entry(
    module: str,
    description: str,
    run: Callable[..., dict],
    *,
    ddp: bool = True,
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> Callable[[], None]:
    """A stage's `main`: `python -m tasks.<stage> [--params FILE]` (and the options `add_args` declares, passed
    to `run` by name); a user's error is one line on stderr, exit 2. A training stage (`ddp`) with
    runtime.nproc_per_node > 1 relaunches itself under torchrun."""

    @stage_main
    def main() -> None:
        extra = {k: v for k, v in vars(cli(description, add_args)).items() if k != "params"}
        params = load_params()
        if ddp and not distributed.launched():
            n = Params(params).runtime().nproc_per_node if "runtime" in params else 1
            if n > 1:
                cmd = torchrun_command(module, n, sys.argv[1:])
                print(f"[{module}] runtime.nproc_per_node={n}: {' '.join(cmd)}", file=sys.stderr, flush=True)
                sys.exit(subprocess.call(cmd))
        metrics = run(params, **extra)
        if os.environ.get("RANK", "0") == "0":  # the process group is gone by now: torchrun's RANK says who we were
            print(metrics, flush=True)

    return main
