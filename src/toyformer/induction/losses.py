"""The training losses of TF(M, H, d, D) (paper 2; docs/induction-heads.md §3) on predicted distributions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS_LOG = 1e-12  # the tiny ε in log y of the nll (docs/induction-heads.md §3)
LOSSES = ("nll", "code-ce")


def target_losses(y: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Loss of each target, (B, T), for predicted distributions y (B, T, d) and labels (B, T): nll = −log y[x] (the
    paper), code-ce = cross-entropy with y taken as logits (the official code's double softmax)."""
    if kind == "nll":
        return -(y.gather(-1, labels[..., None]) + EPS_LOG).log().squeeze(-1)
    flat = F.cross_entropy(y.reshape(-1, y.shape[-1]), labels.reshape(-1), reduction="none")
    return flat.view(labels.shape)


def prediction_loss(y: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """The mean of ``target_losses``."""
    return target_losses(y, labels, kind).mean()
