"""MLM corruption (docs/topic-structure.md §2): ``corrupt`` on finite documents and ``population_batch``, its N → ∞
limit.

Rates are compared with their probabilities at five binomial standard errors; exact properties (which positions are
keys, which can be selected) are checked position by position.
"""

from __future__ import annotations

import math

import pytest
import torch

from toyformer.random import generator
from toyformer.tasks import validate
from toyformer.topic.config import END, MASK, NUM_SPECIALS, PAD, START, DataConfig, MaskingConfig
from toyformer.topic.experiment import build_model
from toyformer.topic.lda import sample_documents, sample_mixtures
from toyformer.topic.losses import model_loss
from toyformer.topic.masking import corrupt, population_batch

N_IDS = 104


def _within(count: float, n: float, p: float, k: float = 5.0) -> bool:
    """|count/n − p| within k binomial standard errors."""
    return abs(count / n - p) <= k * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def docs():
    return sample_documents(DataConfig(), 2000, generator(0, "mask-docs"))


@pytest.fixture(scope="module")
def corrupted(docs):
    return corrupt(docs.ids, MaskingConfig(), N_IDS, generator(0, "mask"))


def test_selection_rate_and_specials(docs, corrupted):
    ids, batch = docs.ids, corrupted
    selected = batch.weight > 0
    is_word = ids >= NUM_SPECIALS
    assert not (selected & ~is_word).any()  # PAD/START/END are never selected
    n_words = int(is_word.sum())  # ≈ 250k word positions
    # Re-drawing rows with no selection conditions on ≥1 selected; P(none) = 0.85^100 ≈ 1e-7 per document, so the
    # rate is 0.15 up to a negligible bias. 5 binomial SE ≈ 0.0036.
    assert _within(int(selected.sum()), n_words, 0.15)
    # selection does not depend on the word: the rate among words of the first and of the last topic agree
    first, last = is_word & (ids < NUM_SPECIALS + 10), ids >= NUM_SPECIALS + 90
    assert _within(int((selected & first).sum()), int(first.sum()), 0.15)
    assert _within(int((selected & last).sum()), int(last.sum()), 0.15)


def test_labels_weight_and_untouched_positions(docs, corrupted):
    ids, batch = docs.ids, corrupted
    assert torch.equal(batch.labels, ids)  # labels are the original ids
    assert batch.weight.dtype == torch.float32
    assert set(batch.weight.unique().tolist()) <= {0.0, 1.0}
    selected = batch.weight > 0
    assert torch.equal(batch.ids[~selected], ids[~selected])  # only selected positions may change
    assert batch.ids.shape == ids.shape and batch.key_bias.shape == ids.shape


def test_mask_random_keep_shares(docs, corrupted):
    ids, batch = docs.ids, corrupted
    selected = batch.weight > 0
    n = int(selected.sum())  # ≈ 37k selected positions
    inp, orig = batch.ids[selected], ids[selected]
    became_mask = inp == MASK
    changed = ~became_mask & (inp != orig)
    same = inp == orig
    # [MASK] with 0.8, plus a random draw of id 1 (0.1/104). A random id equals the original with prob 1/104, so
    # "changed to another token" has probability 0.1·(1 − 1/104) and "unchanged" 0.1 + 0.1/104.
    assert _within(int(became_mask.sum()), n, 0.8 + 0.1 / N_IDS)
    assert _within(int(changed.sum()), n, 0.1 * (1 - 1 / N_IDS))
    assert _within(int(same.sum()), n, 0.1 + 0.1 / N_IDS)
    # the official pool is all 104 ids: specials PAD/START/END appear at selected positions, with prob 0.1·3/104
    special = (inp == PAD) | (inp == START) | (inp == END)
    assert _within(int(special.sum()), n, 0.1 * 3 / N_IDS)


