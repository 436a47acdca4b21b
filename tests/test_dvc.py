"""dvc.yaml checked against the code and params.yaml; the helpers of the fresh-clone test.

`fresh_clone` builds what a clone of the repository holds: the sources, dvc.yaml, params.yaml shrunk to toy
sizes by TINY, the DVC config and the data placeholders, committed once, then cloned. The test reproducing
the real pipeline in it (`dvc repro` twice, push/pull, metrics, plots, and the pipeline flow on the same clone,
so the tiny pipeline is paid once) is tests/test_flows.py::test_fresh_clone_dvc_and_flow_agree.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# What a clone holds (placeholders keep the data folders that stages depend on).
SOURCES = [
    *("rlhf", "tasks", "flows", "dvc.yaml", "params.yaml", "pyproject.toml", ".gitignore", ".dvcignore"),
    *(".dvc/config", ".dvc/.gitignore", "data/user", "data/feedback/.gitkeep", "data/incoming/.gitkeep"),
]
# Toy sizes for every section (keys absent from params.yaml are left alone): the whole pipeline in about a minute.
TINY: dict[str, dict[str, Any]] = {
    "world": {"corpus_chars": 30000, "n_demos": 200, "n_pref_prompts": 40, "n_ppo_prompts": 32, "n_eval_prompts": 16},
    "tokenizer": {"vocab_size": 512},  # at 400 one chatty demo takes 130 tokens > the context
    "model": {"n_layer": 1, "n_head": 2, "n_embd": 32},
    "pretrain": {"steps": 60, "batch_size": 8, "warmup_steps": 2, "eval_every": 30, "checkpoint_every": 0},
    "sft": {
        "steps": 60,
        "batch_size": 8,
        "warmup_steps": 2,
        "eval_every": 30,
        "checkpoint_every": 0,
        "eval_prompts": 8,
        "max_new_tokens": 16,
    },
    "validate": {"min_demos": 10, "min_pairs": 10},
    "preferences": {"k": 2, "max_new_tokens": 16},
    "reward_model": {"epochs": 1, "batch_size": 8, "warmup_steps": 2, "eval_every": 5, "n_samples": 8},
    "dpo": {"steps": 4, "batch_size": 8, "warmup_steps": 1, "eval_every": 2, "checkpoint_every": 0},
    "ppo": {
        "iterations": 2,
        "batch_size": 8,
        "mini_batches": 2,
        "ppo_epochs": 1,
        "max_new_tokens": 16,
        "checkpoint_every": 1,
        "snapshot_every": 1,
        "probe_prompts": 8,
    },
    "evaluate": {"n_prompts": 8, "n_samples": 1, "max_new_tokens": 16, "n_boot": 100, "curve_prompts": 4},
}
STAGE_FILES = sorted({d for s in DVC_YAML.values() for d in s["deps"] if d.startswith("tasks/")})
needs_stages = pytest.mark.skipif(
    not all((ROOT / f).exists() for f in STAGE_FILES),
    reason=f"needs every stage of dvc.yaml: {[f for f in STAGE_FILES if not (ROOT / f).exists()]} missing",
)


def lookup(params: dict[str, Any], dotted: str) -> bool:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_dvc_stages_are_the_flow_stages_in_order() -> None:
    from flows.pipeline import STAGES

    assert tuple(DVC_YAML) == STAGES
    produced: set[str] = set()
    for name, stage in DVC_YAML.items():  # every data dep is made by an earlier stage or kept in git
        made_here = [*stage.get("outs", []), *stage.get("metrics", [])]  # a stage may read another's metrics
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in made_here]
        for dep in stage["deps"]:
            made = any(dep == o or dep.startswith(f"{o}/") or o.startswith(f"{dep}/") for o in produced)
            assert made or (ROOT / dep).exists(), f"{name}: dep {dep} is neither an earlier output nor in the repo"
        produced.update(outs)


def test_every_param_a_stage_lists_is_in_params_yaml() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    missing = [(name, key) for name, s in DVC_YAML.items() for key in s.get("params", []) if not lookup(params, key)]
    assert not missing, f"dvc.yaml lists params that params.yaml lacks: {missing}"


def _imported(file: Path) -> set[str]:
    """Project modules a file imports anywhere in it (module level and inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}  # `from rlhf import x`
    return {n for n in names if n.split(".")[0] in ("rlhf", "tasks")}


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.exists():
            return f
    return None


