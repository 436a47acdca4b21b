"""Data parallelism with torch.distributed, launched by torchrun (NCCL on GPUs, Gloo on the CPU).

The contract shared by the three training loops (`rlhf.lm_train`, `rlhf.reward`, `rlhf.ppo_trainer`):
- Global batch. With W processes each rank takes a contiguous 1/W of the batch one process would use (`shard`),
  and DDP averages the gradients. A loss that is a mean over pairs splits exactly (equal shards). A token-level
  mean does not, since ranks hold different numbers of tokens: each rank scales its mean by `token_share`
  (W · local tokens / global tokens), and DDP's average (1/W)·Σ_r share_r·mean_r is then the mean over the
  global batch's tokens. One step of W processes gives the parameters one process gets on the same batch, up to
  the order of float sums.
- Global statistics: advantage whitening, token means and explained variance are taken over every rank's tokens
  (sums and counts all-reduced); metrics are reduced across ranks, so every rank holds the same numbers and takes
  the same decisions (early stopping, the KL controller).
- Only rank 0 writes: checkpoints, logs, metrics, models. The other ranks write nothing.
- Randomness that must differ per rank (PPO sampling) is seeded with `seed + rank`; what must agree (batch order,
  minibatch order) keeps the shared seed.
Without torchrun (no WORLD_SIZE above 1) every helper is the identity or the single-process function, so one
process computes exactly what it would without this module.

Shapes: B rows of a rank's shard, T tokens.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

S = TypeVar("S", list, Tensor)
# Rank 0 alone evaluates and writes the stage's outputs while the others wait at their next collective.
TIMEOUT = datetime.timedelta(minutes=60)


def launched() -> bool:
    """True in a process started by torchrun (or any launcher that sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def init(device: torch.device) -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT); False without one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the one process that logs and writes files."""
    return rank() == 0


def rank_seed(seed: int) -> int:
    """A seed of this rank's own (seed itself on rank 0 and in a single process)."""
    return seed + rank()


def shard_slice(n: int) -> slice:
    """This rank's contiguous 1/W of a global batch of n rows; n must split evenly (loud, like exact_div)."""
    w = world_size()
    if n % w:
        raise ValueError(
            f"a global batch of {n} does not split evenly over {w} processes: make the batch size a multiple of "
            f"the world size (nnodes × nproc_per_node)"
        )
    k = n // w
    return slice(rank() * k, (rank() + 1) * k)


def shard(x: S) -> S:
    """This rank's rows of a global batch (a list or a tensor along dim 0); the whole batch in one process."""
    return x if world_size() == 1 else x[shard_slice(len(x))]


def split_slice(n: int) -> slice:
    """This rank's part of n items for evaluation: contiguous, sizes differ by at most one, possibly empty."""
    w, r = world_size(), rank()
    return slice(n * r // w, n * (r + 1) // w)


def _collective_device() -> torch.device:
    # NCCL reduces CUDA tensors only; Gloo reduces CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: Tensor) -> Tensor:
    """Elementwise sum over ranks, as float64, on t's device (t itself in one process)."""
    if not is_distributed():
        return t
    out = t.detach().to(_collective_device(), torch.float64, copy=True)  # all_reduce works in place
    dist.all_reduce(out)
    return out.to(t.device)


def all_reduce_mean(metrics: dict[str, float]) -> dict[str, float]:
    """Mean over ranks of each metric (every rank must pass the same keys); unchanged in one process."""
    if not is_distributed():
        return dict(metrics)
    keys = sorted(metrics)  # the same order on every rank, whatever order the dict was built in
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    mean = dict(zip(keys, (t / world_size()).tolist(), strict=True))
    return {k: mean[k] for k in metrics}


def all_reduce_max(value: float) -> float:
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def check_agree(value: int, what: str) -> None:
    """Every rank must hold the same integer (the step a resume starts from); all ranks raise if not."""
    if not is_distributed():
        return
    t = torch.tensor([value, -value], dtype=torch.long, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    high, low = int(t[0]), -int(t[1])
    if high != low:
        raise RuntimeError(
            f"ranks disagree on {what} (from {low} to {high}): the training state must be on a filesystem that "
            "every node sees, or deleted so that all ranks start afresh"
        )


def token_share(n_local: Tensor | int) -> float:
    """W · n_local / n_global: scaling a rank's token mean by it makes DDP's average the global token mean."""
    if not is_distributed():
        return 1.0
    n = torch.as_tensor(n_local, dtype=torch.float64)
    total = float(all_reduce_sum(n))
    return world_size() * float(n) / max(total, 1.0)


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """DDP around `model` for the training forwards (gradients averaged over ranks); `model` itself in one process.

    Construction broadcasts rank 0's parameters, so every rank starts from the same weights. Inference, sampling
    and checkpoints keep using the plain module: DDP is only needed where a backward pass follows.
    """
    if not is_distributed():
        return model
    device = next(model.parameters()).device
    ids = [device] if device.type == "cuda" else None
    # Our models have no buffers: not syncing them keeps every forward free of collectives.
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)


def reducer() -> Callable[[Tensor], Tensor] | None:
    """The reduction hook of rlhf.ppo's masked statistics: a sum over every rank under DDP, None in one process
    (the single-process statistics, unchanged)."""
    return all_reduce_sum if is_distributed() else None
