"""The stacked step of topic models in a seed ensemble (``toyformer.train.ensemble``): every member's batch stacked
(E, B, ...), every member's loss by ``torch.func.vmap`` over the stacked parameters."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vmap

from toyformer.topic.batch import Batch
from toyformer.topic.losses import l2_penalty, model_loss, weighted_positions

CHUNK = 16  # steps of documents gathered at once on the fixed-document path


class _Model:
    """A model as ``model_loss`` sees it, running on one member's parameters (inside vmap)."""

    def __init__(self, template: nn.Module, state: dict[str, torch.Tensor]):
        self.template, self.state = template, state
        self.position_independent = template.position_independent

    def __call__(self, *args):
        return functional_call(self.template, self.state, args)


class TopicStep:
    """Topic models (paper 1): batches stacked (E, B, ...), losses by vmap over the members."""

    def __init__(self, experiments: list):
        self.template = experiments[0].model
        cfg = experiments[0].cfg
        self.kind, self.l2 = cfg.train.loss, cfg.train.l2
        self.trained = [n for n, p in self.template.named_parameters() if p.requires_grad]
        self.streams = [x.stream for x in experiments]
        static = cfg.masking.static or getattr(cfg.data, "population", False)
        self.stacked = None
        if all(s.train is not None for s in self.streams) and static:
            # Fixed documents with masks drawn once: stack them and pick every member's rows in one gather.
            self.stacked = Batch.stack([s.train for s in self.streams])
            for e, s in enumerate(self.streams):  # members keep views, not copies
                s.train = self.stacked.map(lambda t, e=e: t[e])
            self.order: tuple[int, torch.Tensor | None] = (-1, None)  # the epoch's visiting orders, (E, N)
            self.chunk: tuple[int, Batch | None] = (-1, None)  # the documents of the current CHUNK steps

    def batch(self, step: int) -> Batch:
        if self.stacked is None:
            return Batch.stack([s.batch(step) for s in self.streams])
        b = self.streams[0].batch_size
        epoch, k = divmod(step, self.streams[0].steps_per_epoch)
        if self.order[0] != epoch:  # each member's own seeded order, as its solo stream draws it
            self.order = (epoch, torch.stack([s.epoch_order(epoch) for s in self.streams]))
            self.chunk = (-1, None)
        chunk, j = divmod(k, CHUNK)
        if self.chunk[0] != chunk:  # the next CHUNK steps' documents in one gather; a step's batch is then a slice
            rows = self.order[1][:, chunk * CHUNK * b : (chunk + 1) * CHUNK * b]
            self.chunk = (chunk, self.stacked.map(lambda t: _rows(t, rows)))
        return self.chunk[1].map(lambda t: t[:, j * b : (j + 1) * b])

    def losses(self, stacked: nn.Module, batch: Batch) -> torch.Tensor:
        state = dict(stacked.named_parameters()) | dict(stacked.named_buffers())
        index = None
        if batch.soft is None and not self.template.position_independent:  # one set of positions for all members
            index = weighted_positions(batch.weight.flatten(0, 1)).view(*batch.weight.shape[:2], -1)
        fields = batch.fields()

        def one(state, fields, index):
            member = Batch(*fields)
            loss = model_loss(_Model(self.template, state), member, self.kind, index)
            return loss + l2_penalty([state[n] for n in self.trained], self.l2)

        dims = tuple(None if f is None else 0 for f in fields)
        return vmap(one, in_dims=(0, dims, None if index is None else 0))(state, fields, index)


def _rows(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """t (E, N, ...) at rows (E, B) → (E, B, ...): whole rows copied by one index_select."""
    flat = rows + torch.arange(len(rows), device=rows.device)[:, None] * t.shape[1]
    return t.flatten(0, 1).index_select(0, flat.flatten()).view(*rows.shape, *t.shape[2:])
