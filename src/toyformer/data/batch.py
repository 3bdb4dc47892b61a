"""What a training step consumes: inputs, which positions are attention keys, and the targets."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """A batch of (corrupted) documents.

    ids:      (B, L) input ids after corruption.
    key_bias: (B, L) added to every attention score on that key: 0 for a key, -inf for a position nobody attends to
              (padding, dropped masked positions); in population mode the log of the word's probability.
    labels:   (B, L) the original ids, read where ``weight`` > 0.
    weight:   (B, L) loss weight of each position (1 at selected positions, else 0).
    soft:     (B, L, V) target weights over ids, used instead of labels/weight in population mode.
    """

    ids: torch.Tensor
    key_bias: torch.Tensor
    labels: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    soft: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.ids.shape[0]

    def slice(self, start: int, stop: int) -> Batch:
        def cut(t):
            return None if t is None else t[start:stop]

        return Batch(cut(self.ids), cut(self.key_bias), cut(self.labels), cut(self.weight), cut(self.soft))
