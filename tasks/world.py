"""Stage `world`: build the synthetic assistant world into data/world/ and its sizes into metrics/world.json.

    python -m tasks.world [--params FILE]

Reads the `world` section of params.yaml (fields of `rlhf.world.WorldConfig`).
"""

from __future__ import annotations

from typing import Any

from rlhf.world import WorldConfig, build_world
from tasks.common import Params, model_free_entry, path, write_metrics

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


main = model_free_entry("world", __doc__, configure, run)


if __name__ == "__main__":
    main()
