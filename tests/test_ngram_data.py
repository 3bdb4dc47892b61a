"""In-context n-gram chains (docs/induction-heads.md §1; induction/chains.py) against counts.

Kernels: Dirichlet row moments. Chains: empirical transition frequencies N(context, e)/N(context), counted here with
numpy from the raw tokens (the context code rebuilt independently: nearest parent = most significant digit), must
match the kernel rows; the start windows must follow the uniform law or the stationary window law.

Tolerances are sampling errors. For a chain, N(c, e) − π(e|c)·N(c) is a martingale (every step draws a fresh
uniform), so the frequency N(c, e)/N(c) has standard error sqrt(π(1−π)/N(c)) and the pooled statistic
Σ (N(c,e) − N(c)π)² / (N(c)π) is asymptotically χ² with rows·(d−1) degrees of freedom (Anderson–Goodman). Every
per-cell check allows 5 standard errors; every χ² check allows df + 5·sqrt(2·df).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from toyformer.induction.chains import sample_batch, sample_chains, sample_kernels, stationary_windows
from toyformer.random import generator


def _transition_counts(tokens: np.ndarray, d: int, parents: tuple[int, ...]) -> np.ndarray:
    """(d^n, d) counts of (parent code, next token) over all positions t ≥ max(pa) of all sequences."""
    n, m = len(parents), max(parents)
    length = tokens.shape[1]
    code = np.zeros((tokens.shape[0], length - m), dtype=np.int64)
    for k, p in enumerate(parents):  # nearest parent (smallest offset) is the most significant digit
        code += tokens[:, m - p : length - p] * d ** (n - 1 - k)
    nxt = tokens[:, m:]
    counts = np.zeros((d**n, d), dtype=np.int64)
    np.add.at(counts, (code.ravel(), nxt.ravel()), 1)
    return counts


def _window_freq(tokens: np.ndarray, d: int, start: int, width: int) -> np.ndarray:
    """Frequencies over sequences of the window tokens[:, start:start+width], coded oldest-first."""
    code = np.zeros(tokens.shape[0], dtype=np.int64)
    for i in range(width):
        code = code * d + tokens[:, start + i]
    return np.bincount(code, minlength=d**width) / tokens.shape[0]


def _chi2_ok(counts: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """Pooled Pearson statistic of observed counts against expected probabilities (rows: contexts), and its bound."""
    n = counts.sum(1, keepdims=True)
    expected = n * probs
    stat = float((((counts - expected) ** 2) / expected).sum())
    df = counts.shape[0] * (counts.shape[1] - 1)
    return stat, df + 5 * math.sqrt(2 * df)


def _fixed_kernel(d: int, n: int, seed: int) -> torch.Tensor:
    """A known kernel with well-separated rows and no tiny entries (so every cell has a usable normal approximation):
    a Dirichlet(1) draw mixed 80/20 with the uniform row, every entry ≥ 0.2/d."""
    raw = sample_kernels(1, d, n, 1.0, generator(seed, "test-fixed-kernel"))
    return 0.8 * raw + 0.2 / d


# ---------------------------------------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("alpha", [0.05, 0.1, 1.0, 3.0])
def test_kernel_rows_are_distributions(alpha):
    k = sample_kernels(500, 3, 2, alpha, generator(0, "test-rows"))
    assert k.shape == (500, 9, 3) and k.dtype == torch.float64
    assert bool((k >= 0).all()) and bool(torch.isfinite(k).all())
    np.testing.assert_allclose(k.sum(-1).numpy(), 1.0, atol=1e-12)


@pytest.mark.parametrize(("d", "alpha"), [(3, 0.1), (3, 2.0), (2, 0.5), (4, 0.05)])
def test_kernel_rows_dirichlet_moments(d, alpha):
    """Each coordinate of a Dirichlet(α·1_d) row is Beta(α, (d−1)α): mean 1/d, variance (1/d)(1−1/d)/(dα+1).

    Tolerance: the rows are independent, so the sample mean has SE σ/√N. For the sample variance, X ∈ [0, 1] gives
    |X − 1/d| ≤ 1, hence Var[(X − 1/d)²] ≤ E[(X − 1/d)⁴] ≤ σ²: its SE is at most σ/√N as well. 5 SE each.
    (A gamma sampler without the shape-boost correction for α < 1 gives variance (1/d)(1−1/d)/(d(α+1)+1), far
    outside these bounds.)"""
    rows = sample_kernels(20000, d, 2, alpha, generator(1, "test-moments")).reshape(-1, d).numpy()
    n = rows.shape[0]
    mean = 1 / d
    var = mean * (1 - mean) / (d * alpha + 1)
    se = math.sqrt(var / n)
    for j in range(d):
        x = rows[:, j]
        assert abs(x.mean() - mean) < 5 * se, (j, x.mean(), mean)
        assert abs(((x - mean) ** 2).mean() - var) < 5 * se, (j, ((x - mean) ** 2).mean(), var)


# ----------------------------------------------------------------------------------------------------------- chains


@pytest.mark.parametrize("parents", [(1, 2), (1, 3)])
@pytest.mark.parametrize("start", ["uniform", "stationary"])
def test_transition_frequencies_match_kernel(parents, start):
    """200 chains × 1500 tokens with one fixed kernel: per context ≈ 33k transitions."""
    d = 3
    kernel = _fixed_kernel(d, len(parents), seed=len(parents) + parents[-1])
    b, length = 200, 1500
    tokens = sample_chains(kernel.repeat(b, 1, 1), parents, length, generator(5, "test-chains"), start=start)
    assert tokens.shape == (b, length) and tokens.dtype == torch.long
    assert int(tokens.min()) >= 0 and int(tokens.max()) < d
    counts = _transition_counts(tokens.numpy(), d, parents)
    pi = kernel[0].numpy()
    n_ctx = counts.sum(1)
    assert (n_ctx > 1000).all(), n_ctx  # every context is visited often (entries ≥ 0.2/d): the test has power
    freq = counts / n_ctx[:, None]
    se = np.sqrt(pi * (1 - pi) / n_ctx[:, None])
    assert (np.abs(freq - pi) < 5 * se).all(), np.abs(freq - pi) / se
    stat, bound = _chi2_ok(counts, pi)
    assert stat < bound, (stat, bound)
    # power: the same counts read with the parent digits in the other order (least significant = nearest) do not
    # fit, so a coding mix-up in the sampler would fail the checks above
    swapped = np.array([(c % d) * d + c // d for c in range(d * d)])
    stat_wrong, _ = _chi2_ok(counts, pi[swapped])
    assert stat_wrong > 10 * bound


def test_uniform_start_windows_are_uniform():
    """start='uniform': the first max(pa) = 3 tokens are i.i.d. uniform, i.e. all 27 windows have frequency 1/27
    (per cell SE sqrt(p(1−p)/B), 5 SE; and a χ² check over the 27 cells). The kernel is far from uniform (α = 0.1),
    so these tokens being uniform is not a property of the kernel. length == max(pa) is allowed."""
    d, parents, b = 3, (1, 3), 40000
    kernels = sample_kernels(b, d, 2, 0.1, generator(2, "test-kernels"))
    for length in (3, 6):
        tokens = sample_chains(kernels, parents, length, generator(length, "test-uniform")).numpy()
        freq = _window_freq(tokens, d, 0, 3)
        p = 1 / 27
        assert (np.abs(freq - p) < 5 * math.sqrt(p * (1 - p) / b)).all(), freq
        stat, bound = _chi2_ok((freq * b)[None, :], np.full((1, 27), p))
        assert stat < bound, (stat, bound)


@pytest.mark.parametrize("parents", [(1, 2), (1, 3)])
def test_stationary_start_window_law(parents):
    """start='stationary': 30000 sequences with one kernel; the window at positions 0..m−1 and a later window
    (positions 9..9+m−1) both have the law stationary_windows gives (5 SE per cell, SE sqrt(μ(1−μ)/B) since windows
    are one per independent sequence). The kernel's stationary law is far from uniform (checked), and a
    uniform-start window at the same later position is checked not to have reached it, so the match is not
    automatic. With the χ² restricted to the windows of expected count ≥ 5, the law is renormalised on them and the
    statistic has one degree of freedom fewer than cells (a multinomial conditioned on the restricted total)."""
    d, b = 3, 30000
    m = max(parents)
    kernel = sample_kernels(1, d, len(parents), 0.3, generator(11, "test-stationary-kernel"))
    mu = stationary_windows(kernel, d, parents)[0].numpy()
    se = np.sqrt(mu * (1 - mu) / b)  # plus a 2-count slack below: a window of tiny μ may be seen once or twice
    big = mu * b >= 5  # the χ² check (on the counts restricted to these windows) needs expected counts ≥ 5
    assert np.abs(mu - 1 / d**m).max() > 0.02  # far from uniform: > 6 SE (SE ≤ sqrt(1/(4B)) < 0.003)
    length = 9 + m
    tokens = sample_chains(kernel.repeat(b, 1, 1), parents, length, generator(3, "test-st"), start="stationary")
    tokens = tokens.numpy()
    for start in (0, 9):
        freq = _window_freq(tokens, d, start, m)
        dev = np.abs(freq - mu)
        assert (dev < 5 * se + 2 / b).all(), (start, dev / np.maximum(se, 1e-300))
        stat, bound = _chi2_ok((freq * b)[None, big], mu[None, big] / mu[big].sum())
        assert stat < bound, (start, stat, bound)
    # the same start window drawn uniformly is clearly not stationary (power of the check)
    tokens_u = sample_chains(kernel.repeat(b, 1, 1), parents, length, generator(3, "test-st")).numpy()
    stat_u, bound_u = _chi2_ok((_window_freq(tokens_u, d, 0, m) * b)[None, big], mu[None, big] / mu[big].sum())
    assert stat_u > 10 * bound_u


def test_each_sequence_follows_its_own_kernel():
    """sample_batch: 6 sequences, each with its own Dirichlet(2) kernel, 8000 tokens each. Each sequence's
    transition frequencies match its own kernel (5 SE per cell with the bound π(1−π) ≤ 1/4, i.e. 2.5/√N(c)), and
    not its neighbour's kernel (the same check against the kernel of sequence b+1 fails)."""
    d, parents, b, length = 3, (1, 2), 6, 8000
    batch = sample_batch(b, d, parents, 2.0, length, generator(7, "test-batch"))
    tokens, kernels = batch.tokens.numpy(), batch.kernels.double().numpy()
    wrong_fits = 0
    for i in range(b):
        counts = _transition_counts(tokens[i : i + 1], d, parents)
        n_ctx = np.maximum(counts.sum(1, keepdims=True), 1)
        dev = np.abs(counts / n_ctx - kernels[i]) * (counts.sum(1, keepdims=True) > 0)
        bound = 2.5 / np.sqrt(n_ctx)
        assert (dev < bound).all(), (i, (dev / bound).max())
        dev_other = np.abs(counts / n_ctx - kernels[(i + 1) % b]) * (counts.sum(1, keepdims=True) > 0)
        wrong_fits += int((dev_other < bound).all())
    assert wrong_fits == 0


