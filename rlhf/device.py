"""Where training runs and in which precision: `device: auto|cpu|cuda`, `precision: auto|fp32|bf16`.

`auto` picks CUDA when a GPU is visible (the GPU of this process's LOCAL_RANK under torchrun), else the CPU.
Precision `auto` means bf16 autocast on CUDA and fp32 on the CPU. bf16 is autocast only: the weights, the
optimizer state and the checkpoints stay fp32, and the ops autocast keeps in fp32 (softmax, log_softmax,
cross-entropy, norms) stay there, so the losses of `rlhf.ppo` see fp32 log-probs. bf16 on the CPU is refused:
it is slower there than fp32, and nothing on this path was measured with it.

Peak memory per stage: CUDA's `max_memory_allocated` on a GPU, the process's peak resident set size on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Runtime:
    """A resolved device and precision; the default is the CPU in fp32."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """where the models and batches live"""
    precision: str = "fp32"
    """"fp32", or "bf16" (autocast, CUDA only)"""

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Forward passes inside run in bf16 where autocast allows it; a no-op in fp32."""
        if self.precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                yield
        else:
            yield


CPU = Runtime()


def resolve(device: str = "auto", precision: str = "auto") -> Runtime:
    """Turn the params' strings into a Runtime; errors say which value was wrong and what is accepted."""
    if device not in DEVICES:
        raise ValueError(f"runtime.device must be one of {DEVICES}, got '{device}'")
    if precision not in PRECISIONS:
        raise ValueError(f"runtime.precision must be one of {PRECISIONS}, got '{precision}'")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("runtime.device is 'cuda' but torch sees no GPU: use 'auto' or 'cpu'")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        # One GPU per process: torchrun's LOCAL_RANK says which one.
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if precision == "bf16" and dev.type != "cuda":
        raise ValueError("runtime.precision 'bf16' needs a CUDA device; the CPU trains in fp32 (use 'auto')")
    resolved = "bf16" if precision == "bf16" or (precision == "auto" and dev.type == "cuda") else "fp32"
    return Runtime(dev, resolved)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's weights are; a view that holds none of its own (rlhf.lora.AdapterOff) answers for the
    model it reads."""
    return next(getattr(model, "peft_model", model).parameters()).device


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen model (the PPO reference, the reward model): eval mode, no gradients ever asked of it."""
    return model.eval().requires_grad_(False)


def reset_peak_memory(device: torch.device) -> None:
    """Start a stage's CUDA peak from now (the CPU's peak RSS cannot be reset: it is the process's)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA tensors allocated on a GPU, else the peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux
