"""A simulated crowd: threads that use the app over HTTP as people would (ask for a task, rank, submit), each
with the world's simulated labeler at its own noise, so the whole loop can run and be measured without people.

    bin/label crowd --url http://127.0.0.1:8600 --labelers 5 --max-tasks 300
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from rlhf.progress import Progress

# Noise levels (Plackett-Luce temperature on the gold utility) the crowd's members cycle through.
TEMPERATURES = (0.25, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Member:
    name: str
    temperature: float
    length_bias: float = 0.02
    seed: int = 0
    skip_rate: float = 0.0
    """chance of skipping a task instead of ranking it"""


def crowd(n: int, skip_rate: float = 0.0, seed: int = 0) -> list[Member]:
    """n members named sim-<i>-t<temperature>, cycling through TEMPERATURES."""
    temps = [TEMPERATURES[i % len(TEMPERATURES)] for i in range(n)]
    return [Member(f"sim-{i}-t{t}", t, seed=seed + i, skip_rate=skip_rate) for i, t in enumerate(temps)]


class Budget:
    """At most `limit` rankings across all threads (None: until the tasks run out)."""

    def __init__(self, limit: int | None):
        self.left, self.lock = limit, threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.left is None:
                return True
            if self.left <= 0:
                return False
            self.left -= 1
            return True

    def give_back(self) -> None:
        with self.lock:
            if self.left is not None:
                self.left += 1


def work(url: str, member: Member, budget: Budget, out: dict[str, Any], progress: Progress | None) -> None:
    """One member's loop: next task -> rank (or skip) -> submit, until no task or no budget is left."""
    from rlhf.world.labeler import SimulatedLabeler

    labeler = SimulatedLabeler(member.temperature, member.length_bias, member.seed)
    rng = random.Random(member.seed)
    counts = {"rank": 0, "skip": 0, "errors": 0}
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        while budget.take():
            res = client.get("/api/next", params={"labeler": member.name})
            res.raise_for_status()
            task = res.json()["task"]
            if task is None:
                budget.give_back()
                break
            body: dict[str, Any] = {"task_id": task["id"], "labeler": member.name, "action": "rank"}
            if rng.random() < member.skip_rate:
                body["action"] = "skip"
                budget.give_back()
            else:
                order = labeler.rank(task["prompt"], [r["text"] for r in task["responses"]])
                body["ranking"] = [task["responses"][i]["index"] for i in order]
            start = time.perf_counter()
            res = client.post("/api/submit", json=body)
            latencies.append(time.perf_counter() - start)
            if res.status_code != 200:
                counts["errors"] += 1
                continue
            counts[body["action"]] += 1
            if progress is not None and body["action"] == "rank":
                progress.update()
    out[member.name] = {**counts, "latencies": latencies}


def run(url: str, members: list[Member], max_tasks: int | None = None) -> dict[str, Any]:
    """Run every member in its own thread; -> counts per member and submission latency (seconds)."""
    budget, out = Budget(max_tasks), {}
    progress = Progress("crowd", max_tasks, unit="rankings") if max_tasks else None
    threads = [threading.Thread(target=work, args=(url, m, budget, out, progress)) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies = sorted(x for r in out.values() for x in r.pop("latencies"))
    return {
        "members": out,
        "rankings": sum(r["rank"] for r in out.values()),
        "skips": sum(r["skip"] for r in out.values()),
        "errors": sum(r["errors"] for r in out.values()),
        "submit_p50_s": statistics.median(latencies) if latencies else None,
        "submit_p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else None,
    }