def test_seeded_determinism():
    d, parents = 3, (1, 3)
    kernels = sample_kernels(8, d, 2, 0.5, generator(0, "test-det-kernels"))
    for start in ("uniform", "stationary"):
        a = sample_chains(kernels, parents, 50, generator(1, "data"), start=start)
        b = sample_chains(kernels, parents, 50, generator(1, "data"), start=start)
        c = sample_chains(kernels, parents, 50, generator(2, "data"), start=start)
        assert torch.equal(a, b)
        # 8 × 47 sampled tokens: two independent seeds agreeing everywhere has probability ~ (max row prob)^376
        assert not torch.equal(a, c)
    x = sample_batch(4, d, parents, 0.1, 30, generator(9, "data"))
    y = sample_batch(4, d, parents, 0.1, 30, generator(9, "data"))
    z = sample_batch(4, d, parents, 0.1, 30, generator(10, "data"))
    assert torch.equal(x.tokens, y.tokens) and torch.equal(x.kernels, y.kernels)
    assert not torch.equal(x.kernels, z.kernels) and not torch.equal(x.tokens, z.tokens)


@pytest.mark.parametrize(("d", "parents"), [(3, (1, 2)), (2, (1, 3)), (4, (2,)), (3, (1, 2, 3))])
def test_sample_batch_shapes(d, parents):
    n, length = 5, 20
    batch = sample_batch(n, d, parents, 0.1, length, generator(0, "test-shapes"))
    assert batch.tokens.shape == (n, length + 1) and batch.tokens.dtype == torch.long
    assert batch.kernels.shape == (n, d ** len(parents), d)
    assert int(batch.tokens.min()) >= 0 and int(batch.tokens.max()) < d
    np.testing.assert_allclose(batch.kernels.double().sum(-1).numpy(), 1.0, atol=1e-5)  # float32 rows


def test_too_short_raises():
    kernels = sample_kernels(2, 3, 2, 0.1, generator(0, "test-short"))
    with pytest.raises(ValueError):
        sample_chains(kernels, (1, 3), 2, generator(0, "x"))
    assert sample_chains(kernels, (1, 3), 3, generator(0, "x")).shape == (2, 3)  # length == max(pa) is fine
    with pytest.raises(ValueError):
        sample_batch(2, 3, (1, 3), 0.1, 1, generator(0, "x"))  # length + 1 = 2 < 3
    with pytest.raises(ValueError):
        sample_chains(kernels, (1, 3), 0, generator(0, "x"))
