"""LoRA adapters (peft) on the built-in GPT and on Hugging Face models, and gradient checkpointing (params
`model.lora`, `runtime.gradient_checkpointing`).

With `model.lora.r > 0` a training stage freezes its base and trains low-rank adapters (plus, for a reward model
or critic, the scalar head) instead of every weight:

    apply_lora(model, cfg, name)     a peft model over GPT / ScalarHeadModel / HFCausalLM / HFScalarHeadModel; it
                                     keeps their interface (forward, score, cfg, new_cache), only adapter and head
                                     parameters require grad
    AdapterOff(peft_model)           the same module read with its adapters switched off: PPO's reference is the
                                     actor's adapter off, the reward model is the critic's adapter off; it holds no
                                     weights of its own (no second copy in memory)
    critic_on_reward_model(rm, ...)  the critic as an adapter + value head on the reward model's frozen body
    ppo_models(sft, rm, cfg, ...)    PPO's actor, reference, critic and reward model on those two bodies
    set_gradient_checkpointing       recompute activations in backward (built-in GPT and HF alike)

How this follows TRL and OpenRLHF, and where it differs:
  - The reference as the policy with its adapter disabled (peft's `disable_adapter`) is TRL's (PPOTrainer and
    DPOTrainer with a peft model: `ref_model=None`). OpenRLHF keeps a separate reference model instead.
  - Named adapters on one frozen body switched per role follow TRL's `reward_adapter` (a reward adapter and the
    policy adapter on one body). TRL's AutoModelForCausalLMWithValueHead puts the value head on the policy's body;
    here, as in the full pipeline and in OpenRLHF, the critic starts from the reward model, so its adapter sits on
    the reward model's body and the reward is that body read with the critic's adapter off. Actor and critic stay
    two bodies (two frozen copies), not TRL's one.
  - The scalar head is peft's `modules_to_save`: the critic trains a copy of the reward head while the original
    (the reward model's own head) is what the adapter-off read uses; peft does the same for a classification head
    (task type SEQ_CLS puts `score` in modules_to_save), which TRL's reward-model training with LoRA relies on.

A training state (resume) of a LoRA model holds the whole peft state_dict (rlhf.checkpoint.write_model), so
resuming is the same load_state_dict as without LoRA; only finished adapters use the format below.

Checkpoints (never pickled): an adapter directory holds `adapter.safetensors` (peft's adapter state: the LoRA
matrices and, for a scalar model, its head) and `adapter.json` naming the base checkpoint by path and sha256 of its
model.safetensors; loading on another base is refused with both hashes. `export_merged` writes the merged model as
a plain checkpoint of rlhf.checkpoint, which serving and evaluation load as any other.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from rlhf.checkpoint import file_hash, is_peft, load_model, read_config, save_model, write_model
from rlhf.io import atomic_dir, write_json
from rlhf.model import ScalarHeadModel, Transformer

BUILTIN_TARGETS = ("c_attn", "c_proj", "mlp.0", "mlp.2")
"""every Linear of the built-in GPT's blocks: fused qkv, attention out, MLP in and out (QLoRA: all linears)"""
ADAPTER_FORMAT = "rlhf-lora-adapter/1"