def test_random_pool_words(docs):
    ids = docs.ids
    batch = corrupt(ids, MaskingConfig(random_pool="words"), N_IDS, generator(1, "mask"))
    selected = batch.weight > 0
    inp, orig = batch.ids[selected], ids[selected]
    assert ((inp == MASK) | (inp >= NUM_SPECIALS)).all()  # no PAD/START/END from the random pool
    new_special = (batch.ids < NUM_SPECIALS) & (batch.ids != MASK) & (batch.ids != ids)
    assert not new_special.any()  # no special token appears where it was not before, except [MASK]
    n = int(selected.sum())
    # random ids are uniform over the 100 words: P(changed) = 0.1·(1 − 1/100), P(unchanged) = 0.1 + 0.1/100
    assert _within(int(((inp != MASK) & (inp != orig)).sum()), n, 0.1 * (1 - 1 / 100))
    assert _within(int((inp == orig).sum()), n, 0.1 + 0.1 / 100)
    assert _within(int((inp == MASK).sum()), n, 0.8)


def test_every_document_gets_a_selection_with_tiny_select_prob():
    # 3..6 words per document and p_m = 0.01: without the re-draw ~95% of documents would have no selection.
    data = DataConfig(doc_len_min=3, doc_len_max=6)
    ids = sample_documents(data, 2000, generator(2, "docs")).ids
    p, q = 0.01, 0.99
    batch = corrupt(ids, MaskingConfig(select_prob=p), N_IDS, generator(2, "mask"))
    selected = batch.weight > 0
    assert (selected.sum(1) >= 1).all()
    assert not (selected & (ids < NUM_SPECIALS)).any()
    # Given ≥ 1 selection among N words, P(≥ 2 | ≥ 1) = (1 − q^N − N p q^(N−1)) / (1 − q^N) (≈ 2%).
    # The number of such documents is a sum of independent Bernoullis: mean Σ P_d, variance ≤ Σ P_d; 5 SE (+1).
    lengths = (ids >= NUM_SPECIALS).sum(1)
    p_two = [(1 - q**n - n * p * q ** (n - 1)) / (1 - q**n) for n in lengths.tolist()]
    expected = sum(p_two)
    assert abs(int((selected.sum(1) >= 2).sum()) - expected) < 5 * math.sqrt(expected) + 1
    # A single selected position is uniform over the words of its document (by symmetry): its rank among 6 words.
    six = (lengths == 6) & (selected.sum(1) == 1)
    pos = selected[six].float().argmax(1) - 1  # word rank 0..5 (position 0 is START)
    m = int(six.sum())
    counts = torch.bincount(pos, minlength=6)
    assert len(counts) == 6 and m > 300
    assert all(_within(int(c), m, 1 / 6) for c in counts)


def test_redraw_samples_the_conditional_law():
    """The re-draw is rejection sampling of whole rows, so the number selected follows Binomial(N, p) conditioned on
    ≥ 1. With N = 2, p = 0.3: P(2 | ≥1) = 0.09 / 0.51."""
    n = 20_000
    ids = torch.full((n, 2), NUM_SPECIALS + 7)
    batch = corrupt(ids, MaskingConfig(select_prob=0.3), N_IDS, generator(3, "mask"))
    k = (batch.weight > 0).sum(1)
    assert (k >= 1).all()
    assert _within(int((k == 2).sum()), n, 0.09 / 0.51)
    # and a row with no words at all is left alone (no infinite re-draw)
    empty = torch.tensor([[START, END, PAD, PAD], [START, NUM_SPECIALS, END, PAD]])
    out = corrupt(empty, MaskingConfig(select_prob=0.3), N_IDS, generator(4, "mask"))
    assert out.weight[0].sum() == 0 and out.weight[1].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_key_bias_drop_and_keep(docs):
    ids = docs.ids
    for drop in (True, False):
        batch = corrupt(ids, MaskingConfig(drop_masked_keys=drop), N_IDS, generator(5, "mask"))
        selected = batch.weight > 0
        not_key = (ids == PAD) | (selected if drop else torch.zeros_like(selected))
        assert torch.equal(torch.isneginf(batch.key_bias), not_key)
        assert (batch.key_bias[~not_key] == 0).all()
        assert batch.key_bias.dtype == torch.float32


