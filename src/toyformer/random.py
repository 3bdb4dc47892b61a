"""Seeded randomness: one ``torch.Generator`` per (run seed, purpose, step), and samplers that take one.

A data stream is a function of (seed, step), so a resumed run draws exactly the numbers an uninterrupted run draws.
``torch.distributions`` samples gamma variates from the global RNG only, so gamma/Dirichlet draws are
implemented here (Marsaglia–Tsang) on top of a generator's normals and uniforms.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, purpose: str, step: int = 0) -> int:
    digest = hashlib.blake2b(f"{seed}/{purpose}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(seed: int, purpose: str, step: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, purpose, step))
    return g


def log_gamma_variates(shape: torch.Tensor, gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """log of Gamma(shape, 1) draws, elementwise; stable for small shapes (α = 0.1 underflows in linear space).

    For shape < 1 uses Gamma(a) = Gamma(a + 1) · U^(1/a). Rejection runs vectorised: the first round proposes for
    every draw at once, later rounds only for the few rejected ones (the acceptance rate is above 95%).
    """
    shape = shape.to(dtype)
    tiny = torch.finfo(dtype).tiny
    boost = shape < 1
    a = torch.where(boost, shape + 1, shape).reshape(-1)
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(a)
    todo = None  # None: every draw (the first round, without index copies)
    while todo is None or len(todo):
        dt, ct = (d, c) if todo is None else (d[todo], c[todo])
        x = torch.randn(len(dt), generator=gen, dtype=dtype, device=a.device)
        u = torch.rand(len(dt), generator=gen, dtype=dtype, device=a.device)
        v = (1 + ct * x) ** 3
        logv = torch.log(v.clamp_min(tiny))
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + dt - dt * v + dt * logv)
        value = torch.log(dt) + logv
        if todo is None:
            out, todo = value, (~ok).nonzero().squeeze(1)
        else:
            out[todo[ok]] = value[ok]
            todo = todo[~ok]
    u = torch.rand(shape.shape, generator=gen, dtype=dtype, device=a.device).clamp_min(tiny)
    return torch.where(boost, out.view(shape.shape) + torch.log(u) / shape, out.view(shape.shape))


def dirichlet(concentration: torch.Tensor, gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """Dirichlet draws along the last axis: normalised gamma variates, computed as a softmax of their logs."""
    logs = log_gamma_variates(concentration, gen, dtype)
    weights = (logs - logs.amax(-1, keepdim=True)).exp()  # a softmax, cheaper than torch.softmax on short rows
    return weights / weights.sum(-1, keepdim=True)