@dataclass(frozen=True)
class LoRAConfig:
    """params.yaml `model.lora`."""

    r: int = 0
    """adapter rank; 0 = off (full fine-tuning)"""
    alpha: float = 16.0
    """scaling: the adapter's update is multiplied by alpha / r"""
    dropout: float = 0.0
    """dropout on the adapter's input (0 in RLHF stages: PPO's first ratio must be exactly 1)"""
    target_modules: tuple[str, ...] | None = None
    """module names (suffixes) to adapt; None = the default of the architecture (see `default_targets`)"""

    def __post_init__(self) -> None:
        if self.r < 0:
            raise ValueError(f"model.lora.r must be >= 0 (0 = off), got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"model.lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        if self.target_modules is not None:
            if isinstance(self.target_modules, str) or not all(isinstance(t, str) for t in self.target_modules):
                raise ValueError(f"model.lora.target_modules must be a list of module names, got {self.target_modules}")
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @property
    def enabled(self) -> bool:
        return self.r > 0


def _hf_config(model: nn.Module) -> Any | None:
    """The transformers config of an rlhf.hf model (HFCausalLM.lm or HFScalarHeadModel.body), else None."""
    inner = getattr(model, "lm", None) or getattr(model, "body", None)
    return getattr(inner, "config", None)


def default_targets(model: nn.Module) -> list[str]:
    """The built-in GPT's Linear names, or peft's per-architecture default for an HF model (gpt2: c_attn; llama,
    qwen2, mistral: q_proj, v_proj). An architecture peft has no default for needs model.lora.target_modules."""
    config = _hf_config(model)
    if config is None:
        return list(BUILTIN_TARGETS)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    targets = DEFAULTS.get(config.model_type)
    if targets is None:
        raise ValueError(
            f"model.lora.target_modules: no default for the '{config.model_type}' architecture; "
            "name its attention projections (e.g. [q_proj, v_proj])"
        )
    return list(targets)


def resolved(cfg: LoRAConfig, model: nn.Module) -> LoRAConfig:
    """cfg with its target modules filled in for `model` (what an adapter checkpoint records)."""
    return cfg if cfg.target_modules is not None else replace(cfg, target_modules=tuple(default_targets(model)))


def _matches(name: str, target: str) -> bool:
    """peft's rule for a target name: the module's full name or a dotted suffix of it."""
    return name == target or name.endswith("." + target)


def has_scalar_head(model: nn.Module) -> bool:
    """A reward model or critic (ScalarHeadModel, HFScalarHeadModel): its head a Linear or peft's wrapper of one."""
    return isinstance(getattr(model, "head", None), nn.Module)


def apply_lora(model: nn.Module, cfg: LoRAConfig, name: str = "default", seed: int = 0) -> nn.Module:
    """`model` with a fresh LoRA adapter `name`; its base weights frozen (in place: no copy).

    A scalar-head model (reward model, critic) also trains its head, as peft's `modules_to_save`: a trainable
    copy, the original head kept for reads with the adapter off. At init B = 0, so the output equals the base's;
    A is drawn from `seed` alone."""
    from peft import LoraConfig, get_peft_model

    if not cfg.enabled:
        raise ValueError("apply_lora needs model.lora.r > 0")
    cfg = resolved(cfg, model)
    targets = cfg.target_modules or ()
    # GPT-2's Conv1D stores its weight transposed (in, out): peft must be told (it would warn and switch itself)
    conv1d = any(type(m).__name__ == "Conv1D" for n, m in model.named_modules() if any(_matches(n, t) for t in targets))
    peft_cfg = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(targets),
        fan_in_fan_out=conv1d,
        modules_to_save=["head"] if has_scalar_head(model) else None,
        bias="none",
    )
    model.requires_grad_(False)
    # peft draws A from torch's global CPU generator (it builds the adapter on the CPU, then moves it), whose
    # state here is whatever the caller's earlier draws left: the same params gave one process (a test's) another
    # adapter than rank 0 under torchrun, whose A DDP broadcasts. Seeded in a fork, A is a function of the seed
    # alone and the caller's random stream is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return get_peft_model(model, peft_cfg, adapter_name=name)


def trainable_head(model: nn.Module) -> nn.Linear:
    """The head a peft scalar model trains (its modules_to_save copy of the active adapter), or the plain head."""
    head = model.get_base_model().head if hasattr(model, "get_base_model") else model.head
    saved = getattr(head, "modules_to_save", None)
    return saved[model.active_adapter] if saved is not None else head


class AdapterOff(nn.Module):
    """A peft model read with its adapters switched off: the frozen base under the adapters (PPO's reference is
    the actor's adapter off; the reward model is the critic's adapter off). Same interface as the base.

    The peft model is held outside the module tree, so freeze()/eval() on this view never reach the weights it
    shares with the trainee, and it holds no parameters of its own.

    Under torchrun it reads the plain peft model, never its DDP wrapper (which has no disable_adapter, and whose
    hooks are for training forwards), and only between optimizer steps: peft's disable_adapter switches the
    adapters' requires_grad off and back on, which must not happen between a DDP forward and its backward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.__dict__["peft_model"] = model  # not a submodule: see the class docstring
        self.cfg = model.cfg

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)

    def score(self, idx: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with self.peft_model.disable_adapter():
            return self.peft_model.score(idx, attention_mask)


def critic_on_reward_model(
    rm: nn.Module, cfg: LoRAConfig, mean: float | None = None, std: float | None = None, seed: int = 0
) -> tuple[nn.Module, AdapterOff]:
    """(critic, reward model) on one frozen body: `rm` (a plain ScalarHeadModel or HFScalarHeadModel, e.g. the
    merged reward-model checkpoint) gets a "critic" adapter whose value head starts as the reward head with PPO's
    normalisation (v − mean) / std folded in, or at zero when mean is None (a judge as the reward, whose scale
    the reward head knows nothing of), as tasks/ppo.py's make_critic does for full fine-tuning."""
    from types import SimpleNamespace

    from rlhf.model import normalise_head

    critic = apply_lora(rm, cfg, name="critic", seed=seed)
    head = trainable_head(critic)
    if mean is None:
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
    else:
        normalise_head(SimpleNamespace(head=head), mean, 1.0 if std is None else std)
    return critic, AdapterOff(critic)


