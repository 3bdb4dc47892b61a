"""What is measured on a TF(M, H, d, D) during training (docs/induction-heads.md §6): the selector's p_S, the
classifier's a, each head's RPE weights and the offset it copies, the subset the model selects, and how far its
predictions are from the generalized induction head built from its own learned S and a (a check of the model's form) and
from the one the theory predicts without the trained model, at (S*, a*) (the reference that loss claims compare with).

The selected subset is the largest-p_S head subset, read as offsets through the offset each head copies most; when
no subset leads by more than ``TIE`` (relative), as at initialisation where every c_S is equal, nothing is
selected (``selected_subset = "none"``): a tie broken by list order is not a selection (docs/claims.md)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from toyformer.induction.chains import Chains
from toyformer.induction.config import InductionConfig
from toyformer.induction.model import GIHTransformer
from toyformer.induction.plan import Plan
from toyformer.induction.predictors import GIHCounts, best_gih_a, gih_counts, losses, reference_predictions

TIE = 1e-3  # the largest p_S must exceed the runner-up by this share of itself to count as selected
NO_SUBSET = "none"


def reference_table(val: Chains, cfg: InductionConfig, predicted: tuple[int, ...]) -> dict[str, float]:
    """Losses of the fixed reference predictors (docs/induction-heads.md §5) on the validation chains, in the run's
    loss; none reads a model. ``predicted`` is the theory's S* (offsets): the GIH there, at the a* that is best for the
    run's loss on these chains, is ``loss_ref_gih_theory`` (a* is ``gih_theory_a``; under code-ce the loss falls with a,
    so a* is the end of best_gih_a's grid)."""
    tokens = val.tokens.cpu()
    inputs, target, d = tokens[:, :-1], tokens[:, -1], cfg.data.d
    predictors = reference_predictions(inputs, val.kernels.cpu(), tuple(cfg.data.parents), d, cfg.data.alpha)
    out = {f"loss_ref_{name}": losses(y, target)[cfg.train.loss] for name, y in predictors.items()}
    a_star, loss_star = best_gih_a(tokens, predicted, d, cfg.train.loss)
    return out | {"loss_ref_gih_theory": loss_star, "gih_theory_a": a_star}


def gap_share(loss: float, references: dict[str, float]) -> float:
    """The share of the gap from the in-context unigram to the theory's GIH at (S*, a*) that ``loss`` closes: 0 at
    the unigram's loss, 1 at the GIH's, above 1 beyond it (towards Bayes)."""
    gap = references["loss_ref_unigram"] - references["loss_ref_gih_theory"]
    return (references["loss_ref_unigram"] - loss) / gap if gap else float("nan")  # no gap: nothing to close


def window_weights(plan: Plan, d: int) -> torch.Tensor:
    """(n_k,) how often each distinct key window occurs, counting only windows that lie wholly in the sequence."""
    counts = torch.bincount(plan.key_index.reshape(-1), minlength=len(plan.keys)).float()
    return counts * (plan.keys != d).all(1)


def copy_attention(model: GIHTransformer, plan: Plan, weights: torch.Tensor) -> torch.Tensor:
    """(H, span+1): each head's mean copy weight on each offset over the key windows, weighted by ``weights``."""
    attention = model.copier(plan.keys, attention=True)  # (n_k, H, span+1)
    return torch.einsum("n,nho->ho", weights.to(attention.dtype), attention) / weights.sum()


def selected(attention: torch.Tensor, model: GIHTransformer) -> tuple[dict[str, int], tuple[int, ...]]:
    """The offset each head copies most (from its mean copy weights ``attention`` (H, span+1)), and the offsets
    copied by the heads of the largest-p_S subset (none when it leads by no more than TIE)."""
    offsets = attention.argmax(1).tolist()
    copy_offset = {str(h + 1): o for h, o in enumerate(offsets)}
    share = model.subset_share().cpu()
    top = torch.topk(share, min(2, len(share))).values
    if len(top) > 1 and top[0] - top[1] <= TIE * top[0]:
        return copy_offset, ()
    best = model.subsets[int(share.argmax())]
    return copy_offset, tuple(sorted({offsets[h] for h in best}))


