"""Losses of docs/topic-structure.md §3 on a ``Batch``: cross-entropy, squared (official scaling: mean over the
vocabulary), and an L2 penalty λ‖θ‖² on the trained parameters that acts on the gradient (the official one was
detached)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from toyformer.topic.batch import Batch


def mlm_loss(logits: torch.Tensor, batch: Batch, kind: str) -> torch.Tensor:
    """Mean loss per selected position (per unit of target weight in population mode).

    logits: (B, Lq, V) with Lq = L, or Lq = 1 when every position has the same output (broadcast).
    """
    vocab = logits.shape[-1]
    if batch.soft is not None:  # population mode: soft targets (B, L, V)
        total = batch.soft.sum()
        if kind == "ce":
            return -(batch.soft * F.log_softmax(logits, dim=-1)).sum() / total
        mass = batch.soft.sum(-1)
        sq = (logits * logits).sum(-1)
        return (mass * (sq + 1) - 2 * (logits * batch.soft).sum(-1)).sum() / (total * vocab)
    if logits.shape[1] == 1 < batch.labels.shape[1]:  # one output per document: weigh it by its label counts
        counts = logits.new_zeros(len(logits), vocab).scatter_add_(1, batch.labels, batch.weight)  # (B, V)
        out = logits[:, 0]
        if kind == "ce":
            total = -(counts * F.log_softmax(out, dim=-1)).sum()
        else:
            total = (counts.sum(1) * ((out * out).sum(-1) + 1) - 2 * (counts * out).sum(1)).sum() / vocab
        return total / batch.weight.sum()
    labels = batch.labels[..., None]
    shape = (*batch.labels.shape, vocab)
    if kind == "ce":
        per_pos = -F.log_softmax(logits, dim=-1).expand(shape).gather(-1, labels).squeeze(-1)
    else:  # ‖f − e_y‖² / V = (‖f‖² − 2 f_y + 1) / V
        sq = (logits * logits).sum(-1)
        per_pos = (sq - 2 * logits.expand(shape).gather(-1, labels).squeeze(-1) + 1) / vocab
    return (per_pos * batch.weight).sum() / batch.weight.sum()


def l2_penalty(params: list[torch.Tensor], lam: float) -> torch.Tensor | float:
    if lam == 0:
        return 0.0
    return lam * sum((p * p).sum() for p in params)


def weighted_positions(weight: torch.Tensor) -> torch.Tensor:
    """(B, S): the positions with loss weight first in each row (S = the most in any row), padded with the row's
    first one (so that a document's queries repeat its ids: ``Attention`` computes one row per id)."""
    weighted = (weight > 0).sum(1, keepdim=True)
    count = int(weighted.max())
    order = torch.argsort((weight <= 0).to(torch.uint8), dim=1, stable=True)[:, :count]
    return torch.where(torch.arange(count, device=weight.device) < weighted, order, order[:, :1])


def model_loss(model, batch: Batch, kind: str, index: torch.Tensor | None = None) -> torch.Tensor:
    """The model's MLM loss on a batch; logits are computed only where the loss reads them (``index``, default
    ``weighted_positions(batch.weight)``; any superset of the weighted positions gives the same loss, its repeats
    of a row's first position counted once)."""
    if batch.soft is not None or model.position_independent:
        return mlm_loss(model(batch.ids, batch.key_bias)[0], batch, kind)
    index = weighted_positions(batch.weight) if index is None else index
    logits, _ = model(batch.ids, batch.key_bias, index, False)
    weight = batch.weight.gather(1, index)
    weight[:, 1:] *= index[:, 1:] != index[:, :1]
    targets = Batch(batch.ids, batch.key_bias, batch.labels.gather(1, index), weight)
    return mlm_loss(logits, targets, kind)
