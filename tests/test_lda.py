"""The topic-model generator (docs/topic-structure.md §1) and the seeded gamma/Dirichlet samplers it rests on.

Every statistical check compares a simulation with an analytic value (or an independent numpy Monte Carlo) and uses
a tolerance of about five standard errors, derived next to each assertion. Seeds are fixed, so the tests are
deterministic; the tolerances say how unlucky a correct implementation would have to be to fail with another seed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from toyformer.random import derive_seed, dirichlet, generator, log_gamma_variates
from toyformer.topic import lda
from toyformer.topic.config import END, MASK, NUM_SPECIALS, PAD, START, DataConfig, num_ids
from toyformer.topic.lda import id_topics, sample_documents, sample_mixtures, topic_block_matrix, topic_word_matrix

# --------------------------------------------------------------------------------------------------------------
# random.py: gamma and Dirichlet variates


@pytest.mark.parametrize("a", [0.1, 0.5, 1.0, 3.0])
def test_gamma_moments(a):
    n = 50_000
    logs = log_gamma_variates(torch.full((n,), a), generator(11, "gamma", int(a * 10)))
    assert logs.dtype == torch.float64 and logs.shape == (n,)
    assert torch.isfinite(logs).all()  # a = 0.1 would underflow to 0 in linear space: the log must stay finite
    x = logs.exp()
    # Gamma(a, 1): mean a, variance a, fourth cumulant 6a. SE(mean) = sqrt(a/n);
    # SE(sample variance) ≈ sqrt((κ4 + 2σ⁴)/n) = sqrt((6a + 2a²)/n).
    assert abs(float(x.mean()) - a) < 5 * math.sqrt(a / n)
    assert abs(float(x.var()) - a) < 5 * math.sqrt((6 * a + 2 * a * a) / n)
    # log X: mean ψ(a), variance ψ'(a), fourth cumulant ψ'''(a). This checks the small-shape boost U^(1/a) in log
    # space, where most of the mass of Gamma(0.1) lives (E log X = -10.4).
    t = torch.tensor(a, dtype=torch.float64)
    mean, var, k4 = float(torch.digamma(t)), float(torch.polygamma(1, t)), float(torch.polygamma(3, t))
    assert abs(float(logs.mean()) - mean) < 5 * math.sqrt(var / n)
    assert abs(float(logs.var()) - var) < 5 * math.sqrt((k4 + 2 * var * var) / n)


@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_dirichlet_moments(alpha):
    n, t = 20_000, 10
    theta = dirichlet(torch.full((n, t), alpha), generator(12, "dirichlet"))
    assert theta.shape == (n, t)
    assert torch.allclose(theta.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-12)
    assert (theta >= 0).all()
    # Dir(α·1_T): component mean 1/T, variance m(1-m)/(Tα+1) with m = 1/T, covariance -m²/(Tα+1).
    m = 1.0 / t
    var = m * (1 - m) / (t * alpha + 1)
    # Per component: SE(mean) = sqrt(var/n). Entries lie in [0, 1], so |x - m| <= 1 and E[(x-m)^4] <= var:
    # SE(sample variance) <= sqrt(E[(x-m)^4]/n) <= sqrt(var/n); likewise E[(x_i-m)²(x_j-m)²] <= var bounds the SE
    # of a sample covariance.
    se = math.sqrt(var / n)
    assert (theta.mean(0) - m).abs().max() < 5 * se
    assert (theta.var(0) - var).abs().max() < 5 * se
    off = torch.cov(theta.T)[~torch.eye(t, dtype=torch.bool)]
    assert (off + m * m / (t * alpha + 1)).abs().max() < 5 * se


def test_seeded_generators_are_reproducible():
    shape = torch.full((1000,), 0.3)
    a = log_gamma_variates(shape, generator(5, "p", 2))
    b = log_gamma_variates(shape, generator(5, "p", 2))
    assert torch.equal(a, b)
    for other in (generator(6, "p", 2), generator(5, "q", 2), generator(5, "p", 3)):
        assert (log_gamma_variates(shape, other) != a).float().mean() > 0.99
    conc = torch.full((200, 10), 0.1)
    assert torch.equal(dirichlet(conc, generator(1, "d")), dirichlet(conc, generator(1, "d")))
    assert not torch.equal(dirichlet(conc, generator(1, "d")), dirichlet(conc, generator(2, "d")))
    # derived seeds are distinct per (seed, purpose, step) and fit a 63-bit seed
    seeds = {derive_seed(s, p, k) for s in range(3) for p in ("a", "b") for k in range(3)}
    assert len(seeds) == 18 and all(0 <= x < 2**63 for x in seeds)


# --------------------------------------------------------------------------------------------------------------
# Φ: topic-word matrices


def test_topic_word_matrix_default_disjoint_uniform():
    cfg = DataConfig()
    phi = topic_word_matrix(cfg)
    assert phi.shape == (10, 100)
    assert torch.allclose(phi.sum(1), torch.ones(10, dtype=torch.float64))
    for w in range(100):
        col = phi[:, w]
        assert int((col > 0).sum()) == 1  # each word in exactly one topic
        assert int(col.argmax()) == w // 10  # topic t owns words t·v … t·v+v-1
        assert float(col.max()) == pytest.approx(1 / 10, abs=1e-15)


def test_topic_word_matrix_overlap():
    t, v, m = 4, 5, 2
    phi = topic_word_matrix(DataConfig(num_topics=t, words_per_topic=v, overlap=m))
    assert torch.allclose(phi.sum(1), torch.ones(t, dtype=torch.float64))
    for topic in range(t):
        own = set(range(topic * v, topic * v + v))
        shared = set(range(((topic + 1) % t) * v, ((topic + 1) % t) * v + m))
        support = set(torch.nonzero(phi[topic]).flatten().tolist())
        assert support == own | shared
        assert torch.allclose(phi[topic, sorted(support)], torch.full((v + m,), 1 / (v + m), dtype=torch.float64))
    # the first m words of every block belong to two topics (their own and the previous one), the others to one
    owners = (phi > 0).sum(0)
    for w in range(t * v):
        assert int(owners[w]) == (2 if w % v < m else 1)


def test_topic_word_matrix_zipf():
    s = 1.5
    cfg = DataConfig(num_topics=3, topic_sizes=[4, 6, 5], word_dist="zipf", zipf_exponent=s, overlap=1)
    phi = topic_word_matrix(cfg)
    assert torch.allclose(phi.sum(1), torch.ones(3, dtype=torch.float64))
    starts = [0, 4, 10]
    for topic, (start, size) in enumerate(zip(starts, cfg.sizes, strict=True)):
        nxt = starts[(topic + 1) % 3]
        words = list(range(start, start + size)) + [nxt]  # own block in order, then the shared word
        probs = phi[topic, words]
        ranks = torch.arange(1, len(words) + 1, dtype=torch.float64)
        assert torch.allclose(probs / probs[0], ranks**-s, rtol=1e-12)  # ratios follow rank^-s
        assert int((phi[topic] > 0).sum()) == len(words)


def test_topic_word_matrix_unequal_sizes_and_spare_words():
    cfg = DataConfig(num_topics=3, topic_sizes=[2, 3, 5], vocab_size=12)
    phi = topic_word_matrix(cfg)
    assert phi.shape == (3, 12)
    for topic, (start, size) in enumerate([(0, 2), (2, 3), (5, 5)]):
        expect = torch.zeros(12, dtype=torch.float64)
        expect[start : start + size] = 1 / size
        assert torch.equal(phi[topic], expect)
    # words 10, 11 belong to no topic: no topic ids, never a topic-block entry
    z = id_topics(cfg)
    assert z.shape == (num_ids(cfg), 3)
    assert not z[:NUM_SPECIALS].any() and not z[NUM_SPECIALS + 10 :].any()
    assert [int(z[NUM_SPECIALS + w].float().argmax()) for w in range(10)] == [0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    block = topic_block_matrix(cfg)
    for i in range(num_ids(cfg)):
        for j in range(num_ids(cfg)):
            wi, wj = i - NUM_SPECIALS, j - NUM_SPECIALS
            same = 0 <= wi < 10 and 0 <= wj < 10 and int(z[i].float().argmax()) == int(z[j].float().argmax())
            assert block[i, j] == float(same)


# --------------------------------------------------------------------------------------------------------------
# documents


@pytest.fixture(scope="module")
def default_docs():
    return sample_documents(DataConfig(), 5000, generator(0, "test-docs"))


def test_document_layout(default_docs):
    docs, cfg = default_docs, DataConfig()
    n = docs.ids.shape[0]
    assert docs.ids.shape == (n, cfg.doc_len_max + 2) and docs.ids.dtype == torch.long
    assert (docs.ids[:, 0] == START).all()
    for d in range(0, n, 7):  # an explicit per-document walk on a subset
        length = int(docs.lengths[d])
        row = docs.ids[d]
        assert ((row[1 : length + 1] >= NUM_SPECIALS) & (row[1 : length + 1] < num_ids(cfg))).all()
        assert int(row[length + 1]) == END
        assert (row[length + 2 :] == PAD).all()
    pos = torch.arange(docs.ids.shape[1])
    is_word = (pos >= 1) & (pos <= docs.lengths[:, None])
    assert torch.equal(docs.ids >= NUM_SPECIALS, is_word)  # words exactly at positions 1..N
    assert not (docs.ids == MASK).any()
    assert torch.equal((docs.ids == END).sum(1), torch.ones(n, dtype=torch.long))


def test_document_layout_without_start_end():
    cfg = DataConfig(start_end=False, doc_len_min=3, doc_len_max=9)
    docs = sample_documents(cfg, 400, generator(1, "docs"))
    assert docs.ids.shape == (400, 9)
    pos = torch.arange(9)
    assert torch.equal(docs.ids >= NUM_SPECIALS, pos < docs.lengths[:, None])
    assert torch.equal(docs.ids == PAD, pos >= docs.lengths[:, None])


def test_lengths_uniform_on_closed_range(default_docs):
    lengths = default_docs.lengths
    n = len(lengths)
    assert int(lengths.min()) == 100 and int(lengths.max()) == 150  # P(an end is never hit) = (50/51)^5000 ≈ 0
    counts = torch.bincount(lengths - 100, minlength=51).double()
    assert len(counts) == 51
    # UniformInt[100, 150]: mean 125, variance (51² - 1)/12; 5 standard errors on the mean
    var = (51**2 - 1) / 12
    assert abs(float(lengths.double().mean()) - 125) < 5 * math.sqrt(var / n)
    # a uniform law has kurtosis ≈ 1.8, so SE(sample variance) ≈ var·sqrt((1.8 − 1)/n)
    assert abs(float(lengths.double().var()) - var) < 5 * var * math.sqrt(0.8 / n)
    # each of the 51 values has probability 1/51: per-bin binomial z-scores, 5 SE (Bonferroni over 51 bins is fine)
    p = 1 / 51
    assert ((counts - n * p).abs() / math.sqrt(n * p * (1 - p))).max() < 5


def _expected_topics_hit(alpha: float, t: int, lengths: range) -> float:
    """E[# topics with ≥1 token] = T·(1 - E_N E[(1-θ_1)^N]), θ_1 ~ Beta(α, (T-1)α):
    E[(1-θ)^N] = B(α, β+N)/B(α, β) = Γ(β+N)Γ(α+β)/(Γ(β)Γ(α+β+N)) with β = (T-1)α."""
    b = (t - 1) * alpha
    miss = [
        math.exp(math.lgamma(b + n) + math.lgamma(alpha + b) - math.lgamma(b) - math.lgamma(alpha + b + n))
        for n in lengths
    ]
    return t * (1 - sum(miss) / len(miss))


def test_topics_per_document_match_theory_and_spec(default_docs):
    docs = default_docs
    n = docs.ids.shape[0]
    topic_of = (docs.ids - NUM_SPECIALS) // 10  # word id → its topic (disjoint default topics)
    words = docs.ids >= NUM_SPECIALS
    counts = torch.zeros(n, 10, dtype=torch.float64)
    counts.scatter_add_(1, topic_of.clamp_min(0), words.double())
    assert torch.equal(counts.sum(1), docs.lengths.double())
    share = counts / docs.lengths[:, None]
    hit = (counts > 0).sum(1).double()
    big = (share >= 0.05).sum(1).double()
    dominant = share.max(1).values

    # Independent reference: numpy's Dirichlet and multinomial, 200k documents.
    rng = np.random.default_rng(2024)
    m = 200_000
    lens = rng.integers(100, 151, size=m)
    ref = rng.multinomial(lens, rng.dirichlet([0.1] * 10, size=m))
    ref_share = ref / lens[:, None]
    ref_stats = {
        "hit": (ref > 0).sum(1),
        "big": (ref_share >= 0.05).sum(1),
        "dominant": ref_share.max(1),
    }
    ours = {"hit": hit.numpy(), "big": big.numpy(), "dominant": dominant.numpy()}
    for key, ref_x in ref_stats.items():
        x = ours[key]
        se = math.sqrt(x.var() / n + ref_x.var() / m)  # SE of the difference of the two sample means
        assert abs(x.mean() - ref_x.mean()) < 5 * se, key

    # The number of topics hit also has an exact expectation.
    exact = _expected_topics_hit(0.1, 10, range(100, 151))
    assert abs(hit.mean() - exact) < 5 * math.sqrt(hit.var() / n)
    assert abs(exact - 4.2) < 0.05  # the spec's figure, rounded to one decimal
    # Spec §1: 4.2 topics hit, 2.7 with ≥5% of the tokens, dominant topic 67%, each rounded, plus 5 SE.
    assert abs(hit.mean() - 4.2) < 0.05 + 5 * math.sqrt(hit.var() / n)
    assert abs(big.mean() - 2.7) < 0.05 + 5 * math.sqrt(big.var() / n)
    assert abs(dominant.mean() - 0.67) < 0.005 + 5 * math.sqrt(dominant.var() / n)


def test_word_counts_follow_each_documents_theta(default_docs):
    """Given θ_d, the words of document d are i.i.d. from μ_d = θ_d·Φ: the statistic
    S = Σ_d Σ_w (n_dw − N_d μ_dw)·μ_dw has mean 0 and variance Σ_d N_d (Σ μ³ − (Σ μ²)²) (multinomial covariance).
    It is far from 0 if the returned θ is not the one the words were drawn from (e.g. shuffled between documents)."""
    docs = default_docs
    n = docs.ids.shape[0]
    mu = docs.theta @ topic_word_matrix(DataConfig())
    counts = torch.zeros(n, 100 + NUM_SPECIALS, dtype=torch.float64)
    counts.scatter_add_(1, docs.ids, torch.ones_like(docs.ids, dtype=torch.float64))
    counts = counts[:, NUM_SPECIALS:]
    N = docs.lengths.double()
    s = ((counts - N[:, None] * mu) * mu).sum()
    var = (N * ((mu**3).sum(1) - (mu**2).sum(1) ** 2)).sum()
    assert abs(float(s)) < 5 * math.sqrt(float(var))
    # and the shuffled alternative is indeed detected by the same statistic
    mu_wrong = mu.roll(1, 0)
    s_wrong = ((counts - N[:, None] * mu_wrong) * mu_wrong).sum()
    assert abs(float(s_wrong)) > 20 * math.sqrt(float(var))
    # θ is a Dirichlet(0.1) draw: rows on the simplex
    assert torch.allclose(docs.theta.sum(1), torch.ones(n, dtype=torch.float64))


def test_word_frequencies_given_fixed_theta(monkeypatch):
    """Fix θ for every document (by replacing the mixture sampler) and compare word frequencies with θ·Φ on a
    non-trivial Φ (unequal sizes, overlap, Zipf)."""
    cfg = DataConfig(num_topics=3, topic_sizes=[3, 4, 5], overlap=1, word_dist="zipf", zipf_exponent=1.2)
    theta = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)

    def fixed(cfg_, n, gen, device="cpu"):
        return theta.expand(n, -1).clone()

    monkeypatch.setattr(lda, "sample_mixtures", fixed)
    docs = sample_documents(cfg, 2000, generator(3, "fixed-theta"))
    assert torch.equal(docs.theta, theta.expand(2000, -1))
    # μ = θ·Φ written out by hand: topic t owns its block and the first word of the next block, Zipf weights
    blocks = [[0, 1, 2, 3], [3, 4, 5, 6, 7], [7, 8, 9, 10, 11, 0]]
    mu = torch.zeros(12, dtype=torch.float64)
    for t, words in enumerate(blocks):
        w = torch.arange(1, len(words) + 1, dtype=torch.float64) ** -1.2
        mu[words] += theta[t] * w / w.sum()
    counts = torch.bincount(docs.ids.flatten(), minlength=12 + NUM_SPECIALS)[NUM_SPECIALS:].double()
    total = float(docs.lengths.sum())
    assert counts.sum() == total
    # per-word binomial z-scores, 5 SE (Bonferroni over 12 words)
    z = (counts - total * mu) / torch.sqrt(total * mu * (1 - mu))
    assert z.abs().max() < 5


def test_tau_mixtures_and_documents():
    t, tau, n = 10, 3, 5000
    cfg = DataConfig(mixture="tau", tau=tau, num_topics=t)
    theta = sample_mixtures(cfg, n, generator(4, "tau"))
    assert torch.equal((theta > 0).sum(1), torch.full((n,), tau))
    assert torch.equal(theta[theta > 0], torch.full((n * tau,), 1 / tau, dtype=torch.float64))
    # topics chosen uniformly: each topic present w.p. τ/T, each pair w.p. τ(τ-1)/(T(T-1)); binomial z < 5
    on = (theta > 0).double()
    p1 = tau / t
    assert ((on.mean(0) - p1).abs() / math.sqrt(p1 * (1 - p1) / n)).max() < 5
    pairs = (on.T @ on / n)[~torch.eye(t, dtype=torch.bool)]
    p2 = tau * (tau - 1) / (t * (t - 1))
    assert ((pairs - p2).abs() / math.sqrt(p2 * (1 - p2) / n)).max() < 5

    docs = sample_documents(cfg, 2000, generator(5, "tau-docs"))
    topic_of = (docs.ids - NUM_SPECIALS) // 10
    words = docs.ids >= NUM_SPECIALS
    counts = torch.zeros(2000, t, dtype=torch.float64).scatter_add_(1, topic_of.clamp_min(0), words.double())
    chosen = docs.theta > 0
    assert not (counts[~chosen] > 0).any()  # words only from the document's τ topics
    # P(a chosen topic gets no token) ≤ (2/3)^100 ≈ 2e-18: all τ topics are hit
    assert torch.equal((counts > 0).sum(1), torch.full((2000,), tau))
    # each chosen topic holds a 1/τ share: given the document, the count of its lowest-numbered chosen topic is
    # Binomial(N_d, 1/τ); summed over documents, mean Σ N_d/τ and variance Σ N_d (1/τ)(1 - 1/τ); 5 SE.
    first = torch.stack([counts[d][chosen[d]][0] for d in range(2000)])
    total = float(docs.lengths.sum())
    assert abs(float(first.sum()) - total / tau) < 5 * math.sqrt(total * (1 / tau) * (1 - 1 / tau))


def test_sample_documents_is_seeded():
    cfg = DataConfig(doc_len_min=20, doc_len_max=30)
    a = sample_documents(cfg, 50, generator(9, "docs", 1))
    b = sample_documents(cfg, 50, generator(9, "docs", 1))
    c = sample_documents(cfg, 50, generator(9, "docs", 2))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.lengths, b.lengths) and torch.equal(a.theta, b.theta)
    assert not torch.equal(a.ids, c.ids) and not torch.equal(a.theta, c.theta)
