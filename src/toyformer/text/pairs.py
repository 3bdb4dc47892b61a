"""Word-pair classes by topic sets, the one rule behind every same-topic / different-topic statistic (paper 1): of a
pair (a, b), ``same_word`` when ``same`` says it pairs one word with itself, else ``same_topic`` when their topic
sets intersect, else ``diff_topic`` when both have topics, else ``unassigned`` (either has none)."""

from __future__ import annotations

import torch

CLASSES = ("same_word", "same_topic", "diff_topic", "unassigned")


def pair_classes(za: torch.Tensor, zb: torch.Tensor, same: torch.Tensor) -> dict[str, torch.Tensor]:
    """Class masks of all pairs (a, b) of two word sets: za (..., A, T), zb (..., B, T) bool topic sets; same:
    (..., A, B) bool, the pairs of one word with itself."""
    share = (za.float() @ zb.float().transpose(-1, -2)) > 0
    assigned = za.any(-1)[..., :, None] & zb.any(-1)[..., None, :]
    return {
        "same_word": same,
        "same_topic": assigned & share & ~same,
        "diff_topic": assigned & ~share & ~same,
        "unassigned": ~assigned & ~same,
    }
