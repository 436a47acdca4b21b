"""The model registry: rlhf-actor, rlhf-critic, rlhf-reward-model, their lineage, the actor's promotion.

Each checkpoint is logged as a pyfunc "from code" (tasks/actor_model.py, tasks/scorer_model.py: nothing is
pickled) with the checkpoint directory as its artifact and the core package `rlhf` as its code, then
registered. A version holding the very same weights as an existing one is reused, so a pipeline run that
retrained nothing registers nothing. Each version carries lineage tags: the git commit, the DVC hashes of the
data and models its stage read (from dvc.lock), a hash of that stage's params, and the registered versions it
was trained from.

Promotion: of a run's actors (PPO's and DPO's, versions of rlhf-actor tagged `method`), the one whose gold
win-rate against SFT has the higher CI lower bound gets the alias `challenger` (`choose_challenger`); it
becomes `champion` only when the lower bound of its win-rate CI is above 0.5 against the current champion (the
first one: against SFT, which is what the evaluate stages measure). `decide_promotion` is the pure rule;
`promote` gathers the evidence, applies the rule and records decision and evidence as version tags.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import yaml

from tasks import tracking
from tasks.common import ROOT, workdir

ACTOR, CRITIC, REWARD_MODEL = "rlhf-actor", "rlhf-critic", "rlhf-reward-model"
CHAMPION, CHALLENGER = "champion", "challenger"
CKPT_TAG = "rlhf.checkpoint_sha256"  # identity of the weights: a version is reused when they match
METHOD_TAG = "method"  # how an actor was trained: ppo | dpo
CODE = {ACTOR: ROOT / "tasks" / "actor_model.py", CRITIC: ROOT / "tasks" / "scorer_model.py"}
CODE[REWARD_MODEL] = CODE[CRITIC]
FEEDBACK_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")  # what tasks/preferences.py merges
# What a served model needs; given explicitly, which also skips MLflow's ~5 s requirement inference.
REQUIREMENTS = ["mlflow", "torch", "tokenizers", "safetensors", "numpy", "pandas"]

Comparator = Callable[[Path, Path], Mapping[str, Any]]
"""(candidate checkpoint dir, baseline checkpoint dir) -> eval metrics shaped like metrics/eval.json"""


# --- the promotion rule ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    baseline: str
    """what the challenger was compared with: "sft" or "champion:v<N>\""""
    reason: str
    win_rate: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    n: int = 0

    def as_tags(self) -> dict[str, str]:
        return {f"promotion.{k}": str(v) for k, v in asdict(self).items()}


def decide_promotion(
    vs_sft: Mapping[str, Any] | None,
    vs_champion: Mapping[str, Any] | None,
    champion: str | None,
    judge: str = "gold",
    threshold: float = 0.5,
) -> PromotionDecision:
    """Promote the challenger iff the lower bound of its win-rate CI under `judge` exceeds `threshold`.

    The comparison that counts is against the current champion (version `champion`), or against SFT while
    there is no champion. vs_sft / vs_champion are eval metrics dicts ({"gold": {"win_rate", "ci_low",
    "ci_high", "n"}, ...}); a missing or malformed comparison never promotes. The bound is strict: a CI
    touching or straddling 0.5 is no evidence of a better model.
    """
    evidence, baseline = (vs_sft, "sft") if champion is None else (vs_champion, f"champion:v{champion}")
    block = (evidence or {}).get(judge)
    if not isinstance(block, Mapping) or "ci_low" not in block:
        return PromotionDecision(False, baseline, f"no '{judge}' win-rate against {baseline}")
    stats = {k: float(block.get(k, math.nan)) for k in ("win_rate", "ci_low", "ci_high")}
    n = int(block.get("n", 0))
    if not math.isfinite(stats["ci_low"]):
        return PromotionDecision(False, baseline, f"'{judge}' ci_low is not a number", n=n, **stats)
    if stats["ci_low"] > threshold:
        reason = f"ci_low {stats['ci_low']:.3f} > {threshold} against {baseline}"
        return PromotionDecision(True, baseline, reason, n=n, **stats)
    reason = f"ci_low {stats['ci_low']:.3f} <= {threshold} against {baseline}: not better with confidence"
    return PromotionDecision(False, baseline, reason, n=n, **stats)