def test_key_bias_never_leaves_a_document_without_keys():
    # Without START/END and with p_m = 1 every word is selected: dropping them would leave no key at all, so the
    # non-PAD positions stay keys (documented fallback).
    ids = torch.tensor([[4, 5, 6, PAD], [7, 8, PAD, PAD]])
    batch = corrupt(ids, MaskingConfig(select_prob=1.0), N_IDS, generator(6, "mask"))
    assert torch.equal(batch.weight > 0, ids != PAD)
    assert torch.equal(torch.isneginf(batch.key_bias), ids == PAD)


def test_corrupt_is_seeded(docs):
    ids = docs.ids[:100]
    a = corrupt(ids, MaskingConfig(), N_IDS, generator(7, "mask"))
    b = corrupt(ids, MaskingConfig(), N_IDS, generator(7, "mask"))
    c = corrupt(ids, MaskingConfig(), N_IDS, generator(8, "mask"))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.weight, b.weight)
    assert not torch.equal(a.weight, c.weight)


# --------------------------------------------------------------------------------------------------------------
# population mode


def _mu_by_hand(theta: torch.Tensor) -> torch.Tensor:
    """μ over the 104 ids for the default disjoint uniform topics: word k (id k+4) has θ_{k // 10}/10."""
    mu = torch.zeros(theta.shape[0], N_IDS, dtype=torch.float64)
    for k in range(100):
        mu[:, NUM_SPECIALS + k] = theta[:, k // 10] / 10
    return mu


@pytest.mark.parametrize("pool", ["all", "words"])
def test_population_batch_structure(pool):
    data, masking = DataConfig(), MaskingConfig(random_pool=pool)
    theta = sample_mixtures(data, 16, generator(9, "pop"))
    batch = population_batch(theta, data, masking)
    mu = _mu_by_hand(theta)
    assert torch.equal(batch.ids, torch.arange(N_IDS).expand(16, -1))
    assert batch.labels is None and batch.weight is None
    # key_bias = log μ on the words, -inf on the specials
    assert torch.isneginf(batch.key_bias[:, :NUM_SPECIALS]).all()
    assert torch.allclose(batch.key_bias[:, NUM_SPECIALS:].double(), mu[:, NUM_SPECIALS:].log(), rtol=1e-5)
    soft = batch.soft.double()
    assert soft.shape == (16, N_IDS, N_IDS)
    assert torch.allclose(soft.sum((1, 2)), torch.ones(16, dtype=torch.float64), atol=1e-6)
    pool_size = N_IDS if pool == "all" else 100
    in_pool_mask = 1 / pool_size if pool == "all" else 0.0  # [MASK] can also be a random draw of id 1
    assert torch.allclose(soft[:, MASK, :].sum(-1), torch.full((16,), 0.8 + 0.1 * in_pool_mask, dtype=torch.float64))
    # a word query w with target y: kept (0.1·μ_w if y = w) + random draw of w (0.1·μ_y/|pool|)
    w, y = NUM_SPECIALS + 13, NUM_SPECIALS + 17  # same topic (1), different words
    assert torch.allclose(soft[:, w, w], 0.1 * mu[:, w] + 0.1 * mu[:, w] / pool_size, rtol=1e-5)
    assert torch.allclose(soft[:, w, y], 0.1 * mu[:, y] / pool_size, rtol=1e-5)
    # the target marginal is μ, and specials are never targets
    assert torch.allclose(soft.sum(1), mu, atol=1e-7)
    # specials as queries only through the random pool
    start_mass = soft[:, START, :].sum(-1)
    assert torch.allclose(start_mass, torch.full((16,), 0.1 / N_IDS if pool == "all" else 0.0, dtype=torch.float64))


def test_population_soft_targets_match_finite_corruption():
    """For one θ, the per-document joint law of (input id at a selected position, original id) under ``corrupt``
    converges to ``soft``. 400 documents of 1000 words give ~60k selected positions; each cell is a proportion, so
    its SE is at most sqrt(p(1-p)/n)."""
    data = DataConfig()
    theta = torch.zeros(1, 10, dtype=torch.float64)
    theta[0, [1, 4, 7]] = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    mu = _mu_by_hand(theta)[0]
    gen = generator(10, "finite")
    n_docs, length = 400, 1000
    ids = torch.multinomial(mu.float().expand(n_docs, -1), length, replacement=True, generator=gen)
    batch = corrupt(ids, MaskingConfig(), N_IDS, gen)
    selected = batch.weight > 0
    pairs = batch.ids[selected] * N_IDS + ids[selected]
    joint = torch.bincount(pairs, minlength=N_IDS * N_IDS).double().reshape(N_IDS, N_IDS)
    n = float(joint.sum())
    emp = joint / n
    soft = population_batch(theta, data, MaskingConfig()).soft[0].double()
    se = torch.sqrt(soft * (1 - soft) / n)
    assert ((emp - soft).abs() <= 5 * se + 1e-12).all()  # cells with soft = 0 must be empty
    assert float(soft.sum()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("kind", ["squared", "ce"])
def test_population_loss_is_the_long_document_limit(kind):
    """The loss of a fixed linear map (regime B: uniform attention, logits = c·W + b) on the population batch is the
    N → ∞ limit of its average loss on finite documents with the same θ (no START/END).

    On a finite document c is the empirical distribution of the n keys (unselected words, i.i.d. from μ and
    independent of the targets), so E c = μ and Cov c = Σ/n with Σ = diag μ − μμᵀ. The finite-N bias is then
    known: exactly tr(WᵀΣW)/(nV) for the squared loss (E‖f‖² = ‖E f‖² + tr Cov f), and ½·tr(H WᵀΣW)/n to second
    order for cross-entropy (H = diag p − ppᵀ, the Hessian of logsumexp). Each document's loss is corrected by its
    own n, and the mean over 60 independent documents must match the population loss within 5 SE."""
    cfg = validate({"model": {"preset": "B"}, "train": {"loss": kind}})
    model = build_model(cfg)
    attn = model.blocks[0].attn
    with torch.no_grad():
        g = generator(11, "weights")
        attn.W_V.copy_(torch.randn(attn.W_V.shape, generator=g))
        attn.b_V.copy_(torch.randn(attn.b_V.shape, generator=g))
    w, b = attn.W_V[0].detach().double(), attn.b_V[0].detach().double()
    theta = torch.zeros(1, 10, dtype=torch.float64)
    theta[0, [0, 3, 8]] = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    mu = _mu_by_hand(theta)[0]
    cov_f = w.T @ (torch.diag(mu) - torch.outer(mu, mu)) @ w  # n·Cov(f)
    if kind == "squared":
        bias_numerator = float(torch.trace(cov_f)) / N_IDS
    else:
        p = torch.softmax(mu @ w + b, 0)
        bias_numerator = 0.5 * float(torch.trace((torch.diag(p) - torch.outer(p, p)) @ cov_f))
    with torch.no_grad():
        population = float(model_loss(model, population_batch(theta, cfg.data, cfg.masking), kind))
        gen = generator(12, "long-docs")
        n_docs = 60
        ids = torch.multinomial(mu.float().expand(n_docs, -1), 2000, replacement=True, generator=gen)
        batch = corrupt(ids, cfg.masking, N_IDS, gen)
        losses = torch.tensor(
            [float(model_loss(model, batch.slice(d, d + 1), kind)) for d in range(n_docs)], dtype=torch.float64
        )
    n_keys = torch.isfinite(batch.key_bias).sum(1).double()
    corrected = losses - bias_numerator / n_keys
    se = float(corrected.std() / math.sqrt(n_docs))
    assert abs(float(corrected.mean()) - population) < 5 * se
    assert se < 0.005 * abs(population)  # the comparison is sharp enough to mean something
    # The population keys really are weighted by μ: with every word weighted alike (key_bias 0 on words) the
    # squared loss moves by far more than the tolerance.
    if kind == "squared":
        flat = population_batch(theta, cfg.data, cfg.masking)
        flat.key_bias = torch.where(torch.isfinite(flat.key_bias), 0.0, flat.key_bias)
        with torch.no_grad():
            assert abs(float(model_loss(model, flat, kind)) - population) > 20 * se