def ppo_models(
    sft: nn.Module, rm: nn.Module, cfg: LoRAConfig, mean: float | None, std: float | None, seed: int = 0
) -> tuple[nn.Module, AdapterOff, nn.Module, AdapterOff]:
    """PPO's four models on two frozen bodies: (actor, reference, critic, reward model). `sft` (the SFT LM) gets
    the actor's adapter and the reference is it with the adapter off; `rm` (the reward model, plain) gets the
    critic's adapter and value head (see critic_on_reward_model) and the reward is it with the adapter off. Both
    bodies are modified in place (no copies)."""
    actor = apply_lora(sft, cfg, name="actor", seed=seed)
    critic, reward = critic_on_reward_model(rm, cfg, mean, std, seed=seed + 1)
    return actor, AdapterOff(actor), critic, reward


def set_gradient_checkpointing(model: nn.Module, on: bool) -> nn.Module:
    """params `runtime.gradient_checkpointing`: recompute block activations in backward instead of keeping them
    (built-in GPT: its block loop; HF: gradient_checkpointing_enable), non-reentrant so frozen inputs and
    adapters get correct gradients (the reentrant form gives a LoRA model none: its blocks' input comes from the
    frozen embedding), under DDP as in one process (tests/test_distributed.py). Only training forwards with grad
    are recomputed; rollouts are unchanged."""
    done: list[str] = []  # HF models handled: one call covers the models nested in it (else layers nest twice)
    for name, m in model.named_modules():
        if isinstance(m, Transformer):
            m.gradient_checkpointing = on
        elif getattr(m, "supports_gradient_checkpointing", False) and not any(name.startswith(d) for d in done):
            done.append(name + ".")
            if on:  # transformers 5's name (gradient_checkpointing_enable is deprecated)
                m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            elif m.is_activation_checkpointing:
                m.activation_checkpointing_disable()
    return model


def trainee(model: nn.Module, cfg: LoRAConfig, name: str, gradient_checkpointing: bool, seed: int = 0) -> nn.Module:
    """The model a training stage trains: with a fresh adapter `name` (drawn from the stage's `seed`) when LoRA
    is on (else every weight), and gradient checkpointing as params `runtime.gradient_checkpointing` asks."""
    adapted = apply_lora(model, cfg, name, seed) if cfg.enabled else model
    return set_gradient_checkpointing(adapted, gradient_checkpointing)


# --- checkpoints ------------------------------------------------------------------------------------------


class AdapterBaseMismatch(ValueError):
    """An adapter loaded on a base other than the one it was trained on."""


def save_adapter(out: str | Path, model: nn.Module, base_dir: str | Path, base_label: str | None = None) -> None:
    """Write adapter.safetensors + adapter.json into directory `out` (atomically). `base_dir` is the plain
    checkpoint the adapter was trained on; `base_label` is the path recorded for it (default: base_dir as given,
    e.g. "models/sft" relative to the working root)."""
    from peft import get_peft_model_state_dict

    name = model.active_adapter
    state = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}
    base_dir = Path(base_dir)
    base_cfg = read_config(base_dir)
    cfg = model.peft_config[name]
    meta = {
        "format": ADAPTER_FORMAT,
        "adapter": name,
        "arch": "scalar" if has_scalar_head(model.get_base_model()) else "gpt",
        "lora": asdict(LoRAConfig(cfg.r, cfg.lora_alpha, cfg.lora_dropout, tuple(sorted(cfg.target_modules)))),
        "base": {
            "path": base_label or str(base_dir),
            "sha256": file_hash(base_dir / "model.safetensors"),
            "arch": base_cfg["arch"],
            "backend": base_cfg.get("backend", "builtin"),
        },
    }
    with atomic_dir(out) as tmp:
        save_file(state, str(tmp / "adapter.safetensors"))
        write_json(tmp / "adapter.json", meta)


