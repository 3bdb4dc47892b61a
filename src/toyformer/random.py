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

    For shape < 1 uses Gamma(a) = Gamma(a + 1) · U^(1/a). Rejection runs vectorised over all draws at once and
    loops only over rounds (the acceptance rate is above 95%, so two or three rounds).
    """
    shape = shape.to(dtype)
    boost = shape < 1
    a = torch.where(boost, shape + 1, shape)
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(a)
    todo = torch.ones_like(a, dtype=torch.bool)
    while bool(todo.any()):
        x = torch.randn(a.shape, generator=gen, dtype=dtype, device=a.device)
        u = torch.rand(a.shape, generator=gen, dtype=dtype, device=a.device)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        take = ok & todo
        out = torch.where(take, torch.log(d * v.clamp_min(1e-300)), out)
        todo = todo & ~ok
    u = torch.rand(a.shape, generator=gen, dtype=dtype, device=a.device).clamp_min(1e-300)
    return torch.where(boost, out + torch.log(u) / shape, out)


def dirichlet(concentration: torch.Tensor, gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """Dirichlet draws along the last axis: normalised gamma variates, computed as a softmax of their logs."""
    return torch.softmax(log_gamma_variates(concentration, gen, dtype), dim=-1)
