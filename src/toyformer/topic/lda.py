"""Topic-model (LDA) documents, docs/topic-structure.md §1: T topics over a word vocabulary, a topic mixture θ per
document, words drawn i.i.d. from the document's word distribution μ_θ = θ·Φ. Vectorised over documents, on any device.

Token layout (official): PAD=0, MASK=1, START=2, END=3, word k = k + 4; a document is START words END, padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from toyformer.random import dirichlet
from toyformer.topic.config import END, NUM_SPECIALS, PAD, START, DataConfig, num_ids


def topic_word_matrix(cfg: DataConfig, dtype=torch.float64) -> torch.Tensor:
    """Φ, (T, n_words): row t is topic t's distribution over words; rows sum to one.

    Topics own consecutive blocks of words (sizes from ``topic_sizes`` or v each); with ``overlap = m`` topic t also
    owns the first m words of topic t+1's block (cyclically). Inside a topic, words are uniform or Zipfian in their
    order of appearance.
    """
    sizes = cfg.sizes
    phi = torch.zeros(cfg.num_topics, cfg.num_words, dtype=dtype)
    starts = [sum(sizes[:t]) for t in range(cfg.num_topics)]
    for t, (start, size) in enumerate(zip(starts, sizes, strict=True)):
        nxt = (t + 1) % cfg.num_topics
        words = list(range(start, start + size))
        if cfg.overlap and nxt != t:
            words += list(range(starts[nxt], starts[nxt] + cfg.overlap))
        ranks = torch.arange(1, len(words) + 1, dtype=dtype)
        weights = ranks**-cfg.zipf_exponent if cfg.word_dist == "zipf" else torch.ones_like(ranks)
        phi[t, words] = weights / weights.sum()
    return phi


def id_topics(cfg: DataConfig) -> torch.Tensor:
    """(n_ids, T) bool: which topics each id belongs to (specials and topic-less words: none)."""
    z = torch.zeros(num_ids(cfg), cfg.num_topics, dtype=torch.bool)
    z[NUM_SPECIALS:] = (topic_word_matrix(cfg) > 0).T
    return z


def topic_block_matrix(cfg: DataConfig) -> torch.Tensor:
    """The 0/1 matrix over ids that is 1 where two words share a topic (the regime-C value matrix)."""
    z = id_topics(cfg).double()
    return (z @ z.T > 0).double()


def sample_mixtures(cfg: DataConfig, n: int, gen: torch.Generator, device="cpu") -> torch.Tensor:
    """θ, (n, T): Dirichlet(α·1) or τ distinct topics chosen uniformly, each weighted 1/τ."""
    if cfg.mixture == "dirichlet":
        return dirichlet(torch.full((n, cfg.num_topics), cfg.alpha, device=device), gen)
    order = torch.rand(n, cfg.num_topics, generator=gen, device=device).argsort(dim=1)
    theta = torch.zeros(n, cfg.num_topics, dtype=torch.float64, device=device)
    return theta.scatter_(1, order[:, : cfg.tau], 1.0 / cfg.tau)


@dataclass
class Documents:
    ids: torch.Tensor  # (n, L) uncorrupted ids in the official layout, PAD after the end
    lengths: torch.Tensor  # (n,) number of words (START/END not counted)
    theta: torch.Tensor  # (n, T) topic mixtures


def sample_documents(
    cfg: DataConfig, n: int, gen: torch.Generator, device="cpu", phi: torch.Tensor | None = None
) -> Documents:
    """``n`` documents; ``phi`` is Φ on ``device`` when the caller keeps it (it is rebuilt otherwise)."""
    phi = topic_word_matrix(cfg).to(device) if phi is None else phi
    theta = sample_mixtures(cfg, n, gen, device)
    cdf = torch.cumsum(theta @ phi, dim=1)  # (n, n_words): words by inverse CDF, all draws at once
    lengths = torch.randint(cfg.doc_len_min, cfg.doc_len_max + 1, (n,), generator=gen, device=device)
    u = torch.rand(n, cfg.doc_len_max, generator=gen, dtype=cdf.dtype, device=device) * cdf[:, -1:]
    words = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1) + NUM_SPECIALS
    pos = torch.arange(cfg.doc_len_max, device=device)
    words = torch.where(pos < lengths[:, None], words, PAD)
    if not cfg.start_end:
        return Documents(words, lengths, theta)
    ids = torch.full((n, cfg.doc_len_max + 2), PAD, dtype=torch.long, device=device)
    ids[:, 0] = START
    ids[:, 1:-1] = words
    ids.scatter_(1, (lengths + 1)[:, None], END)
    return Documents(ids, lengths, theta)
