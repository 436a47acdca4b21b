import os

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
