"""A deterministic synthetic "assistant world" standing in for humans and the internet.

It supplies every data source the RLHF pipeline needs, built from knowledge tables by a seed: a base corpus
that teaches facts and the parrot habit, SFT demonstrations by labelers of uneven care, prompt sets for
preference collection, PPO and evaluation (held-out question phrasings), a gold judge and a simulated labeler. Nothing
outside this package knows about it; the rest of the pipeline sees only files of text and records.
"""

from rlhf.world.build import StyleMix, WorldConfig, build_world
from rlhf.world.judge import score, score_batch
from rlhf.world.labeler import SimulatedLabeler

__all__ = ["SimulatedLabeler", "StyleMix", "WorldConfig", "build_world", "score", "score_batch"]
