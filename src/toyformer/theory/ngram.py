"""Theory of in-context n-gram chains (paper 2, spec §5): stationary laws, χ² mutual informations, the predicted
parent subset S*. Pure functions in float64, batched over kernels.

A kernel π of parent offsets pa = (p_1 < … < p_n) is a (K, d^n, d) tensor: row ``code`` is the law of x_l given
the parents, with code = Σ_k x_{l−p_k}·d^(n−1−k) (the nearest parent is the most significant digit). The chain's
state is the window of the last m = p_n tokens; a window w = (x_{l−m+1}, …, x_l) is coded oldest-first the same
way (x_l the least significant digit).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from toyformer.random import dirichlet, generator


def parent_code_of_window(d: int, parents: tuple[int, ...], width: int) -> torch.Tensor:
    """For every window of ``width`` tokens ending at x_{l−1} (coded oldest-first), the code of the parents of x_l."""
    windows = torch.arange(d**width)
    digits = torch.stack([(windows // d ** (width - 1 - i)) % d for i in range(width)], dim=1)  # oldest first
    code = torch.zeros(d**width, dtype=torch.long)
    for p in parents:  # x_{l−p} is digit width − p of the window ending at x_{l−1}
        code = code * d + digits[:, width - p]
    return code


def stationary_windows(kernel: torch.Tensor, d: int, parents: tuple[int, ...]) -> torch.Tensor:
    """(K, d^m) stationary law of the window of the last m = max(pa) tokens, for the whole batch at once.

    The transition from window w to w' = (w[1:], e) has probability π(e | parents in w). Solved by GTH state
    reduction (Grassmann–Taksar–Heyman), which only adds, multiplies and divides positive numbers (here as sums
    and logsumexps of logs, so nothing underflows on kernels with entries near 1e-200). Power iteration
    oscillates on the nearly periodic chains that small α produces, and a linear solve of μ(P − I) = 0 cancels exit
    probabilities of 1e-20 against 1 and returns a wrong law. The loop runs over the d^m states, each step
    vectorised over the batch.
    """
    m = max(parents)
    k, states = kernel.shape[0], d**m
    step = kernel.double()[:, parent_code_of_window(d, parents, m), :]  # (K, window, next token)
    nxt = (torch.arange(states) % d ** (m - 1))[:, None] * d + torch.arange(d)[None, :]  # (window, e) → window'
    p = torch.zeros(k, states, states, dtype=torch.float64)
    p = p.scatter_add_(2, nxt.expand(k, -1, -1), step).log()  # log space: folded exit masses can fall below 1e-308
    for n in range(states - 1, 0, -1):  # fold state n into states 0..n-1
        p[:, :n, n] -= p[:, n, :n].logsumexp(1)[:, None]
        p[:, :n, :n] = torch.logaddexp(p[:, :n, :n], p[:, :n, n : n + 1] + p[:, n : n + 1, :n])
    mu = torch.zeros(k, states, dtype=torch.float64)  # log μ, unnormalised, μ_0 = 1
    for n in range(1, states):
        mu[:, n] = (mu[:, :n] + p[:, :n, n]).logsumexp(1)
    return torch.softmax(mu, dim=1)


def stationary_joint(kernel: torch.Tensor, d: int, parents: tuple[int, ...], offsets: tuple[int, ...]) -> torch.Tensor:
    """(K, d^|S|, d): the stationary joint law μ(z, e) of the history z = (x_{l−s})_{s∈S} (coded nearest-first, as
    parents are) and the token e = x_l, for any offsets S ≥ 1 (inside or outside the parent set)."""
    m = max(parents)
    width = max(m, max(offsets))
    law = stationary_windows(kernel, d, parents)  # (K, d^m)
    for w in range(m, width):  # extend the window forwards, one token at a time: exact under stationarity
        code = parent_code_of_window(d, parents, w)
        law = (law[:, :, None] * kernel.double()[:, code, :]).reshape(law.shape[0], -1)
    code = parent_code_of_window(d, parents, width)
    full = law[:, :, None] * kernel.double()[:, code, :]  # (K, window ending at x_{l−1}, x_l)
    z = parent_code_of_window(d, tuple(offsets), width)
    out = torch.zeros(kernel.shape[0], d ** len(offsets), d, dtype=torch.float64)
    return out.index_add_(1, z, full)


# Near-deterministic kernels (small α) give histories and tokens of stationary probability 0; their terms are 0, so
# the denominators below are clamped rather than divided by zero.


def modified_chi2_mi(joint: torch.Tensor) -> torch.Tensor:
    """Ĩ(S) = Σ_{z,e} μ(z,e)²/μ(e) − Σ_z μ(z)²   (the μ(z)²-weighted χ² mutual information)."""
    mu_e, mu_z = joint.sum(1), joint.sum(2)
    return (joint**2 / mu_e[:, None, :].clamp_min(1e-300)).sum((1, 2)) - (mu_z**2).sum(1)


def chi2_mi(joint: torch.Tensor) -> torch.Tensor:
    """Standard χ² mutual information Σ_{z,e} μ(z,e)²/(μ(z)μ(e)) − 1."""
    mu_e, mu_z = joint.sum(1), joint.sum(2)
    return (joint**2 / (mu_z[:, :, None] * mu_e[:, None, :]).clamp_min(1e-300)).sum((1, 2)) - 1


def code_ce_mi(joint: torch.Tensor) -> torch.Tensor:
    """The code-ce variant: Σ_z μ(z)² Σ_e (μ(e|z) − μ(e))²."""
    mu_e, mu_z = joint.sum(1), joint.sum(2)
    cond = joint / mu_z[:, :, None].clamp_min(1e-300)  # a history of probability 0 adds nothing
    return (mu_z**2 * ((cond - mu_e[:, None, :]) ** 2).sum(2)).sum(1)


MI = {"nll": modified_chi2_mi, "code-ce": code_ce_mi, "standard": chi2_mi}


def head_offsets(layout: str, heads: int, window: int | None = None) -> list[int]:
    """Offsets the heads can copy: code layout, head h copies offset h (its window is h..h+H−1, RPE peak at h);
    paper layout, any offset of the window 1..M."""
    if layout == "code":
        return list(range(1, heads + 1))
    return list(range(1, (window or heads) + 1))


def candidate_subsets(layout: str, heads: int, degree: int, window: int | None = None) -> list[tuple[int, ...]]:
    """Offset subsets the selector can keep: nonempty, at most D of them (and at most H: one head copies one)."""
    offsets = head_offsets(layout, heads, window)
    size = min(degree, heads)
    return [s for r in range(1, size + 1) for s in itertools.combinations(offsets, r)]


@dataclass
class SubsetPrediction:
    table: dict[str, tuple[float, float]]  # "1,2" → (mean Ĩ over kernels, its Monte-Carlo standard error)
    predicted: str  # the argmax subset, written like "1,2"
    margin: float  # relative margin (best − runner-up) / best
    margin_se: float  # Monte-Carlo standard error of (best − runner-up), paired over the same kernels
    kernels: int
    means: dict[str, dict[str, float]]  # every MI kind ("nll", "code-ce", "standard") → subset → mean over kernels

    def summary(self) -> dict:
        """The public theory keys: predicted_subset, mi_modified (offset subset → Ĩ), mi_margin (None when there is
        a single candidate, so no runner-up), and the rest of the table."""
        return {
            "predicted_subset": self.predicted,
            "mi_modified": self.means["nll"],
            "mi_modified_se": {k: v[1] for k, v in self.table.items()},
            "mi_margin": self.margin if math.isfinite(self.margin) else None,
            "mi_margin_se": self.margin_se,
            "mi_standard": self.means["standard"],
            "mi_code_ce": self.means["code-ce"],
            "kernels": self.kernels,
        }


def sample_kernels(
    n: int,
    d: int,
    n_parents: int,
    alpha: float,
    gen: torch.Generator,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """(n, d^n_parents, d): every row an independent Dirichlet(α·1_d) draw (sampled in log space, so float32 is
    exact enough for training data; theory keeps float64)."""
    return dirichlet(torch.full((n, d**n_parents, d), alpha, dtype=dtype, device=device), gen, dtype)


def predict_subset(
    d: int,
    parents: tuple[int, ...],
    alpha: float,
    heads: int,
    degree: int,
    layout: str = "code",
    window: int | None = None,
    kernels: int = 2000,
    seed: int = 0,
    loss: str = "nll",
) -> SubsetPrediction:
    """S* = argmax over candidate subsets of E_π Ĩ(S; π), estimated over ``kernels`` prior draws (the same draws for
    every subset, so differences are paired)."""
    pi = sample_kernels(kernels, d, len(parents), alpha, generator(seed, "theory-kernels"))
    subsets = candidate_subsets(layout, heads, degree, window)
    joints = [stationary_joint(pi, d, parents, s) for s in subsets]
    every = {kind: torch.stack([f(j) for j in joints]) for kind, f in MI.items()}  # kind → (subsets, K)
    values = every[loss]
    names = [",".join(map(str, s)) for s in subsets]
    mean = values.mean(1)
    se = values.std(1) / kernels**0.5
    order = torch.argsort(mean, descending=True)
    best, second = int(order[0]), int(order[1]) if len(order) > 1 else int(order[0])
    diff = values[best] - values[second]
    return SubsetPrediction(
        table={n: (float(m), float(s)) for n, m, s in zip(names, mean, se, strict=True)},
        predicted=names[best],
        margin=float(diff.mean() / mean[best]) if best != second else float("inf"),
        margin_se=float(diff.std() / kernels**0.5) if best != second else 0.0,
        kernels=kernels,
        means={kind: dict(zip(names, v.mean(1).tolist(), strict=True)) for kind, v in every.items()},
    )


# ------------------------------------------------------------------------------------------------------------------
# Predictors of the next token x_{L+1} from the inputs x_1..x_L of each sequence, as (B, d) distributions.


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


def _history_matches(tokens: torch.Tensor, subset: tuple[int, ...], d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) whether X_{l,S} equals the query's X_{L+1,S}, and the (B, L, d) one-hot inputs. The empty history
    matches everywhere (so the GIH at S = ∅ is the in-context unigram)."""
    length = tokens.shape[1]
    if not subset:
        return torch.ones_like(tokens, dtype=torch.bool), torch.nn.functional.one_hot(tokens, d).double()
    code, valid = history_codes(torch.nn.functional.pad(tokens, (0, 1)), subset, d)
    match = (code[:, :length] == code[:, length:]) & valid[:, :length]
    return match, torch.nn.functional.one_hot(tokens, d).double()


