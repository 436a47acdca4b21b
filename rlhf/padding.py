"""Padding of token sequences and where their last real token is: one definition for the whole project.

Shapes (the project's legend, ARCHITECTURE.md): B rows, T tokens.
"""

from __future__ import annotations

import torch


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> ids (B, T) right-padded with `pad_id` to the longest, and their mask (B, T) long."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def last_valid_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last valid token in each row; (B, T) -> (B,) long, -1 for a row with no valid token."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, T)
    return torch.where(mask.bool(), positions, -1).amax(dim=1)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B,) index of the last position whose mask is 1 (0 for an empty row: a score reads there)."""
    return last_valid_index(attention_mask).clamp(min=0)


def has_left_pad(attention_mask: torch.Tensor) -> bool:
    """(B, T) mask -> whether any row starts with padding (right padding needs no mask under causal attention)."""
    return bool((attention_mask[:, 0] == 0).any())
