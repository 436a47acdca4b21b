"""The simulated human labeler who ranks responses: the gold judge seen through noise and a taste for length.

Noise model (Plackett-Luce, as the spec's Bradley-Terry step assumes). Each response gets a utility

    u(x, y) = gold_score(x, y) + length_bias * n_words(y)

and the labeler ranks responses by u / temperature + Gumbel noise, one independent Gumbel(0, 1) draw per
response. Sorting Gumbel-perturbed utilities samples a Plackett-Luce ranking, and for any pair (a, b) its
marginal is exactly

    P(a ranked above b) = sigmoid((u_a - u_b) / temperature),

the Bradley-Terry probability the reward model is fitted to (`prob_prefers`). So the best any reward model
can do on a pair is predict the more likely order and be right with probability max(p, 1 - p)
(`pair_ceiling`); the mean of that over the preference pairs is the reward model's accuracy ceiling.
temperature -> 0 is a noiseless labeler that follows the utility exactly.

Reward hacking. With length_bias > 0 the labeler rewards length for its own sake, beyond what the gold judge
values (the gold judge penalises length past an ideal). A reward model trained on these labels learns that
taste, and a policy optimised against it drifts towards long answers whose gold score falls while the proxy
reward rises: the gap between proxy and gold reward that PPO's KL penalty is meant to contain. With
length_bias = 0 the only error of the labels is noise.
"""

from __future__ import annotations

import math
import random

from rlhf.world.judge import score


def sigmoid(z: float) -> float:
    """Logistic function, stable for large |z|."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class SimulatedLabeler:
    """A labeler with a given noise level (temperature) and taste for length (gold points per word)."""

    def __init__(self, temperature: float = 1.0, length_bias: float = 0.0, seed: int = 0) -> None:
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise ValueError(f"SimulatedLabeler: temperature must be a finite number >= 0, got {temperature}")
        if not math.isfinite(length_bias):
            raise ValueError(f"SimulatedLabeler: length_bias must be finite, got {length_bias}")
        self.temperature = float(temperature)
        self.length_bias = float(length_bias)
        self.rng = random.Random(seed)  # its own stream: ranking never touches global random state

    def utility(self, prompt: str, response: str) -> float:
        """Gold score plus the labeler's length bias."""
        return score(prompt, response) + self.length_bias * len(response.split())

    def rank(self, prompt: str, responses: list[str]) -> list[int]:
        """Indices of `responses`, best first: one Plackett-Luce draw (Gumbel-max on utility / temperature).

        Ties between equal perturbed utilities (only possible at temperature 0) keep the input order.
        """
        utils = [self.utility(prompt, r) for r in responses]
        keys = utils if self.temperature == 0 else [u / self.temperature + self._gumbel() for u in utils]
        return sorted(range(len(responses)), key=lambda i: -keys[i])

    def prob_prefers(self, prompt: str, a: str, b: str) -> float:
        """P(a ranked above b) = sigmoid((u_a - u_b) / temperature); at temperature 0 it is 1, 0 or 1/2."""
        diff = self.utility(prompt, a) - self.utility(prompt, b)
        if self.temperature == 0:
            return 1.0 if diff > 0 else 0.0 if diff < 0 else 0.5
        return sigmoid(diff / self.temperature)

    def pair_ceiling(self, prompt: str, chosen: str, rejected: str) -> float:
        """The accuracy of the best possible model of this labeler on this pair: max(p, 1 - p)."""
        p = self.prob_prefers(prompt, chosen, rejected)
        return max(p, 1.0 - p)

    def _gumbel(self) -> float:
        # -log(E) with E ~ Exp(1) is Gumbel(0, 1); the floor guards log(0) on a 2^-53 draw.
        return -math.log(max(self.rng.expovariate(1.0), 1e-300))
