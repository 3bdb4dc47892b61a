"""Predictors of the next token x_{L+1} from the inputs x_1..x_L of each sequence, as (B, d) distributions (paper 2,
docs/induction-heads.md §5): the generalized induction head at any parent subset and a, the in-context unigram, the
Bayes posterior predictive, the true kernel row; their losses, and the GIH's best a. None reads a trained model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from toyformer.induction.losses import LOSSES, prediction_loss


def history_codes(tokens: torch.Tensor, offsets: tuple[int, ...], d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """X_{l,S} for every position l (0-based) of ``tokens`` (B, T): codes (B, T) nearest-first, and a (B, T)-shaped
    mask of the positions whose whole history lies inside the sequence (l − s ≥ 0 for every s)."""
    t = tokens.shape[1]
    reach = max(offsets)
    padded = torch.nn.functional.pad(tokens, (reach, 0))  # position l of tokens is padded[l + reach]
    code = torch.zeros_like(tokens)
    for s in offsets:  # a handful of offsets: a loop over them, vectorised over batch and positions
        code = code * d + padded[:, reach - s : reach - s + t]
    valid = torch.arange(t, device=tokens.device) >= reach
    return code, valid.expand_as(tokens)


def history_matches(tokens: torch.Tensor, subset: tuple[int, ...], d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) whether X_{l,S} equals the query's X_{L+1,S}, and the (B, L, d) one-hot inputs. The empty history
    matches everywhere (so the GIH at S = ∅ is the in-context unigram)."""
    length = tokens.shape[1]
    if not subset:
        return torch.ones_like(tokens, dtype=torch.bool), torch.nn.functional.one_hot(tokens, d).double()
    code, valid = history_codes(torch.nn.functional.pad(tokens, (0, 1)), subset, d)
    match = (code[:, :length] == code[:, length:]) & valid[:, :length]
    return match, torch.nn.functional.one_hot(tokens, d).double()


@dataclass(frozen=True)
class GIHCounts:
    """What the GIH at one subset S reads of sequences (B, L), whatever a is: N(z, ·) (B, d), the one-hot sum over the
    positions whose history X_{l,S} matches the query's z = X_{L+1,S}; U(·), the sum over the others; and their
    numbers n and L − n (B, 1). Computed once per subset, the GIH at any a costs O(B·d)."""

    matched: torch.Tensor
    unmatched: torch.Tensor
    n_matched: torch.Tensor
    n_unmatched: torch.Tensor

    def predict(self, a: float) -> torch.Tensor:
        """y = (e^a N(z, ·) + U(·)) / (e^a n + L − n): the softmax of a·1[match] over positions, written so that
        neither e^a nor e^−a overflows (the shrinkage form, docs/induction-heads.md §5). a = inf gives N(z, ·) / n,
        or the unigram where the history never occurred."""
        n, rest = self.n_matched, self.n_unmatched
        if a == float("inf"):
            return torch.where(n > 0, self.matched / n.clamp(min=1), (self.matched + self.unmatched) / (n + rest))
        s = math.exp(-abs(a))  # the weight of the lighter class; it may underflow to 0 only where that class is empty
        if a >= 0:
            return torch.where(n > 0, (self.matched + s * self.unmatched) / (n + s * rest), self.unmatched / rest)
        return torch.where(rest > 0, (s * self.matched + self.unmatched) / (s * n + rest), self.matched / n)


def gih_counts(tokens: torch.Tensor, subset: tuple[int, ...], d: int) -> GIHCounts:
    """The counts the GIH at ``subset`` reads of the inputs ``tokens`` (B, L)."""
    match, onehot = history_matches(tokens, subset, d)
    matched = torch.einsum("bl,bld->bd", match.double(), onehot)
    n = match.sum(1, keepdim=True).double()
    return GIHCounts(matched, onehot.sum(1) - matched, n, tokens.shape[1] - n)


def gih_predict(tokens: torch.Tensor, subset: tuple[int, ...], d: int, a: float) -> torch.Tensor:
    """The generalized induction head (docs/induction-heads.md §5): y = Σ_{l ≤ L} ω_l x_l with ω_l ∝ exp(a·1[X_{l,S} =
    X_{L+1,S}]); ``tokens`` holds x_1..x_L (the target is not read). a = inf gives the in-context conditional frequency
    after the history, with the unigram average as the fallback when the history never occurred."""
    return gih_counts(tokens, subset, d).predict(a)


