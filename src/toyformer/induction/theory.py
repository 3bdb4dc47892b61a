"""Theory of in-context n-gram chains (paper 2, docs/induction-heads.md §5): the stationary joint law of a history and
the next token, χ² mutual informations, the predicted parent subset S*. Pure functions in float64, batched over kernels;
kernels and windows are coded as in ``toyformer.induction.chains``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from toyformer.induction.chains import parent_code_of_window, sample_kernels, stationary_windows
from toyformer.induction.config import InductionConfig, candidate_subsets
from toyformer.random import generator


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
# The prediction for a run's config

_THEORY: dict[str, dict] = {}  # the prediction does not depend on the run seed: the members of a group share it


def prediction(cfg: InductionConfig) -> dict:
    """The predicted S* for the run's setting (docs/induction-heads.md §5): by Ĩ under nll, by its code-ce variant under
    code-ce."""
    key = json.dumps(
        [cfg.data.model_dump(mode="json"), cfg.model.model_dump(mode="json"), cfg.train.loss, cfg.theory.kernels]
    )
    if key not in _THEORY:
        _THEORY[key] = _theory(cfg)
    return dict(_THEORY[key])


def _theory(cfg: InductionConfig) -> dict:
    m, d = cfg.model, cfg.data
    loss = "nll" if cfg.train.loss == "nll" else "code-ce"
    pred = predict_subset(
        d.d, tuple(d.parents), d.alpha, m.heads, m.degree, m.layout, m.window, cfg.theory.kernels, 0, loss
    )
    return pred.summary() | {"selection_by": loss}


def predicted_offsets(prediction: dict) -> tuple[int, ...]:
    """The theory's S* as a tuple of offsets ("1,2" → (1, 2))."""
    return tuple(int(o) for o in prediction["predicted_subset"].split(","))