def choose_challenger(vs_sft: Mapping[str, Mapping[str, Any] | None], judge: str = "gold") -> str:
    """Of this run's actors (method -> its eval metrics against SFT), the one whose win-rate CI under `judge`
    has the higher lower bound; the first listed wins ties and is the pick when none has a usable figure
    (the promotion rule then records the missing evidence)."""
    if not vs_sft:
        raise ValueError("no actor to choose a challenger from")

    def ci_low(method: str) -> float:
        block = (vs_sft[method] or {}).get(judge)
        value = float(block.get("ci_low", math.nan)) if isinstance(block, Mapping) else math.nan
        return value if math.isfinite(value) else -math.inf

    return max(vs_sft, key=ci_low)  # max keeps the first of equal keys


# --- lineage -----------------------------------------------------------------------------------------------


def read_lock(root: Path | None = None) -> dict[str, Any]:
    """The stages of dvc.lock under `root` (default: the working root); {} before the first `dvc repro`."""
    lock = (root or workdir()) / "dvc.lock"
    if not lock.exists():
        return {}
    with open(lock, encoding="utf-8") as f:
        return (yaml.safe_load(f) or {}).get("stages", {})


def params_hash(params: Mapping[str, Any]) -> str:
    """A short, order-independent hash of a stage's params."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_lineage(lock: Mapping[str, Any], stage: str) -> dict[str, str]:
    """Lineage tags of what `stage` produced: DVC hashes of its data/model deps and outs, its params' hash."""
    entry = lock.get(stage)
    if entry is None:
        return {"lineage.dvc_stage": f"{stage} (not in dvc.lock)"}
    tags = {"lineage.dvc_stage": stage}
    for kind in ("deps", "outs"):
        for item in entry.get(kind, []):
            if not item["path"].startswith(("rlhf/", "tasks/")):  # code is covered by the git commit
                tags[f"lineage.dvc.{kind}.{item['path']}"] = str(item.get("md5") or item.get("hash"))
    params = entry.get("params", {})
    tags["lineage.params_hash"] = params_hash(params)
    tags["lineage.params"] = json.dumps(params, sort_keys=True, default=str)
    return tags


def feedback_lineage(root: Path) -> dict[str, str]:
    """The files of data/feedback/ the merge_feedback stage merged (the retraining flow's accepted files)."""
    folder = root / "data" / "feedback"
    files = sorted(p.name for p in folder.glob("*") if p.suffix in FEEDBACK_SUFFIXES) if folder.exists() else []
    return {"lineage.feedback_files": json.dumps(files)} if files else {}


# --- model cards -------------------------------------------------------------------------------------------

WHAT = {
    ACTOR: "The policy (actor) {method}: a causal LM that answers a user prompt in the project's chat format.",
    CRITIC: "PPO's critic (value model): a scalar head per token, used in training only (not a judge of answers).",
    REWARD_MODEL: "The reward model: a Bradley-Terry scalar head on the SFT body; scores (prompt, response) pairs.",
}
METHOD_NAMES = {"ppo": "trained by PPO against the reward model", "dpo": "trained by DPO on the preference pairs"}
METRIC_FILES = {  # the headline metrics of a model: metrics/<file> keys, by (model, method)
    (ACTOR, "ppo"): [("eval.json", ("gold", "rm", "kl")), ("ppo.json", ("kl", "gold_score", "rm_score", "length"))],
    (ACTOR, "dpo"): [("eval_dpo.json", ("gold", "rm", "kl")), ("dpo.json", ("val_accuracy", "val_margin"))],
    (CRITIC, None): [("ppo.json", ("iterations", "reward_mean", "reward_std"))],
    (REWARD_MODEL, None): [("reward_model.json", ("accuracy", "ceiling", "spearman_gold", "margin", "n_train"))],
}


def _figure(value: Any) -> str:
    if isinstance(value, Mapping) and {"win_rate", "ci_low", "ci_high"} <= set(value):
        return f"win-rate {value['win_rate']:.3f} [95% CI {value['ci_low']:.3f}, {value['ci_high']:.3f}] vs SFT"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def headline_metrics(root: Path, name: str, method: str | None) -> list[str]:
    """`file key: value` lines of the metrics that say how good the model is (those present)."""
    lines = []
    for file, keys in METRIC_FILES.get((name, method), []):
        path = root / "metrics" / file
        metrics = json.loads(path.read_text()) if path.exists() else {}
        lines += [f"- {file} `{k}`: {_figure(metrics[k])}" for k in keys if k in metrics]
    return lines or ["- (no metrics files found under metrics/)"]