# Plumbing that cannot change what a stage computes: params parsing, paths, error types, metrics files, MLflow,
# plots, atomic writes, progress lines. A logging change must not retrain models, so these are no stage's deps
# and what they import is not followed.
PLUMBING = {"tasks/common.py", "tasks/tracking.py", "tasks/plots.py", "rlhf/io.py", "rlhf/progress.py"}


def import_closure(module: str) -> set[str]:
    """Every project file that running `python -m module` may import (module level and inside functions, not
    through PLUMBING), as paths relative to the repo."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            f = _module_file(".".join(parts[:i]))
            if f is not None and f not in seen:
                seen.add(f)
                todo += [] if str(f.relative_to(ROOT)) in PLUMBING else _imported(f)
    return {str(f.relative_to(ROOT)) for f in seen}


def core_imports(module: str) -> set[str]:
    """The core files (rlhf/world as one) a stage's entry module imports, plumbing left out."""
    files = {f for f in import_closure(module) if f.startswith("rlhf/")} - PLUMBING - {"rlhf/__init__.py"}
    return {"rlhf/world" if f.startswith("rlhf/world/") else f for f in files}


@pytest.mark.parametrize("stage", list(DVC_YAML))
def test_stage_deps_cover_the_core_code_it_imports(stage: str) -> None:
    """A core module a stage imports but does not list would leave stale outputs that `dvc repro` calls up to
    date. PLUMBING is left out on purpose."""
    spec = DVC_YAML[stage]
    module = spec["cmd"].split("-m", 1)[1].split()[0]
    deps = spec["deps"]
    needed = core_imports(module) | {f"{module.replace('.', '/')}.py"}
    missing = sorted(f for f in needed if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
    assert not missing, f"dvc.yaml stage {stage} imports {missing} but does not list them in deps"


def test_tiny_params_name_existing_keys() -> None:
    """TINY must track params.yaml: a renamed key would silently stop shrinking."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stale = [f"{sec}.{k}" for sec, kv in TINY.items() for k in kv if not lookup(params, f"{sec}.{k}")]
    assert not stale, f"TINY names keys params.yaml does not have: {stale}"


def test_the_dpo_stage_lists_what_it_reads_and_runs() -> None:
    """Its deps are the core modules it imports (no more: a change elsewhere must not retrain it), its task file,
    SFT, the pairs and their gate; its params are its section, the adapters (model.lora) and the reward model's
    held-out share."""
    stage = DVC_YAML["dpo"]
    code = {d for d in stage["deps"] if d.startswith(("rlhf/", "tasks/"))}
    imported = core_imports("tasks.dpo")
    assert imported <= code and code - imported == {"tasks/dpo.py"}
    data = set(stage["deps"]) - code
    assert data == {"models/sft", "data/preferences/pairs.parquet", "reports/validation/preferences.json"}
    assert stage["params"] == ["dpo", "model.lora", "reward_model.val_frac", "runtime"]
    assert stage["outs"] == ["models/dpo", {"metrics/dpo.json": {"cache": False}}]
    compare = DVC_YAML["compare_methods"]
    assert {"models/dpo", "models/ppo", "metrics/dpo.json", "metrics/eval.json"} <= set(compare["deps"])
    uncached = {next(iter(m)) for m in compare["outs"] if isinstance(m, dict)}
    assert uncached == {"metrics/eval_dpo.json", "metrics/compare_methods.json"}


def test_dvc_reads_the_pipeline(tmp_path: Path) -> None:
    # In a scratch repository: a `dvc repro` running in the checkout holds its lock.
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    run_dvc(tmp_path, "init", "--no-scm", "-q")
    out = run_dvc(tmp_path, "dag", "--dot")
    assert '"ppo" -> "evaluate"' in out and '"validate_preferences" -> "reward_model"' in out
    assert '"dpo" -> "compare_methods"' in out and '"validate_preferences" -> "dpo"' in out
    assert '"dpo" -> "ppo"' not in out and '"reward_model" -> "dpo"' not in out  # DPO needs no reward model


# --- the real pipeline in a fresh clone -------------------------------------------------------------------


def dvc_env(**extra: str) -> dict[str, str]:
    """The venv first on PATH (DVC runs stage commands with the first `python`), no analytics."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)  # the clone's own code, not the checkout's
    return {**env, "DVC_NO_ANALYTICS": "1", **extra}


def run_dvc(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args],
        cwd=root,
        env=env or dvc_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def ran_stages(dvc_output: str) -> list[str]:
    return [line.split("'")[1] for line in dvc_output.splitlines() if line.startswith("Running stage")]


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root, check=True, capture_output=True
    )


