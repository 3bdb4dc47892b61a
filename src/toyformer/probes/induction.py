"""What is measured on a TF(M, H, d, D) during training (spec §6): the selector's p_S, the classifier's a, each
head's RPE weights and the offset it copies, the subset the model selects, and how far its predictions are from the
generalized induction head built from its own learned S and a."""

from __future__ import annotations

from collections.abc import Callable

import torch

from toyformer.config import InductionConfig
from toyformer.data.ngram import Chains
from toyformer.models.gih import GIHTransformer, Plan
from toyformer.theory.ngram import (
    bayes_predict,
    best_gih_a,
    gih_predict,
    losses,
    oracle_predict,
    unigram_predict,
)


def reference_table(val: Chains, cfg: InductionConfig) -> dict[str, float]:
    """Losses of the fixed reference predictors (spec §5) on the validation chains, in the run's loss."""
    inputs, target, d = val.tokens[:, :-1].cpu(), val.tokens[:, -1].cpu(), cfg.data.d
    parents = tuple(cfg.data.parents)
    predictors = {
        "uniform": torch.full((len(inputs), d), 1.0 / d, dtype=torch.float64),
        "unigram": unigram_predict(inputs, d),
        "bayes": bayes_predict(inputs, parents, d, cfg.data.alpha),
        "oracle": oracle_predict(inputs, val.kernels.cpu(), parents, d),
    }
    return {f"loss_ref_{name}": losses(y, target)[cfg.train.loss] for name, y in predictors.items()}


def window_weights(plan: Plan, d: int) -> torch.Tensor:
    """(n_k,) how often each distinct key window occurs, counting only windows that lie wholly in the sequence."""
    counts = torch.bincount(plan.key_index.reshape(-1), minlength=len(plan.keys)).float()
    return counts * (plan.keys != d).all(1)


def copy_attention(model: GIHTransformer, plan: Plan, weights: torch.Tensor) -> torch.Tensor:
    """(H, span+1): each head's mean copy weight on each offset over the key windows, weighted by ``weights``."""
    attention = model.copier(plan.keys, attention=True)  # (n_k, H, span+1)
    return torch.einsum("n,nho->ho", weights.to(attention.dtype), attention) / weights.sum()


class InductionProbe:
    def __init__(self, val: Chains, plan: Plan, cfg: InductionConfig, references: dict[str, float]):
        self.val, self.plan, self.cfg, self.references = val, plan, cfg, references
        self.inputs, self.target = val.tokens[:, :-1].cpu(), val.tokens[:, -1].cpu()
        self.weights = window_weights(plan, cfg.data.d)

    def selected(self, attention: torch.Tensor, model: GIHTransformer) -> tuple[dict[str, int], tuple[int, ...]]:
        """The offset each head copies most (from its mean copy weights), and the offsets copied by the heads of the
        largest-p_S subset."""
        offsets = attention.argmax(1).tolist()
        best = model.subsets[int(model.subset_share().argmax())]
        return {str(h + 1): o for h, o in enumerate(offsets)}, tuple(sorted({offsets[h] for h in best}))

    def __call__(self, model: GIHTransformer, loss: Callable[[torch.Tensor, torch.Tensor], float]) -> dict:
        y = model(self.plan)
        record = {"loss_val": loss(y, self.plan.labels)}
        if self.cfg.data.targets == "all":
            record["loss_val_last"] = loss(y[:, -1:], self.plan.labels[:, -1:])
        share = model.subset_share()
        attention = copy_attention(model, self.plan, self.weights)
        copy_offset, subset = self.selected(attention, model)
        a = float(model.a)
        gih = gih_predict(self.inputs, subset, model.d, a)
        band = model.band
        record |= {
            "a": a,
            "subset_share": {n: float(p) for n, p in zip(model.names, share, strict=True)},
            "c": {n: float(c) for n, c in zip(model.names, model.c, strict=True)},
            "selected_subset": ",".join(map(str, subset)),
            "selected_size": len(subset),
            "selected_in_parents": float(set(subset) <= set(self.cfg.data.parents)),
            "copy_offset": copy_offset,
            "rpe": [
                [float(w) if inside else None for w, inside in zip(row, b, strict=True)]
                for row, b in zip(model.w.tolist(), band.tolist(), strict=True)
            ],
            "copy_attention": attention.tolist(),
            "loss_ref_gih": losses(gih, self.target)[self.cfg.train.loss],
            "tv_to_gih": float(0.5 * (y[:, -1].double().cpu() - gih).abs().sum(1).mean()),
        }
        return record

    def final_extras(self, model: GIHTransformer) -> dict:
        """The fixed reference losses, and the nll-optimal a of the GIH at the model's own S (spec §5)."""
        _, subset = self.selected(copy_attention(model, self.plan, self.weights), model)
        best_a, best_loss = best_gih_a(self.val.tokens.cpu(), subset, model.d, "nll")
        return self.references | {"gih_best_a_nll": best_a, "loss_gih_best_a_nll": best_loss}