def model_card(name: str, tags: Mapping[str, str], metrics: list[str], config: Mapping[str, Any]) -> str:
    """The description of a registered version (Markdown): what it is, the data and params it came from, its
    headline metrics, how to serve it."""
    method = tags.get(METHOD_TAG)
    what = WHAT[name].format(method=METHOD_NAMES.get(method or "", "")).replace(" .", ".").replace("  ", " ")
    shape = config.get("model", {})
    arch = f"{config.get('backend', 'built-in')} {config.get('arch')}, context {shape.get('block_size')} tokens"
    deps = "lineage.dvc.deps."
    data = [f"- {k.removeprefix(deps)}: `{v}`" for k, v in tags.items() if k.startswith(deps)]
    stage, commit = tags.get("lineage.dvc_stage", "?"), tags.get("lineage.git_commit", "?")
    if "lineage.feedback_files" in tags:
        data.append(f"- feedback files merged: {tags['lineage.feedback_files']}")
    request = (
        '{"dataframe_records": [{"prompt": "..."}], "params": {"max_new_tokens": 64}}'
        if name == ACTOR
        else '{"dataframe_records": [{"prompt": "...", "response": "..."}]}'
    )
    return "\n".join(
        [
            f"# {name}",
            "",
            what,
            f"Architecture: {arch}.",
            "",
            f"## Data (DVC hashes of stage `{stage}`'s inputs; code at git {commit})",
            *(data or ["- (no dvc.lock entry)"]),
            "",
            "## Params",
            f"`{tags.get('lineage.params', '{}')}`",
            "",
            "## Headline metrics",
            *metrics,
            "",
            "## Serve",
            f"`mlflow models serve -m models:/{name}/<version> --env-manager local -p 5001`, then POST to "
            f"`/invocations`: `{request}`",
        ]
    )


# --- registration ------------------------------------------------------------------------------------------


def pip_requirements(hf: bool = False) -> list[str]:
    """REQUIREMENTS pinned to the installed versions (without local labels such as +cpu); a Hugging Face
    checkpoint (rlhf.hf) also needs transformers to be served."""
    names = [*REQUIREMENTS, "transformers"] if hf else REQUIREMENTS
    return [f"{name}=={dist_version(name).split('+')[0]}" for name in names]


def signature(name: str, block_size: int = 128) -> Any:
    """Inputs, outputs and (the actor's) params with their defaults; MLflow fills the defaults into every request,
    so the default response length is cut to the model's context (a longer one is refused: rlhf.serving)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from rlhf.serving import DEFAULTS

    if name == ACTOR:
        params = ParamSchema(
            [
                ParamSpec("max_new_tokens", "long", min(DEFAULTS["max_new_tokens"], block_size)),
                ParamSpec("temperature", "double", DEFAULTS["temperature"]),
                ParamSpec("top_p", "double", DEFAULTS["top_p"]),
                ParamSpec("seed", "long", DEFAULTS["seed"]),
            ]
        )
        return ModelSignature(
            Schema([ColSpec("string", "prompt")]), Schema([ColSpec("string", "response")]), params=params
        )
    inputs = Schema([ColSpec("string", "prompt"), ColSpec("string", "response")])
    return ModelSignature(inputs, Schema([ColSpec("double", "score")]))


def client() -> Any:
    """A client of the project's store (tracking.setup: MLFLOW_TRACKING_URI or the embedded default)."""
    import mlflow

    tracking.setup()
    return mlflow.MlflowClient()


