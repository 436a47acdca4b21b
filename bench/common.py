"""Shared pieces of our side of the benchmarks: the peer's model shape, threads, the matmul ceiling, JSON output.

The shapes copy ../shared/bench-peer exactly (its peer_common.TINY_GPT2 and each script's defaults) so that every
ratio printed by bench/compare.py compares the same work. Nothing here is imported by the project itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` from the repo root
    sys.path.insert(0, str(ROOT))

from rlhf.model import GPTConfig  # noqa: E402

OUT_DIR = Path(os.environ.get("BENCH_OUT_DIR", ROOT / "bench" / "out"))
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
# The peer's tiny GPT-2: n_layer 4, n_head 4, n_embd 256, vocab 512, n_positions 256 (3,356,160 parameters).
PEER_SHAPE = GPTConfig(vocab_size=512, block_size=256, n_layer=4, n_head=4, n_embd=256, dropout=0.0)


def set_threads(n: int = THREADS) -> None:
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # already set in this process
        torch.set_num_interop_threads(1)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def seconds_per_call(fn, target_s: float = 0.25, runs: int = 5, warmup: int = 1) -> float:
    """Median seconds per call of fn(): `warmup` calls, one to size a run at about target_s, then `runs` runs."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    iters = max(1, int(target_s / max(time.perf_counter() - t0, 1e-7)))
    per_call = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        per_call.append((time.perf_counter() - t0) / iters)
    return median(per_call)


def matmul_gflops(n: int = 1024, runs: int = 7, target_s: float = 0.4) -> float:
    """Median fp32 GFLOP/s of torch.mm on n×n matrices: the ceiling MFU is measured against (as the peer's)."""
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    # runs is odd, so the median rate is the rate of the median time
    return 2.0 * n**3 / seconds_per_call(lambda: torch.mm(a, b, out=c), target_s, runs, warmup=3) / 1e9


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that do matmul work: all of them (rotary positions have no table; the tied wte counts once, as
    the LM head). The peer's GPT-2 has a position table besides, which its side leaves out the same way."""
    return sum(p.numel() for p in model.parameters())


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), cpu)
    except OSError:
        pass
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def write_json(name: str, payload: dict) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)
    return path