def _gih(match: torch.Tensor, onehot: torch.Tensor, a: float) -> torch.Tensor:
    if a == float("inf"):
        weights = torch.where(match.any(1, keepdim=True), match.double(), torch.ones_like(match, dtype=torch.float64))
        weights = weights / weights.sum(1, keepdim=True)
    else:
        weights = torch.softmax(a * match.double(), dim=1)
    return torch.einsum("bl,bld->bd", weights, onehot)


def gih_predict(tokens: torch.Tensor, subset: tuple[int, ...], d: int, a: float) -> torch.Tensor:
    """The generalized induction head (spec §5): y = Σ_{l ≤ L} ω_l x_l with ω_l ∝ exp(a·1[X_{l,S} = X_{L+1,S}]);
    ``tokens`` holds x_1..x_L (the target is not read). a = inf gives the in-context conditional frequency after the
    history, with the unigram average as the fallback when the history never occurred."""
    return _gih(*_history_matches(tokens, subset, d), a)


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


def losses(prediction: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> dict[str, float]:
    """Mean per-sequence losses of a predicted distribution: nll = −log y[target]; code-ce = −log softmax(y)[target]
    (the official code's cross-entropy applied to probabilities)."""
    picked = prediction.gather(1, target[:, None]).squeeze(1)
    return {
        "nll": float(-(picked + eps).log().mean()),
        "code-ce": float(-torch.log_softmax(prediction, dim=1).gather(1, target[:, None]).mean()),
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
    """Losses of the reference predictors of spec §5 on sequences ``tokens`` (B, L+1), the last token the target."""
    inputs, target = tokens[:, :-1], tokens[:, -1]
    predictors = {
        "uniform": torch.full((len(tokens), d), 1.0 / d, dtype=torch.float64),
        "unigram": unigram_predict(inputs, d),
        "gih": gih_predict(inputs, subset, d, a),
        "gih_inf": gih_predict(inputs, subset, d, float("inf")),
        "bayes": bayes_predict(inputs, parents, d, alpha),
        "oracle": oracle_predict(inputs, kernels, parents, d),
    }
    return {name: losses(y, target) for name, y in predictors.items()}


def best_gih_a(tokens: torch.Tensor, subset: tuple[int, ...], d: int, loss: str = "nll") -> tuple[float, float]:
    """The a in [0, 30] minimising the GIH's mean loss on ``tokens`` (B, L+1): a grid of step 0.5, refined to 0.01
    around its best point; returns (a, loss). Under nll there is a finite best a at finite L (spec §5); under
    code-ce the loss keeps falling, so the answer is the grid's end."""
    match, onehot = _history_matches(tokens[:, :-1], subset, d)
    target = tokens[:, -1]

    def best(grid: torch.Tensor) -> tuple[float, float]:
        values = [losses(_gih(match, onehot, float(a)), target)[loss] for a in grid]
        k = min(range(len(values)), key=values.__getitem__)
        return float(grid[k]), values[k]

    coarse, _ = best(torch.arange(0.0, 30.0001, 0.5, dtype=torch.float64))
    return best(torch.arange(max(coarse - 0.5, 0.0), min(coarse + 0.5, 30.0) + 1e-9, 0.01, dtype=torch.float64))