class InductionProbe:
    """``predicted`` is the theory's S* (offsets): ``predicted_share`` is the p_S the selector puts on head subsets
    whose heads copy exactly those offsets (p_110 of the official logs when heads 1 and 2 copy offsets 1 and 2)."""

    def __init__(
        self, val: Chains, plan: Plan, cfg: InductionConfig, references: dict[str, float], predicted: tuple[int, ...]
    ):
        self.val, self.plan, self.cfg, self.references, self.predicted = val, plan, cfg, references, predicted
        self.inputs, self.target = val.tokens[:, :-1].cpu(), val.tokens[:, -1].cpu()
        self.weights = window_weights(plan, cfg.data.d)
        self._counts: dict[tuple[int, ...], GIHCounts] = {}  # per selected subset: it changes a few times in a run

    def counts(self, subset: tuple[int, ...]) -> GIHCounts:
        if subset not in self._counts:
            self._counts[subset] = gih_counts(self.inputs, subset, self.cfg.data.d)
        return self._counts[subset]

    def predicted_share(self, share: torch.Tensor, offsets: list[int], model: GIHTransformer) -> float:
        hits = [sorted({offsets[h] for h in s}) == sorted(self.predicted) for s in model.subsets]
        return float(share[torch.tensor(hits)].sum())

    def __call__(self, model: GIHTransformer, loss: Callable[[torch.Tensor, torch.Tensor], float]) -> dict:
        y = model(self.plan)
        record = {"loss_val": loss(y, self.plan.labels)}
        if self.cfg.data.targets == "all":
            record["loss_val_last"] = loss(y[:, -1:], self.plan.labels[:, -1:])
        record["gap_share"] = gap_share(record.get("loss_val_last", record["loss_val"]), self.references)
        # the model's small tensors read back once each: on a GPU every element read would be a sync of its own
        share, c, w, band = (t.cpu() for t in (model.subset_share(), model.c, model.w, model.band))
        attention = copy_attention(model, self.plan, self.weights).cpu()
        copy_offset, subset = selected(attention, model)
        a = float(model.a)
        gih = self.counts(subset).predict(a)
        record |= {
            "a": a,
            "a_over_theory": a / self.references["gih_theory_a"] if self.references["gih_theory_a"] else float("nan"),
            "subset_share": {n: float(p) for n, p in zip(model.names, share, strict=True)},
            "c": {n: float(v) for n, v in zip(model.names, c, strict=True)},
            "selected_subset": ",".join(map(str, subset)) or NO_SUBSET,
            "selected_size": len(subset),
            "selected_share": float(share.max()),
            "predicted_share": self.predicted_share(share, list(copy_offset.values()), model),
            "selected_in_parents": float(bool(subset) and set(subset) <= set(self.cfg.data.parents)),
            "copy_offset": copy_offset,
            "rpe": [
                [float(w) if inside else None for w, inside in zip(row, b, strict=True)]
                for row, b in zip(w.tolist(), band.tolist(), strict=True)
            ],
            "copy_attention": attention.tolist(),
            "loss_ref_gih": losses(gih, self.target)[self.cfg.train.loss],
            "tv_to_gih": float(0.5 * (y[:, -1].double().cpu() - gih).abs().sum(1).mean()),
        }
        return record

    def final_extras(self, model: GIHTransformer) -> dict:
        """The fixed reference losses, and the nll-optimal a of the GIH at the model's own S (docs/induction-heads.md
        §5)."""
        _, subset = selected(copy_attention(model, self.plan, self.weights), model)
        best_a, best_loss = best_gih_a(self.val.tokens.cpu(), subset, model.d, "nll")
        return self.references | {"gih_best_a_nll": best_a, "loss_gih_best_a_nll": best_loss}


def snapshot(model: GIHTransformer, chains: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a run's report page shows of the model at a probe step, on a few validation chains (B, L+1): the
    classifier's weights softmax_i(a·K(i, L+1)) over the positions i (the copy weights: the prediction of x_{L+1} is
    the tokens they sum), read through the literal model's hooks, the chains' inputs to name the positions, and for
    the full variant each head's content QK circuit."""
    name = "blocks.1.attn.hook_pattern"
    _, cache = model.run_with_cache(chains, names=[name])
    out = {"chains": chains[:, :-1], "copy_weights": cache[name][:, 0, 0]}  # (B, L)
    if model.full:
        out["qk"] = torch.einsum("hde,hfe->hdf", model.W_Q, model.W_K)  # (H, d, d)
    return out
