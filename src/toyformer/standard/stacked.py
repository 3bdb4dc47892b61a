"""The stacked step of standard transformers in a seed ensemble (``toyformer.train.ensemble``): the members' batches
stacked along a member axis and every member's loss by ``torch.func.vmap`` over its slice of the stacked
parameters."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vmap

from toyformer.standard.experiment import sequence_loss
from toyformer.standard.model import StandardTransformer


class StandardStep:
    def __init__(self, experiments: list):
        first = experiments[0]
        # the fused attention kernel has no vmap rule (vmap would loop over the members): the explicit softmax
        # attention, the same numbers, batches over them; the template's own parameters are never read
        cfg = first.cfg.model.model_copy(update={"fused": False})
        self.template = StandardTransformer(cfg, first.model.d_vocab, first.model.n_ctx, torch.Generator())
        self.targets = first.cfg.data.targets
        self.datas = [x.data for x in experiments]
        self.fixed = torch.stack([d.tokens(0) for d in self.datas]) if all(d.full for d in self.datas) else None

    def batch(self, step: int) -> torch.Tensor:
        """(members, B, L+1) chains."""
        return self.fixed if self.fixed is not None else torch.stack([d.tokens(step) for d in self.datas])

    def losses(self, stacked: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        state = dict(stacked.named_parameters()) | dict(stacked.named_buffers())

        def member(params: dict, tokens: torch.Tensor) -> torch.Tensor:
            forward = lambda x, last: functional_call(self.template, params, (x,), {"last": last})  # noqa: E731
            return sequence_loss(forward, tokens, self.targets)

        return vmap(member)(state, batch)
