"""The `runtime` section of params.yaml for the training stages: device, precision and processes per node.

    runtime:
      device: auto        # auto (CUDA when present) | cpu | cuda
      precision: auto     # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
      nproc_per_node: 1   # > 1: the stage relaunches itself under torchrun, one process per GPU

`python -m tasks.<stage>` is the one command of a stage in every case: with `nproc_per_node` above 1 and not
already under torchrun, it runs `python -m torch.distributed.run --standalone --nproc-per-node N -m tasks.<stage>`
with the same arguments and exits with its status, so `dvc repro` and the Prefect flow need nothing else. On
several nodes, start torchrun on each node yourself (docs/distributed.md): a stage already under torchrun never
relaunches. Only rank 0 opens the MLflow run and writes files; `session` joins and leaves the process group.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf import distributed
from rlhf.device import Runtime, peak_memory_mb, reset_peak_memory, resolve
from tasks import tracking
from tasks.common import build_dataclass, cli, load_params


@dataclass(frozen=True)
class RuntimeParams:
    device: str = "auto"
    """auto (CUDA when a GPU is visible) | cpu | cuda"""
    precision: str = "auto"
    """auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16"""
    nproc_per_node: int = 1
    """training processes on this node (one per GPU); above 1 the stage relaunches itself under torchrun"""


def runtime_params(params: Mapping[str, Any]) -> RuntimeParams:
    """params['runtime'], defaults when absent (params files written before the section existed)."""
    return build_dataclass(RuntimeParams, params.get("runtime") or {}, "params.yaml:runtime")


def torchrun_command(module: str, nproc_per_node: int, args: list[str]) -> list[str]:
    """One node, N processes; --standalone picks a free rendezvous port on localhost."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}"]
    return [*torchrun, "-m", module, *args]


def main(module: str, description: str, run: Callable[[dict], dict]) -> None:
    """A stage's `main`: parse the CLI, relaunch under torchrun if asked, else run (and print on rank 0)."""
    cli(description)
    params = load_params()
    rp = runtime_params(params)
    if rp.nproc_per_node > 1 and not distributed.launched():
        cmd = torchrun_command(module, rp.nproc_per_node, sys.argv[1:])
        print(f"[{module}] runtime.nproc_per_node={rp.nproc_per_node}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        sys.exit(subprocess.call(cmd))
    metrics = run(params)
    if os.environ.get("RANK", "0") == "0":  # the process group is gone by now: torchrun's RANK says who we were
        print(metrics)


@contextlib.contextmanager
def session(params: Mapping[str, Any]) -> Iterator[Runtime]:
    """The device and precision of this process; inside torchrun, membership of the process group."""
    rp = runtime_params(params)
    rt = resolve(rp.device, rp.precision)
    distributed.init(rt.device)
    reset_peak_memory(rt.device)
    try:
        yield rt
    finally:
        distributed.shutdown()


def peak_memory(rt: Runtime) -> float:
    """Peak memory in MiB of the busiest rank so far (a collective: every rank must call it)."""
    return distributed.all_reduce_max(peak_memory_mb(rt.device))


def stage_run(
    stage: str, params: Mapping[str, Any], state_dir: Path | None = None
) -> contextlib.AbstractContextManager[tracking.Tracker]:
    """The stage's MLflow run on rank 0 (continued after an interruption: tracking.stage_run's state_dir); a
    tracker that logs nothing on the other ranks."""
    if distributed.is_main():
        return tracking.stage_run(stage, params, state_dir=state_dir)
    return contextlib.nullcontext(tracking.NULL_TRACKER)
