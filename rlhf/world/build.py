"""Build the world's data files from a `WorldConfig`: corpus, demonstrations and the three prompt sets.

Everything is a deterministic function of the config: each part draws from its own `random.Random` seeded
with the world seed and the part's name, so changing one part's size never reshuffles another part.

A small world, held-out phrasings. Each family uses `entities_per_family` of its entities (a seeded choice),
so the corpus states every fact many times in varied phrasings: a model of a few million parameters trained
for minutes stores about a hundred facts this way, not five hundred (Allen-Zhu & Li, "Physics of Language
Models 3.1": storage needs many exposures; extraction needs question-answer text, which the demonstrations
and the corpus's forum threads give). Each family's question templates are split into train and held-out
phrasings (`heldout_frac`, stratified by operator). Evaluation prompts use only held-out phrasings, which
the demonstrations, preference and PPO prompts never use: evaluation measures whether the assistant
answers questions it was never tuned on, phrased as it never saw them in tuning, from what it knows (the
corpus asks and answers in every phrasing). The preference, PPO and evaluation sets are disjoint as prompt
strings, and no evaluation prompt appears in the demonstrations.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.io import write_json, write_jsonl, write_text
from rlhf.world.corpus import build_corpus
from rlhf.world.families import FAMILIES
from rlhf.world.judge import score
from rlhf.world.styles import STYLES, write_response


@dataclass(frozen=True)
class StyleMix:
    """Shares of the demonstrations written by each labeler style (normalised; see `styles.py`)."""

    careful: float = 0.3
    """polite opener and a correct, complete, concise answer (gold about +3)"""
    terse: float = 0.25
    """the bare answer (gold about +2)"""
    chatty: float = 0.25
    """polite but rambling filler around the answer (gold about +1.5)"""
    sloppy: float = 0.2
    """often wrong, stutters, parrots the question or is rude (gold below 0)"""

    def weights(self) -> list[float]:
        return [getattr(self, s) for s in STYLES]


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    """seed of every random choice of the world (splits, corpus, demonstrations, prompt sets)"""
    corpus_chars: int = 1_500_000
    """target size of the base corpus in characters (ASCII, so also bytes); at least the coverage documents"""
    n_demos: int = 3000
    """SFT demonstrations (prompt, response) on train entities; prompts may repeat with different labelers"""
    n_pref_prompts: int = 700
    """prompts for preference collection (train entities, distinct strings)"""
    n_ppo_prompts: int = 512
    """prompts for PPO rollouts (train entities, distinct strings, disjoint from the preference prompts)"""
    n_eval_prompts: int = 200
    """evaluation prompts (held-out phrasings only, distinct strings)"""
    heldout_frac: float = 0.25
    """fraction of each family's question phrasings held out for evaluation (at least one per operator)"""
    entities_per_family: int = 24
    """facts each family states (entities: fewer when it has fewer, half as many pairs for antonyms; 0 = all):
    fewer facts, each stated more often"""
    styles: StyleMix = field(default_factory=StyleMix)
    """labeler style mixture of the demonstrations"""

    def __post_init__(self) -> None:
        names = ("n_demos", "n_pref_prompts", "n_ppo_prompts", "n_eval_prompts", "entities_per_family")
        counts = {k: getattr(self, k) for k in names}
        bad = {k: v for k, v in counts.items() if not isinstance(v, int) or v < 0}
        if bad:
            raise ValueError(f"WorldConfig: counts must be integers >= 0, got {bad}")
        if not 0.0 < self.heldout_frac < 1.0:
            raise ValueError(f"WorldConfig: heldout_frac must be in (0, 1), got {self.heldout_frac}")
        weights = self.styles.weights()
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"WorldConfig: style weights must be >= 0 with a positive sum, got {self.styles}")