def bayes_predict(tokens: torch.Tensor, parents: tuple[int, ...], d: int, alpha: float) -> torch.Tensor:
    """The Dirichlet posterior predictive of x_{L+1}: (N(c, e) + α) / (N(c) + d·α) for the context c of position L+1,
    counting the transitions x_{l} after context c for every l ≤ L whose parents lie in the sequence. Rows of the
    kernel are independent a priori, so only the row of c is informative: this is the Bayes-optimal predictor."""
    b, length = tokens.shape
    query = torch.nn.functional.pad(tokens, (0, 1))
    code, valid = history_codes(query, parents, d)
    same = (code[:, :length] == code[:, length:]) & valid[:, :length]
    counts = torch.einsum("bl,bld->bd", same.double(), torch.nn.functional.one_hot(tokens, d).double())
    return (counts + alpha) / (counts.sum(1, keepdim=True) + d * alpha)


def oracle_predict(tokens: torch.Tensor, kernels: torch.Tensor, parents: tuple[int, ...], d: int) -> torch.Tensor:
    """The true kernel row π(· | parents of x_{L+1})."""
    query = torch.nn.functional.pad(tokens, (0, 1))
    code, _ = history_codes(query, parents, d)
    return kernels.double()[torch.arange(tokens.shape[0]), code[:, -1]]


def unigram_predict(tokens: torch.Tensor, d: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(tokens, d).double().mean(1)


def losses(prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean per-sequence losses of predicted distributions (B, d) of the targets (B,), in both training losses."""
    return {kind: float(prediction_loss(prediction[:, None], target[:, None], kind)) for kind in LOSSES}


def reference_predictions(
    inputs: torch.Tensor, kernels: torch.Tensor, parents: tuple[int, ...], d: int, alpha: float
) -> dict[str, torch.Tensor]:
    """The predictors of x_{L+1} that read no model (docs/induction-heads.md §5): uniform, the in-context unigram, the
    Bayes posterior predictive and the true kernel row, from the inputs (B, L) and each sequence's kernel."""
    return {
        "uniform": torch.full((len(inputs), d), 1.0 / d, dtype=torch.float64),
        "unigram": unigram_predict(inputs, d),
        "bayes": bayes_predict(inputs, parents, d, alpha),
        "oracle": oracle_predict(inputs, kernels, parents, d),
    }


def reference_losses(
    tokens: torch.Tensor,
    kernels: torch.Tensor,
    parents: tuple[int, ...],
    subset: tuple[int, ...],
    d: int,
    alpha: float,
    a: float,
) -> dict[str, dict[str, float]]:
    """Losses of the reference predictors and of the GIH at ``subset`` (a and a → ∞) on sequences ``tokens``
    (B, L+1), the last token the target."""
    inputs, target = tokens[:, :-1], tokens[:, -1]
    predictors = reference_predictions(inputs, kernels, parents, d, alpha) | {
        "gih": gih_predict(inputs, subset, d, a),
        "gih_inf": gih_predict(inputs, subset, d, float("inf")),
    }
    return {name: losses(y, target) for name, y in predictors.items()}


def best_gih_a(tokens: torch.Tensor, subset: tuple[int, ...], d: int, loss: str = "nll") -> tuple[float, float]:
    """The a in [0, 30] minimising the GIH's mean loss on ``tokens`` (B, L+1): a grid of step 0.5, refined to 0.01
    around its best point; returns (a, loss). Under nll there is a finite best a at finite L (docs/induction-heads.md
    §5); under code-ce the loss keeps falling, so the answer is the grid's end."""
    counts = gih_counts(tokens[:, :-1], subset, d)
    target = tokens[:, -1:]

    def best(grid: torch.Tensor) -> tuple[float, float]:
        values = [float(prediction_loss(counts.predict(float(a))[:, None], target, loss)) for a in grid]
        k = min(range(len(values)), key=values.__getitem__)
        return float(grid[k]), values[k]

    coarse, _ = best(torch.arange(0.0, 30.0001, 0.5, dtype=torch.float64))
    return best(torch.arange(max(coarse - 0.5, 0.0), min(coarse + 0.5, 30.0) + 1e-9, 0.01, dtype=torch.float64))
