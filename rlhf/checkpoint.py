"""Checkpoints: safetensors weights + JSON config, written atomically; nothing is ever pickled or unpickled.

A model directory holds
    model.safetensors   the weights
    config.json         {"arch": "gpt" | "scalar", "model": GPTConfig fields, ...extra metadata}
    tokenizer.json      the tokenizer, so a checkpoint is self-contained (serving, evaluation)
A Hugging Face model (rlhf.hf, params `model.hf_path`) is saved the same way: "arch" is its role (an LM or a scalar
head), "backend": "hf" and "hf_config" (the transformers config) say how to rebuild it, and its tokenizer's
companion files (tokenizer_config.json, chat template) sit beside tokenizer.json.
A training state (for resume) is `state.safetensors` (optimizer tensors, RNG state) + `state.json` beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rlhf.backends import CausalLM, ScalarModel
from rlhf.io import atomic_dir, atomic_path, write_json
from rlhf.model import GPT, GPTConfig, ScalarHeadModel

ARCHS = {"gpt": GPT, "scalar": ScalarHeadModel}
HF_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")
"""files of a Hugging Face tokenizer copied along with its tokenizer.json (its special tokens, its chat template)"""


def _state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict as contiguous CPU tensors. Tied weights (an HF LM head sharing the embedding) appear under
    two names with one storage, which safetensors refuses: the second is copied; loading both restores the tie."""
    state, seen = {}, set()
    for k, v in model.state_dict().items():
        t = v.detach().contiguous().cpu()
        ptr = t.untyped_storage().data_ptr()
        state[k] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return state


def is_peft(model: torch.nn.Module) -> bool:
    """peft's wrapper (rlhf.lora), told apart by its class's package so that peft is imported only with LoRA on."""
    return type(model).__module__.split(".")[0] == "peft"


def write_model(out: Path, model: CausalLM | ScalarModel, tokenizer_path: Path | None, extra: dict[str, Any]) -> None:
    """Write the model files into an existing directory `out` (used inside an atomic_dir)."""
    save_file(_state_tensors(model), str(out / "model.safetensors"))
    if is_peft(model):  # a LoRA model (rlhf.lora) in a training state: resumed by load_state_dict
        config = {"arch": "lora-training-state", "adapters": sorted(model.peft_config), **extra}
    elif isinstance(model, CausalLM | ScalarModel):
        config = {**model.checkpoint_config(), **extra}  # each backend says how to rebuild itself
    else:
        raise TypeError(f"cannot checkpoint a {type(model).__name__}: not a model of rlhf.backends")
    write_json(out / "config.json", config)
    if tokenizer_path is not None:
        tokenizer_path = Path(tokenizer_path)
        shutil.copyfile(tokenizer_path, out / "tokenizer.json")
        for name in HF_TOKENIZER_FILES:
            if (tokenizer_path.parent / name).is_file():
                shutil.copyfile(tokenizer_path.parent / name, out / name)


def save_model(path: str | Path, model: torch.nn.Module, tokenizer_path: Path | None = None, **extra: Any) -> None:
    """Save a whole model directory; the previous one stays intact until the new one is complete."""
    with atomic_dir(path) as tmp:
        write_model(tmp, model, tokenizer_path, extra)


def read_config(path: str | Path) -> dict[str, Any]:
    cfg_file = Path(path) / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file}: not a model checkpoint (no config.json)")
    with open(cfg_file, encoding="utf-8") as f:
        return json.load(f)


def load_model(path: str | Path, arch: str | None = None) -> torch.nn.Module:
    """Load a model directory; `arch` ("gpt" or "scalar") asserts what the caller expects."""
    path = Path(path)
    config = read_config(path)
    if arch is not None and config["arch"] != arch:
        raise ValueError(f"{path}: holds a '{config['arch']}' model, expected '{arch}'")
    state = load_file(str(path / "model.safetensors"))
    if config.get("backend") == "hf":
        from rlhf.hf import from_checkpoint_config

        model = from_checkpoint_config(config)  # allocated without a random init
        model.load_state_dict(state)
        return model
    if "transformer.wpe.weight" in state:
        raise ValueError(
            f"{path}: a built-in GPT with learned position embeddings, from before the model took rotary positions; "
            "this version cannot run it. Retrain it (`dvc repro`), and archive such a version in the MLflow "
            "registry if it is the champion, so that a new actor is compared with a model that can run."
        )
    # Built on the meta device and given the file's tensors: no random init of weights about to be replaced
    # (minutes for a large model) and no draw from the global RNG, so loading never shifts a seeded run.
    with torch.device("meta"):
        model = ARCHS[config["arch"]](GPTConfig(**config["model"]))
    model.load_state_dict(state, assign=True)
    return model


