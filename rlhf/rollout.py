"""PPO's experience: sample responses, score them, and the forward passes of the four models.

Shapes (the project's legend, ARCHITECTURE.md): B rollouts, P prompt tokens (left-padded), T response tokens
(right-padded after EOS), V vocabulary.
A full sequence is `[prompt | response]` of P + T tokens with mask `[prompt_mask | response_mask]`.
The log-prob of response token t and the critic's value of the state before it are both read at position
P - 1 + t: the hidden state that predicts token t (TRL and lm-human-preferences index the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from rlhf.generate import SamplingConfig, generate
from rlhf.model import GPT, ScalarHeadModel
from rlhf.padding import has_left_pad
from rlhf.ppo import entropy_from_logits, logprobs_from_logits
from rlhf.tokenizer import ChatTokenizer


@dataclass
class Rollout:
    """One static batch of experience (spec section 13, phase 1). All tensors detached."""

    prompt_ids: torch.Tensor  # (B, P)
    prompt_mask: torch.Tensor  # (B, P)
    responses: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T) float, 1 on response tokens up to and including EOS
    prompts: list[str]
    logprobs: torch.Tensor | None = None  # (B, T) under π_old
    ref_logprobs: torch.Tensor | None = None  # (B, T) under π_ref
    values: torch.Tensor | None = None  # (B, T) critic at rollout time
    scores: torch.Tensor | None = None  # (B,) normalised reward (with EOS penalty)
    raw_scores: torch.Tensor | None = None  # (B,) reward source's score before normalisation
    rewards: torch.Tensor | None = None  # (B, T) KL-penalised
    advantages: torch.Tensor | None = None  # (B, T) whitened
    returns: torch.Tensor | None = None  # (B, T)

    @property
    def ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.responses], 1)  # (B, P + T)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.mask.long()], 1)  # (B, P + T)

    def model_mask(self) -> torch.Tensor | None:
        """The mask to give a model: None when no prompt is left-padded, as plain causal attention is then exact
        (a valid token never sees a later pad) and takes the fused path; the full mask otherwise."""
        return self.attention_mask if has_left_pad(self.prompt_mask) else None

    def select(self, idx: torch.Tensor) -> Rollout:
        """The rows `idx` of every tensor (a minibatch)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v[idx] if torch.is_tensor(v) else ([v[i] for i in idx.tolist()] if f.name == "prompts" else v)
        return Rollout(**out)

    def texts(self, tok: ChatTokenizer) -> list[str]:
        return [tok.decode_response(r.tolist()) for r in self.responses]


def sample_rollout(
    actor: GPT,
    tok: ChatTokenizer,
    prompts: list[str],
    sampling: SamplingConfig,
    generator: torch.Generator,
) -> Rollout:
    """Step 1: responses from the actor as it is now (π_old), truncated after EOS, masked beyond it."""
    from rlhf.generate import left_pad

    ids, pmask = left_pad([tok.encode_prompt(p) for p in prompts], tok.pad_id)
    device = next(actor.parameters()).device
    ids, pmask = ids.to(device), pmask.to(device)
    actor.eval()
    gen = generate(actor, ids, pmask, sampling, tok.eos_id, tok.pad_id, generator)
    # Drop columns that are padding in every row: the learning phase then does no work on them.
    n = max(1, int(gen.mask.sum(1).max()))
    return Rollout(ids, pmask, gen.tokens[:, :n], gen.mask[:, :n], prompts)


def policy_forward(
    actor: GPT, ro: Rollout, temperature: float, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (B, T) of the sampled response tokens under logits / temperature; entropy (B, T) if asked.

    Dividing by the sampling temperature here as in the rollout is what makes the ratio exactly 1 at the first
    minibatch (ppo-details: "divide logits by the sampling temperature both when rolling out and in training").
    """
    T = ro.responses.shape[1]
    # Logits only where they are read: positions P-1 .. P+T-2 (the last T+1 but the final one).
    logits = actor(ro.ids, attention_mask=ro.model_mask(), last=T + 1)[:, :-1] / temperature  # (B, T, V)
    logprobs = logprobs_from_logits(logits, ro.responses)
    return logprobs, entropy_from_logits(logits) if with_entropy else None


def value_forward(critic: ScalarHeadModel, ro: Rollout) -> torch.Tensor:
    """Critic values (B, T) of the states before each response token, fp32 (also under bf16 autocast)."""
    P = ro.prompt_ids.shape[1]
    return critic(ro.ids, attention_mask=ro.model_mask())[:, P - 1 : -1].float()


def reward_model_scores(rm: ScalarHeadModel, ro: Rollout) -> torch.Tensor:
    """The reward model's score (B,) of each full sequence, read at its last real token."""
    return rm.score(ro.ids, ro.attention_mask)


def has_eos(ro: Rollout, eos_id: int) -> torch.Tensor:
    """(B,) bool: the response ended with EOS (instead of running out of tokens)."""
    return (ro.responses == eos_id).any(1)