def find_version(name: str, sha256: str) -> Any | None:
    """The registered version of `name` whose weights have this sha256, if any."""
    found = client().search_model_versions(f"name = '{name}' and tags.`{CKPT_TAG}` = '{sha256}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def register(name: str, checkpoint: Path, tags: Mapping[str, str], root: Path | None = None) -> tuple[Any, bool]:
    """Log `checkpoint` as a pyfunc in the active run and register it as a version of `name`, described by its
    model card (`model_card`: what it is, data, params, the headline metrics under root/metrics/, serving).

    Returns (version, created); created is False when a version with the same weights already existed.
    """
    import mlflow
    from rlhf.checkpoint import file_hash, read_config

    sha = file_hash(checkpoint / "model.safetensors")
    existing = find_version(name, sha)
    if existing is not None:
        return existing, False
    config = read_config(checkpoint)
    with warnings.catch_warnings():
        # No input example on purpose: MLflow would load and run the model to check it (docs/lifecycle.md
        # shows a request instead).
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(CODE[name]),
            artifacts={"checkpoint": str(checkpoint)},
            code_paths=[str(ROOT / "rlhf")],
            pip_requirements=pip_requirements(hf=config.get("backend") == "hf"),
            signature=signature(name, config["model"]["block_size"]),
            registered_model_name=name,
        )
    mc = client()
    version = str(info.registered_model_version)
    for key, value in {**tags, CKPT_TAG: sha}.items():
        mc.set_model_version_tag(name, version, key, value)
    metrics = headline_metrics(root or workdir(), name, tags.get(METHOD_TAG))
    mc.update_model_version(name, version, description=model_card(name, tags, metrics, config))
    return mc.get_model_version(name, version), True


@dataclass(frozen=True)
class Registered:
    """Versions of one pipeline run ("3"), and whether the actor is new (a challenger to evaluate). `actor` is
    PPO's; `dpo_actor` DPO's when the run trained one (both are versions of rlhf-actor, tagged `method`)."""

    actor: str
    critic: str
    reward_model: str
    new_actor: bool
    dpo_actor: str | None = None
    new_dpo_actor: bool = False

    def actors(self) -> dict[str, str]:
        """method -> actor version of this run, PPO first."""
        return {"ppo": self.actor, **({"dpo": self.dpo_actor} if self.dpo_actor else {})}

    @property
    def any_new_actor(self) -> bool:
        return self.new_actor or self.new_dpo_actor


def register_pipeline(root: Path | None = None, parent_run_id: str | None = None) -> Registered:
    """Register the reward model, critic and actor under `root` (default: the working root) in a `register`
    run, a child of `parent_run_id` when given."""
    import mlflow

    root = root or workdir()
    lock = read_lock(root)
    commit = {"lineage.git_commit": tracking.git_commit(root), **feedback_lineage(root)}
    exp_id = tracking.setup()
    with mlflow.start_run(
        experiment_id=exp_id,
        run_name="register",
        parent_run_id=parent_run_id,
        tags=tracking.base_tags("register"),
    ):
        rm_tags = {**commit, **stage_lineage(lock, "reward_model")}
        rm, _ = register(REWARD_MODEL, root / "models/reward_model", rm_tags, root)
        from_rm = {"lineage.from.rlhf-reward-model": str(rm.version)}
        ppo_tags = {**commit, **stage_lineage(lock, "ppo"), **from_rm}
        critic, _ = register(CRITIC, root / "models/ppo/critic", ppo_tags, root)
        actor, new_actor = register(ACTOR, root / "models/ppo/actor", {**ppo_tags, METHOD_TAG: "ppo"}, root)
        dpo, new_dpo = None, False
        if (root / "models/dpo/config.json").exists():
            dpo_tags = {**commit, **stage_lineage(lock, "dpo"), METHOD_TAG: "dpo"}
            dpo, new_dpo = register(ACTOR, root / "models/dpo", dpo_tags, root)
    return Registered(
        str(actor.version), str(critic.version), str(rm.version), new_actor, dpo and str(dpo.version), new_dpo
    )


# --- promotion ---------------------------------------------------------------------------------------------


