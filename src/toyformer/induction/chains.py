"""In-context n-gram Markov chains (paper 2, docs/induction-heads.md §1): every sequence has its own kernel π, whose d^n
rows are independent Dirichlet(α·1_d) draws; x_l ~ π(· | x_{l−p} for p ∈ pa). Vectorised over the batch on any device;
the loop runs over time only, with all uniforms of the batch drawn at once and each step an inverse-CDF lookup.

Contexts are base-d codes of the parent tokens, nearest parent first (as in ``toyformer.induction.theory``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from toyformer.random import dirichlet


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
    u = torch.rand(length, b, generator=gen, dtype=cdf.dtype, device=device)  # time-major: a step reads a row
    tokens = torch.empty(b, length, dtype=torch.long, device=device)
    if start == "uniform":
        tokens[:, :m] = (u[:m].T * d).long().clamp_(max=d - 1)
    else:
        law = torch.cumsum(stationary_windows(kernels.double().cpu(), d, parents).to(device), dim=-1)
        window = torch.searchsorted(law, u[0, :, None].double()).clamp_(max=d**m - 1).squeeze(1)
        for i in range(m):  # window code, oldest token first
            tokens[:, i] = (window // d ** (m - 1 - i)) % d
    # The last m tokens as a base-d code w (x_{t-1} least significant), rolled forward each step. Each kernel's rows
    # are laid out by w once, so a step gathers the current row's cumulative bins, counts those below the uniform
    # (that count is the token) and gathers the next code.
    window = torch.zeros(b, dtype=torch.long, device=device)
    for i in range(1, m + 1):
        window += tokens[:, m - i] * d ** (i - 1)
    codes = torch.arange(d**m, device=device)
    row_of = sum((codes // d ** (p - 1) % d) * d ** (len(parents) - 1 - k) for k, p in enumerate(parents))
    bins = [cdf[:, row_of, j].reshape(-1) for j in range(d - 1)]  # (B·d^m,) per bin; the last bin is 1
    base = torch.arange(b, device=device) * d**m
    shifted = (base[:, None] + codes * d % d**m).reshape(-1)  # index of (sequence, w·d mod d^m)
    index = base + window
    out = torch.empty(length, b, dtype=torch.long, device=device)
    for t in range(m, length):
        token = out[t]
        torch.lt(bins[0].take(index), u[t], out=token)
        for more in bins[1:]:
            token += more.take(index) < u[t]
        index = shifted.take(index).add_(token)
    tokens[:, m:] = out[m:].T
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
    kernels = sample_kernels(n, d, len(parents), alpha, gen, device, torch.float32)
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