def fresh_clone(tmp: Path) -> Path:
    """A committed copy of the repository's sources with TINY params, cloned to tmp/clone."""
    src = tmp / "origin"
    for rel in SOURCES:
        if (ROOT / rel).is_dir():
            shutil.copytree(ROOT / rel, src / rel, ignore=shutil.ignore_patterns("__pycache__"))
        elif (ROOT / rel).exists():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    params = yaml.safe_load((src / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update({k: v for k, v in values.items() if k in params.get(section, {})})
    (src / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(src, "init", "-q")
    git(src, "add", "-A")
    git(src, "commit", "-qm", "sources")
    git(tmp, "clone", "-q", str(src), "clone")
    return tmp / "clone"


@pytest.mark.parametrize("stage", list(DVC_YAML))
def test_stage_deps_list_no_core_module_it_does_not_import(stage: str) -> None:
    """A core module listed but not imported would rerun the stage for a change that cannot touch it. (Folders such
    as rlhf/world are left out: the default gold judge is imported by its params' import path.)"""
    spec = DVC_YAML[stage]
    module = spec["cmd"].split("-m", 1)[1].split()[0]
    listed = {d for d in spec["deps"] if d.startswith("rlhf/") and d.endswith(".py")}
    assert sorted(listed - core_imports(module)) == []


def test_dvc_presents_the_summary_and_images_only() -> None:
    """`dvc metrics show`/`diff` show the headline file alone (no timings); `dvc plots show` renders offline, since
    an image needs no Vega from a CDN (the CSVs beside the PNGs are uncached outs)."""

    def declared(kind: str) -> list[str]:
        return [next(iter(m)) if isinstance(m, dict) else m for s in DVC_YAML.values() for m in s.get(kind, [])]

    assert declared("metrics") == ["metrics/summary.json"]
    assert declared("plots") and all(p.endswith(".png") for p in declared("plots"))


# `dvc exp show` without flags lists every key of params.yaml and a hash column per code or data dependency (DVC
# 3 has no setting for its columns); docs/lifecycle.md gives this view of the headline numbers instead.
HEADLINE_VIEW = ("--drop", ".*", "--keep", "^(Experiment|win|low|correct|kl|rm_acc)")
EXPERIMENT_LABEL = "├── 1a2b3c4 [exp-5d6e7]"  # an experiment's row: tree, short commit, DVC's generated name


def test_the_documented_headline_view_shows_every_number_in_160_columns(tmp_path: Path) -> None:
    """Run by DVC on this dvc.yaml and params.yaml with a full metrics/summary.json (numbers as wide as they get):
    the view keeps exactly the summary's numbers (no param or dependency column), and its width plus what an
    experiment's row label adds to the first column stays within 160."""
    from tasks.summary import headline, numbers

    gold = {"win_rate": 0.12345, "ci_low": 0.06789}
    content = {"candidate": {"correct": 0.45678}, "baseline": {"correct": 0.34567}}
    evals = [{"gold": gold, "kl": kl, "content": content} for kl in (12.3456, 10.9876)]
    summary = headline(*evals, {"ppo_vs_dpo": gold}, {"accuracy": 0.65432})
    for rel in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / rel, tmp_path / rel)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/summary.json").write_text(json.dumps(summary))
    git(tmp_path, "init", "-q", "-b", "main")
    run_dvc(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "headline")

    header = run_dvc(tmp_path, "exp", "show", "--csv", *HEADLINE_VIEW).splitlines()[0].split(",")
    shown = set(header) - {"Experiment", "rev", "typ", "parent"}
    assert shown == {name.replace("/", ".") for name in numbers(summary, prefix="")} and len(shown) == 11
    table = run_dvc(tmp_path, "exp", "show", *HEADLINE_VIEW).splitlines()
    first_column = max(len(line.split()[0]) for line in table if line.strip() and "─" not in line)
    assert max(map(len, table)) + len(EXPERIMENT_LABEL) - first_column <= 160
    command = "dvc exp show " + " ".join(a if a.startswith("--") else f"'{a}'" for a in HEADLINE_VIEW)
    assert command in (ROOT / "docs/lifecycle.md").read_text()