def file_hash(path: str | Path) -> str:
    """sha256 of a file (the provenance of data sampled from a checkpoint)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- training state ---------------------------------------------------------------------------------------


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{idx}.{key}"] = val.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_training_state(path: str | Path, optimizers: dict[str, torch.optim.Optimizer], meta: dict[str, Any]) -> None:
    """Optimizer states, torch's RNG state and JSON metadata (step, schedules, ...) into directory `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    opt_meta = {}
    for name, opt in optimizers.items():
        t, m = _flatten_optimizer(opt)
        tensors.update({f"{name}.{k}": v for k, v in t.items()})
        opt_meta[name] = m
    with atomic_path(path / "state.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json(path / "state.json", {"meta": meta, "optimizers": opt_meta})


def load_training_state(path: str | Path, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
    """Restore what save_training_state wrote; returns its metadata."""
    path = Path(path)
    tensors = load_file(str(path / "state.safetensors"))
    with open(path / "state.json", encoding="utf-8") as f:
        saved = json.load(f)
    torch.set_rng_state(tensors["rng.torch"])
    for name, opt in optimizers.items():
        meta = saved["optimizers"][name]
        state: dict[int, dict[str, Any]] = {}
        prefix = f"{name}.opt."
        for key, val in tensors.items():
            if key.startswith(prefix):
                idx, field = key[len(prefix) :].split(".", 1)
                state.setdefault(int(idx), {})[field] = val
        for key, val in meta["scalars"].items():
            idx, field = key.split(".", 1)
            state.setdefault(int(idx), {})[field] = val
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return saved["meta"]


def save_resumable(
    path: Path,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    meta: dict[str, Any],
    tensors: dict[str, dict[str, torch.Tensor]] | None = None,
) -> None:
    """A complete resumable training state in directory `path`: each model's weights (in `path/<name>/`, or
    `path` itself for the name ""), extra tensor files, the optimizers, RNG and `meta` (its "inputs": the
    run's `fingerprint`). The previous state survives until this one is complete."""
    with atomic_dir(path) as tmp:
        for name, model in models.items():
            (tmp / name).mkdir(exist_ok=True)
            write_model(tmp / name, model, None, {})
        for file, state in (tensors or {}).items():
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / file))
        save_training_state(tmp, optimizers, meta)


def load_resumable(
    path: Path,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    expected: dict[str, Any],
    start_over: Path,
) -> dict[str, Any] | None:
    """Restore in place what save_resumable wrote when `path` holds a state started from these very inputs
    (`expected`, a fingerprint) and return its meta; None when there is none. A state of other inputs is refused
    (ResumeRefused), never silently resumed or dropped."""
    meta = resumable_meta(path, expected, start_over)
    if meta is None:
        return None
    for name, model in models.items():
        model.load_state_dict(load_file(str(path / name / "model.safetensors")))
    load_training_state(path, optimizers)
    return meta


# --- what a training state was started from -----------------------------------------------------------------


class ResumeRefused(RuntimeError):
    """A training state exists but was started from other inputs; the message names them and how to start over."""


def fingerprint(config: Any, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The inputs a training run starts from, as flat JSON values: the loop's config fields (`config.<field>`)
    and whatever the caller adds (its whole params section, hashes of the models and data it read, the reward
    and judge specs). Two runs may share a training state only if their fingerprints are equal."""
    flat: dict[str, Any] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                add(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value

    add("config", dataclasses.asdict(config))
    add("", inputs or {})
    return json.loads(json.dumps(flat, sort_keys=True, default=str))  # tuples -> lists, as state.json reads back


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def resumable_meta(state_dir: str | Path, expected: dict[str, Any], start_over: str | Path) -> dict[str, Any] | None:
    """The metadata of the training state in `state_dir` if it was started from `expected` inputs (a
    `fingerprint`); None when there is none. A state of other inputs is refused with ResumeRefused naming each
    input that changed and the directory to delete (`start_over`) to start fresh."""
    state_file = Path(state_dir) / "state.json"
    if not state_file.exists():
        return None
    meta = json.loads(state_file.read_text(encoding="utf-8"))["meta"]
    saved = meta.get("inputs")
    if saved == expected:
        return meta
    if saved is None:
        changed = ["(the state predates input fingerprints)"]
    else:
        keys = sorted(set(saved) | set(expected))
        changed = [
            f"{k}: {_short(saved.get(k, '<absent>'))} -> {_short(expected.get(k, '<absent>'))}"
            for k in keys
            if saved.get(k, "<absent>") != expected.get(k, "<absent>")
        ]
    raise ResumeRefused(
        f"{state_dir}: refusing to resume a training state started from other inputs: "
        + "; ".join(changed)
        + f". To start fresh, delete it: rm -rf {start_over} (or restore the inputs it was started from)."
    )
