"""In-context n-gram Markov chains (paper 2, spec §1): every sequence has its own kernel π, whose d^n rows are
independent Dirichlet(α·1_d) draws; x_l ~ π(· | x_{l−p} for p ∈ pa). Vectorised over the batch on any device; the
loop runs over time only, with all uniforms of the batch drawn at once and each step an inverse-CDF lookup.

Contexts are base-d codes of the parent tokens, nearest parent first (as in ``toyformer.theory.ngram``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from toyformer.theory.ngram import sample_kernels, stationary_windows


@dataclass
class Chains:
    tokens: torch.Tensor  # (B, L + 1) long: inputs x_1..x_L and the target x_{L+1}
    kernels: torch.Tensor  # (B, d^n, d) the kernel of each sequence


def sample_chains(
    kernels: torch.Tensor, parents: tuple[int, ...], length: int, gen: torch.Generator, start: str = "uniform"
) -> torch.Tensor:
    """(B, length) tokens of the chains with the given kernels.

    start: "uniform" draws the first max(pa) tokens i.i.d. uniform (the official choice); "stationary" draws them
    from each kernel's stationary window law, so the whole sequence is stationary.
    """
    b, rows, d = kernels.shape
    m = max(parents)
    if length < m:
        raise ValueError(f"length {length} is shorter than the largest parent offset {m}")
    device = kernels.device
    cdf = torch.cumsum(kernels, dim=-1)
    cdf[..., -1] = 1.0  # rounding must never leave a uniform above the last bin
    u = torch.rand(b, length, generator=gen, dtype=cdf.dtype, device=device)
    tokens = torch.empty(b, length, dtype=torch.long, device=device)
    if start == "uniform":
        tokens[:, :m] = (u[:, :m] * d).long().clamp_(max=d - 1)
    else:
        law = torch.cumsum(stationary_windows(kernels.double().cpu(), d, parents).to(device), dim=-1)
        window = torch.searchsorted(law, u[:, :1].double().contiguous()).clamp_(max=d**m - 1).squeeze(1)
        for i in range(m):  # window code, oldest token first
            tokens[:, i] = (window // d ** (m - 1 - i)) % d
    rows_of = torch.arange(b, device=device)
    weights = torch.tensor([d ** (len(parents) - 1 - k) for k in range(len(parents))], device=device)
    offsets = torch.tensor(parents, device=device)
    for t in range(m, length):
        code = (tokens[:, t - offsets] * weights).sum(1)
        row = cdf[rows_of, code]  # (B, d)
        tokens[:, t] = torch.searchsorted(row, u[:, t : t + 1].contiguous()).squeeze(1).clamp_(max=d - 1)
    return tokens


def sample_batch(
    n: int,
    d: int,
    parents: tuple[int, ...],
    alpha: float,
    length: int,
    gen: torch.Generator,
    start: str = "uniform",
    device: str | torch.device = "cpu",
    redraw_last: bool = False,
) -> Chains:
    """``n`` sequences of ``length`` inputs plus the target: kernels first, then the chains.

    redraw_last: the first-order sanity task of the official code: x_L is redrawn uniform and the target x_{L+1}
    drawn again from the kernel given its (new) parents, so the target's context is uniform, not stationary."""
    kernels = sample_kernels(n, d, len(parents), alpha, gen, device).float()
    tokens = sample_chains(kernels, parents, length + 1, gen, start)
    if redraw_last:
        tokens[:, length - 1] = torch.randint(d, (n,), generator=gen, device=device)
        code = torch.zeros(n, dtype=torch.long, device=device)
        for p in parents:
            code = code * d + tokens[:, length - p]
        row = torch.cumsum(kernels[torch.arange(n, device=device), code], dim=-1)
        row[:, -1] = 1.0
        u = torch.rand(n, 1, generator=gen, dtype=row.dtype, device=device)
        tokens[:, length] = torch.searchsorted(row, u).squeeze(1).clamp_(max=d - 1)
    return Chains(tokens, kernels)
