import os
from pathlib import Path

import pytest
import torch

# Tests run on 2 cores beside another worker: one thread each keeps them from fighting.
torch.set_num_threads(1)
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture
def tiny_cfg():
    from rlhf.model import GPTConfig

    return GPTConfig(vocab_size=64, block_size=48, n_layer=2, n_head=2, n_embd=32)


def working_root(tmp_path_factory, name: str, params_text: str) -> tuple[Path, pytest.MonkeyPatch]:
    """A fresh working root for the stages (user/feedback folders, params.yaml) and the env that points at it,
    tracking off. The caller undoes the MonkeyPatch when done."""
    root = tmp_path_factory.mktemp(name)
    (root / "params.yaml").write_text(params_text)
    for d in ("data/user", "data/feedback"):
        (root / d).mkdir(parents=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("RLHF_ROOT", str(root))
    mp.setenv("RLHF_PARAMS", str(root / "params.yaml"))
    mp.setenv("RLHF_TRACKING", "off")
    return root, mp