def alias_version(name: str, alias: str) -> str | None:
    """The version an alias points to, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def download_checkpoint(name: str, version: str, dst: Path) -> Path:
    """The checkpoint directory logged with a registered version, downloaded under `dst`."""
    import mlflow

    tracking.setup()
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)))
    # MLflow stores an artifact under its source directory's name: the MLmodel file says where.
    flavor = mlflow.models.Model.load(local / "MLmodel").flavors["python_function"]
    return local / flavor["artifacts"]["checkpoint"]["path"]


@contextlib.contextmanager
def promotion_lock() -> Iterator[Path]:
    """One promotion at a time across the processes of this machine: an exclusive flock on
    `<store dir>/promotion.lock` (the SQLite store's folder, mlflow/ by default; for a server store, the working
    root's mlflow/). Processes on other machines promoting through a shared MLflow server are not covered: run
    promotion from one place (one Prefect deployment with concurrency_limit=1, or a Prefect global concurrency
    limit around the promote task), as docs/lifecycle.md says."""
    uri = tracking.tracking_uri()
    folder = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else workdir() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / "promotion.lock"
    with open(lock, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # blocks until the promotion holding it ends (released on exit or death)
        try:
            yield lock
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _head_to_head(version: str, champion: str, compare: Comparator) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rlhf-promote-") as tmp:
        return dict(
            compare(
                download_checkpoint(ACTOR, version, Path(tmp) / "challenger"),
                download_checkpoint(ACTOR, champion, Path(tmp) / "champion"),
            )
        )


def select_challenger(
    actors: Mapping[str, str], vs_sft: Mapping[str, Mapping[str, Any] | None], judge: str = "gold"
) -> tuple[str, str]:
    """Of this run's actors (method -> version), give the alias `challenger` to the one `choose_challenger`
    picks from their comparisons with SFT; returns (method, version)."""
    method = choose_challenger({m: vs_sft.get(m) for m in actors}, judge)
    client().set_registered_model_alias(ACTOR, CHALLENGER, actors[method])
    return method, actors[method]


def methods_evidence(vs_sft: Mapping[str, Mapping[str, Any] | None], judge: str = "gold") -> dict[str, str]:
    """Tags naming every method's figure against SFT, so a decision says what the challenger was picked over."""
    figures = {m: (ev or {}).get(judge) for m, ev in vs_sft.items()}
    return {"promotion.methods_vs_sft": json.dumps(figures, sort_keys=True, default=str)}


def promote(
    version: str,
    vs_sft: Mapping[str, Any] | None,
    compare: Comparator | None,
    judge: str = "gold",
    attempts: int = 3,
    extra_tags: Mapping[str, str] | None = None,
) -> PromotionDecision:
    """Decide whether actor `version` becomes champion, record the decision on it, move the alias if so.

    With a champion, `compare(challenger_dir, champion_dir)` runs the head-to-head evaluation; without one the
    evaluate stage's comparison with SFT (`vs_sft`, metrics/eval.json) is the evidence. Under
    `promotion_lock`, and the alias moves only if the champion is still the one evaluated against (else the
    challenger is evaluated again, up to `attempts` times): the decision's baseline names the version it beat.
    Tags follow the alias: `promotion.promote` is True only on the champion; the one it replaced gets False
    and `promotion.superseded_by`. `extra_tags` go on the version with the decision (the pipeline's: which
    method, and every method's figures).
    """
    with promotion_lock():
        for _ in range(attempts):
            champion = alias_version(ACTOR, CHAMPION)
            if champion == version:
                return PromotionDecision(True, f"champion:v{champion}", "already the champion")
            vs_champion = None
            if champion is not None:
                if compare is None:
                    raise ValueError(f"{ACTOR} has a champion (v{champion}): a comparator is needed to challenge it")
                vs_champion = _head_to_head(version, champion, compare)
            if alias_version(ACTOR, CHAMPION) == champion:  # a promotion outside the lock (by hand) moved it
                decision = decide_promotion(vs_sft, vs_champion, champion, judge=judge)
                return _record(version, champion, decision, vs_sft if champion is None else vs_champion, extra_tags)
        raise RuntimeError(f"{ACTOR}: the champion kept changing during {attempts} evaluations of v{version}")


def _record(
    version: str,
    champion: str | None,
    decision: PromotionDecision,
    evidence: Mapping[str, Any] | None,
    extra_tags: Mapping[str, str] | None = None,
) -> PromotionDecision:
    """Decision and evidence as tags of `version`; if promoted, the alias moves and the old champion says so."""
    mc = client()
    tags = {
        **decision.as_tags(),
        "promotion.decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "promotion.evidence": json.dumps(evidence, sort_keys=True, default=str),
        **(extra_tags or {}),
    }
    for key, value in tags.items():
        mc.set_model_version_tag(ACTOR, version, key, value)
    if decision.promote:
        mc.set_registered_model_alias(ACTOR, CHAMPION, version)
        if champion is not None:
            mc.set_model_version_tag(ACTOR, champion, "promotion.superseded_by", version)
            mc.set_model_version_tag(ACTOR, champion, "promotion.promote", "False")
    return decision
