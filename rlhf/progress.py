"""Progress for long loops: a periodic log line with rate and ETA (works in logs, CI and terminals alike)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Print `name step/total  rate/s  eta  extra` at most every `every_s` seconds and at the end."""

    def __init__(
        self,
        name: str,
        total: int,
        unit: str = "it",
        every_s: float = 5.0,
        stream: TextIO | None = None,
        enabled: bool = True,
    ):
        self.name, self.total, self.unit, self.every_s = name, total, unit, every_s
        self.enabled = enabled  # off on all but one process of a distributed run: one line per update, not W
        self.stream = stream or sys.stderr
        self.start = self.last = time.perf_counter()
        self.done = 0

    def update(self, n: int = 1, **extra: float) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self.last >= self.every_s or self.done >= self.total):
            self.last = now
            self._print(now, extra)

    def _print(self, now: float, extra: dict[str, float]) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        fields = " ".join(f"{k}={v:.4g}" for k, v in extra.items())
        print(
            f"[{self.name}] {self.done}/{self.total} {rate:.2f} {self.unit}/s "
            f"elapsed {elapsed:.0f}s eta {eta:.0f}s {fields}".rstrip(),
            file=self.stream,
            flush=True,
        )
