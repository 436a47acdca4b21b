"""Stage `world`: build the synthetic assistant world into data/world/ and its sizes into metrics/world.json.

    python -m tasks.world [--params FILE]

Reads the `world` section of params.yaml (fields of `rlhf.world.WorldConfig`).
"""

from __future__ import annotations

from typing import Any

from rlhf.world import WorldConfig, build_world
from tasks import tracking
from tasks.common import Params, entry, path, write_metrics

OUT_DIR = "data/world"


def run(cfg: WorldConfig) -> dict[str, Any]:
    """Build the world and write its metrics; return the metrics (namespaced `world/...` keys)."""
    stats = build_world(cfg, path(OUT_DIR))
    metrics: dict[str, Any] = {
        "world/corpus_mb": round(stats["corpus"]["bytes"] / 1e6, 4),
        "world/corpus_documents": stats["corpus"]["documents"],
        **{f"world/n_{k}": v for k, v in stats["counts"].items()},
        **{f"world/demo_gold/{style}": v for style, v in stats["demo_gold"].items()},
        "world/gold_headroom": stats["gold_headroom"],
    }
    write_metrics("world", metrics)
    return metrics


def configure(p: Params) -> WorldConfig:
    return p.section("world", WorldConfig)


def main_run(params: dict) -> dict[str, Any]:
    p = Params(params)
    cfg = configure(p)
    with tracking.stage_run("world", p.logged()):  # no model runs here: no runtime to open
        return run(cfg)


main = entry(__doc__, main_run)


if __name__ == "__main__":
    main()
