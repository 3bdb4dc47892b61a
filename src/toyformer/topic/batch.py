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

    def map(self, fn) -> Batch:
        """The batch with ``fn`` applied to each field it has."""
        return Batch(*(None if t is None else fn(t) for t in self.fields()))

    def fields(self) -> tuple:
        return self.ids, self.key_bias, self.labels, self.weight, self.soft

    def slice(self, start: int, stop: int) -> Batch:
        return self.map(lambda t: t[start:stop])

    @staticmethod
    def stack(batches: list[Batch]) -> Batch:
        """Batches of equal shapes stacked along a new leading axis (an ensemble's members)."""
        fields = zip(*(b.fields() for b in batches), strict=True)
        return Batch(*(None if f[0] is None else torch.stack(f) for f in fields))
