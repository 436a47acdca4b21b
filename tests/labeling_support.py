"""Shared by the labeling tests: the app on a free localhost port in a background thread, and tasks in a store."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tasks.labeling import db
from tests.test_registry import free_port

XSS = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


@contextmanager
def running_app(db_path: Path, load_judge: Callable[[], Any] | None = None) -> Iterator[str]:
    """The labeling app served by uvicorn in a thread; yields its base URL, stops it on exit."""
    import uvicorn

    from tasks.labeling.app import create_app

    config = uvicorn.Config(create_app(db_path, load_judge), host="127.0.0.1", port=free_port(), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{config.port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the labeling app did not start")
        time.sleep(0.05)
    try:
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def add_tasks(conn: Any, n: int, k: int = 4, max_labelers: int = 1, first: int = 0) -> list[int]:
    """n tasks of k distinct responses each, prompts "Prompt <i>?"."""
    tasks = [
        db.NewTask(f"Prompt {i}?", f"p-{i}", [f"Answer {j} to prompt {i}." for j in range(k)], "test-model@0")
        for i in range(first, first + n)
    ]
    return db.add_tasks(conn, tasks, max_labelers)


def tiny_checkpoint(root: Path) -> Path:
    """A tiny untrained GPT with its tokenizer at <root>/models/sft."""
    import json

    import torch

    from rlhf.checkpoint import save_model
    from rlhf.model import GPT, GPTConfig
    from rlhf.tokenizer import train_tokenizer

    tok = root / "tokenizer.json"
    train_tokenizer(["what is the cat", "the cat sat on the mat", "a dog ran"] * 30, 300).save(str(tok))
    vocab = json.loads(tok.read_text())["model"]["vocab"]
    torch.manual_seed(0)
    save_model(
        root / "models/sft", GPT(GPTConfig(vocab_size=len(vocab), block_size=32, n_layer=1, n_head=2, n_embd=16)), tok
    )
    return root / "models/sft"