def active_entities(seed: int, per_family: int) -> dict[str, list[str]]:
    """Per family: the entities this world uses, a seeded choice holding `per_family` facts (all when 0).

    Facts, not entities: an antonym pair states two (hot -> cold, cold -> hot), and with 24 pairs the model had
    48 opposites to learn against 24 capitals; the 564fb91 run's SFT answered 16% of antonym questions right
    against 72% of capital ones (the judge of this commit, rlhf/world/words.py).
    """
    active = {}
    for name, family in FAMILIES.items():
        entities = sorted(family.entities())
        random.Random(f"{seed}/entities/{name}").shuffle(entities)
        n = max(1, per_family // family.facts_per_entity)
        active[name] = sorted(entities[:n] if per_family else entities)
    return active


def split_phrasings(seed: int, heldout_frac: float) -> dict[str, tuple[list[int], list[int]]]:
    """Per family: (train, held-out) indices into its `specs()`, a seeded split within each operator group.

    Stratified, so that evaluation asks about subtraction as well as addition, in phrasings it never tuned on.
    """
    split = {}
    for name, family in FAMILIES.items():
        groups: dict[str, list[int]] = {}
        for i, (_, const) in enumerate(family.specs()):
            groups.setdefault(const.get("op", ""), []).append(i)
        train, held = [], []
        for key, idx in sorted(groups.items()):
            random.Random(f"{seed}/phrasings/{name}/{key}").shuffle(idx)
            k = min(len(idx) - 1, max(1, round(heldout_frac * len(idx))))
            held += idx[:k]
            train += idx[k:]
        split[name] = (sorted(train), sorted(held))
    return split


def prompt_pool(
    active: dict[str, list[str]], split: dict[str, tuple[list[int], list[int]]], part: int
) -> dict[str, list[str]]:
    """Every prompt string per family over its active entities in the train (part=0) or held-out (1) phrasings."""
    return {name: [p for e in active[name] for p in FAMILIES[name].prompts(e, split[name][part])] for name in active}


def allocate(n: int, capacity: dict[str, int]) -> dict[str, int]:
    """Split n draws across families as evenly as their capacities allow (water-filling, deterministic)."""
    if n > sum(capacity.values()):
        raise ValueError(
            f"asked for {n} distinct prompts but only {sum(capacity.values())} exist ({capacity}); "
            "lower the prompt counts or heldout_frac, or raise entities_per_family, in the world config"
        )
    quota = dict.fromkeys(capacity, 0)
    left, open_ = n, [f for f in capacity if capacity[f] > 0]
    while left > 0:
        share = max(1, left // len(open_))
        for f in list(open_):
            take = min(share, capacity[f] - quota[f], left)
            quota[f] += take
            left -= take
            if quota[f] == capacity[f]:
                open_.remove(f)
            if left == 0:
                break
    return quota


def sample_prompts(kind: str, n: int, pool: dict[str, list[str]], rng: random.Random) -> list[dict[str, Any]]:
    """n distinct prompts, family-balanced, as records {"id", "family", "prompt"}."""
    quota = allocate(n, {f: len(ps) for f, ps in pool.items()})
    picked = [(f, p) for f in pool for p in rng.sample(pool[f], quota[f])]
    rng.shuffle(picked)
    return [{"id": f"{kind}-{i:05d}", "family": f, "prompt": p} for i, (f, p) in enumerate(picked)]


def partition(pool: dict[str, list[str]], frac: float, seed: int) -> tuple[dict[str, list[str]], ...]:
    """Split each family's pool into two disjoint parts, the first holding about `frac` of it."""
    first, second = {}, {}
    for name, prompts in pool.items():
        shuffled = list(prompts)
        random.Random(f"{seed}/partition/{name}").shuffle(shuffled)
        k = round(frac * len(shuffled))
        first[name], second[name] = shuffled[:k], shuffled[k:]
    return first, second


def make_demos(n: int, pool: dict[str, list[str]], mix: StyleMix, rng: random.Random) -> list[dict[str, Any]]:
    """n distinct demonstrations: a uniform family, a train prompt of it, a labeler style from the mixture.

    Two labelers can write the very same text ("Lima."); a repeated (prompt, response) is drawn again, since the
    validation gate rejects duplicate rows (they would only reweight the data).
    """
    families = [f for f in pool if pool[f]]
    demos: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for _ in range(50 * n):
        if len(demos) == n:
            break
        family = rng.choice(families)
        prompt = rng.choice(pool[family])
        style = rng.choices(STYLES, weights=mix.weights())[0]
        response = write_response(style, prompt, rng)
        if (prompt, response) in seen:
            continue
        seen.add((prompt, response))
        demos.append(
            {
                "id": f"demo-{len(demos):05d}",
                "family": family,
                "prompt": prompt,
                "response": response,
                "labeler": style,
            }
        )
    return demos


def build_world(cfg: WorldConfig, out_dir: Path) -> dict[str, Any]:
    """Write corpus.txt, demos.jsonl, prompts_{pref,ppo,eval}.jsonl and world.json; return the stats."""
    out_dir = Path(out_dir)
    active = active_entities(cfg.seed, cfg.entities_per_family)
    split = split_phrasings(cfg.seed, cfg.heldout_frac)
    train_pool, heldout_pool = prompt_pool(active, split, 0), prompt_pool(active, split, 1)
    # 1. The two train prompt sets come from disjoint parts of the train pool, in proportion to their sizes.
    n_rollout = cfg.n_pref_prompts + cfg.n_ppo_prompts
    pref_pool, ppo_pool = partition(train_pool, cfg.n_pref_prompts / max(1, n_rollout), cfg.seed)
    pref = sample_prompts("pref", cfg.n_pref_prompts, pref_pool, random.Random(f"{cfg.seed}/pref"))
    ppo = sample_prompts("ppo", cfg.n_ppo_prompts, ppo_pool, random.Random(f"{cfg.seed}/ppo"))
    evals = sample_prompts("eval", cfg.n_eval_prompts, heldout_pool, random.Random(f"{cfg.seed}/eval"))
    # 2. Demonstrations on train prompts; 3. the corpus about everything.
    demos = make_demos(cfg.n_demos, train_pool, cfg.styles, random.Random(f"{cfg.seed}/demos"))
    corpus = build_corpus(cfg.corpus_chars, active, random.Random(f"{cfg.seed}/corpus"))
    _check_disjoint(pref, ppo, evals, demos)

    stats = _stats(active, split, corpus, demos, {"pref": pref, "ppo": ppo, "eval": evals})
    write_text(out_dir / "corpus.txt", corpus)
    write_jsonl(out_dir / "demos.jsonl", demos)
    write_jsonl(out_dir / "prompts_pref.jsonl", pref)
    write_jsonl(out_dir / "prompts_ppo.jsonl", ppo)
    write_jsonl(out_dir / "prompts_eval.jsonl", evals)
    write_json(out_dir / "world.json", {"config": dataclasses.asdict(cfg), "stats": stats})
    return stats


def _check_disjoint(pref: list[dict], ppo: list[dict], evals: list[dict], demos: list[dict]) -> None:
    sets = {k: {r["prompt"] for r in rows} for k, rows in (("pref", pref), ("ppo", ppo), ("eval", evals))}
    assert not sets["pref"] & sets["ppo"], "preference and PPO prompts overlap"
    assert not (sets["pref"] | sets["ppo"]) & sets["eval"], "evaluation prompts overlap the train prompt sets"
    assert not {d["prompt"] for d in demos} & sets["eval"], "an evaluation prompt appears in the demonstrations"


def _stats(
    active: dict[str, list[str]],
    split: dict[str, tuple[list[int], list[int]]],
    corpus: str,
    demos: list[dict],
    prompt_sets: dict[str, list[dict]],
) -> dict[str, Any]:
    gold: dict[str, list[float]] = {s: [] for s in STYLES}
    for d in demos:
        gold[d["labeler"]].append(score(d["prompt"], d["response"]))
    all_gold = [g for gs in gold.values() for g in gs]
    mean_gold = {s: round(statistics.fmean(g), 4) for s, g in gold.items() if g}
    mean_all = statistics.fmean(all_gold) if all_gold else 0.0
    mean_gold["all"] = round(mean_all, 4)
    return {
        "corpus": {
            "chars": len(corpus),
            "bytes": len(corpus.encode()),
            "documents": corpus.count("\n\n") + 1,
        },
        "counts": {"demos": len(demos), **{k: len(v) for k, v in prompt_sets.items()}},
        "per_family": {
            "demos": dict(Counter(d["family"] for d in demos)),
            **{k: dict(Counter(r["family"] for r in v)) for k, v in prompt_sets.items()},
        },
        "entities": active,
        "phrasings": {f: {"train": len(tr), "heldout": len(ho)} for f, (tr, ho) in split.items()},
        "heldout_phrasings": {f: [FAMILIES[f].specs()[i][0] for i in ho] for f, (_, ho) in split.items()},
        "demo_styles": dict(Counter(d["labeler"] for d in demos)),
        "demo_gold": mean_gold,
        "gold_headroom": round(mean_gold.get("careful", mean_all) - mean_all, 4),
    }