def read_adapter_meta(path: str | Path) -> dict[str, Any]:
    import json

    meta_file = Path(path) / "adapter.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file}: not an adapter checkpoint (no adapter.json)")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    if meta.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{meta_file}: format {meta.get('format')!r}, expected {ADAPTER_FORMAT!r}")
    return meta


def check_base(path: str | Path, base_dir: str | Path) -> dict[str, Any]:
    """The adapter's metadata, if `base_dir` holds the very weights it was trained on; else AdapterBaseMismatch
    naming both checkpoints and hashes."""
    meta = read_adapter_meta(path)
    weights = Path(base_dir) / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{path}: its base {base_dir} has no model.safetensors")
    want, got = meta["base"]["sha256"], file_hash(weights)
    if want != got:
        raise AdapterBaseMismatch(
            f"{path}: the adapter was trained on {meta['base']['path']} (sha256 {want[:12]}…), but the base given, "
            f"{weights}, has sha256 {got[:12]}…; load it on the base it was trained on, or train it again"
        )
    return meta


def load_adapter(path: str | Path, base_dir: str | Path | None = None) -> nn.Module:
    """The peft model of adapter directory `path` on its base (`base_dir`, default the path it records, which is
    relative to the working directory), after checking the base's sha256. Reads safetensors and JSON only."""
    from peft import set_peft_model_state_dict

    meta = read_adapter_meta(path)
    base_dir = Path(base_dir if base_dir is not None else meta["base"]["path"])
    meta = check_base(path, base_dir)
    model = load_model(base_dir)
    if meta["arch"] == "scalar" and not has_scalar_head(model):
        # a reward model trained from an LM: the original head is never read (the adapter's copy is), so zeros
        model = ScalarHeadModel.from_lm(model, head_std=0.0)
    lora = LoRAConfig(**{**meta["lora"], "target_modules": tuple(meta["lora"]["target_modules"])})
    peft_model = apply_lora(model, lora, name=meta["adapter"])
    result = set_peft_model_state_dict(
        peft_model, load_file(str(Path(path) / "adapter.safetensors")), adapter_name=meta["adapter"]
    )
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ValueError(f"{path}: adapter.safetensors holds tensors the model has no place for: {unexpected[:5]}")
    return peft_model


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain model (GPT, ScalarHeadModel or their HF twins) with the adapter folded into a copy of the weights."""
    return copy.deepcopy(model).merge_and_unload()


def servable(model: nn.Module) -> nn.Module:
    """The model as a plain checkpoint holds it: a LoRA model merged into a copy (its adapter kept), else itself."""
    return merged_copy(model) if is_peft(model) else model


def save_stage_model(
    out: str | Path,
    model: nn.Module,
    tokenizer_path: Path | None,
    base_dir: str | Path,
    base_label: str,
    **extra: Any,
) -> None:
    """A stage's output model, atomically: a plain checkpoint (merged, for a LoRA model, so that every reader
    loads it as before) and, for a LoRA model, its adapter in `out`/adapter naming its base (`base_dir`, recorded
    as `base_label`, a path relative to the working root)."""
    with atomic_dir(out) as tmp:
        lora = is_peft(model)
        write_model(tmp, servable(model), tokenizer_path, {**extra, **({"lora_adapter": "adapter"} if lora else {})})
        if lora:
            save_adapter(tmp / "adapter", model, base_dir, base_label)


def export_merged(path: str | Path, out: str | Path, base_dir: str | Path | None = None, **extra: Any) -> None:
    """Write the merged model of adapter `path` as a plain checkpoint `out` (rlhf.checkpoint's format, for serving
    and evaluation), with the base's tokenizer. Loads base + adapter once and merges in place (one model's memory)."""
    meta = read_adapter_meta(path)
    base_dir = Path(base_dir if base_dir is not None else meta["base"]["path"])
    merged = load_adapter(path, base_dir).merge_and_unload()
    tokenizer = base_dir / "tokenizer.json"
    save_model(out, merged, tokenizer if tokenizer.is_file() else None, lora_adapter=str(path), **extra)
