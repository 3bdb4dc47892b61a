"""Attention statistics (docs/topic-structure.md §6) against a double loop over token pairs, and the topic model
(docs/topic-structure.md §4) against a plain re-computation of its maths from its weights.

The reference forward pass follows the module docstring of models/topic.py literally, in float64, with every
position a query and explicit (B, H, L, L) attention: h = W_E[ids]; s = (h W_Q)(h W_K)ᵀ/√d_head + key_bias;
α = softmax(s); out = Σ_h α (h W_V + b_V) W_O; logits = out W_U + b_U; plus residual / LayerNorm / GELU FFN when the
switches are on. The model's fast path (one-hot tables, per-document mixtures, query_index) must agree with it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from toyformer.random import generator
from toyformer.tasks import validate
from toyformer.topic import model as topic_model
from toyformer.topic.config import END, MASK, NUM_SPECIALS, PAD, START, DataConfig, MaskingConfig, num_ids
from toyformer.topic.experiment import build_model
from toyformer.topic.lda import id_topics, sample_documents
from toyformer.topic.losses import model_loss, weighted_positions
from toyformer.topic.masking import corrupt
from toyformer.topic.probes import CircuitStructure, attention_class_means
from toyformer.topic.theory import word_pair_classes

# --------------------------------------------------------------------------------------------------------------
# attention class means


def _brute_force_classes(pattern, ids, z, rows=None):
    """Pooled mean of pattern·n/100 per class over all valid ordered pairs (queries: every valid position, or the
    valid ones among ``rows`` (B, Lq), the rows of ``pattern``), by explicit loops."""
    sums, counts = {}, {}
    b, n = ids.shape
    for d in range(b):
        valid = [i for i in range(n) if int(ids[d, i]) != PAD]
        scale = len(valid) / 100
        queries = valid if rows is None else [int(i) for i in rows[d] if int(ids[d, i]) != PAD]
        for r, i in enumerate(queries):
            for j in valid:
                ti = {t for t in range(z.shape[1]) if z[ids[d, i], t]}
                tj = {t for t in range(z.shape[1]) if z[ids[d, j], t]}
                if not ti or not tj:
                    name = "empty"
                elif int(ids[d, i]) == int(ids[d, j]):
                    name = "same_token"
                elif ti & tj:
                    name = "same_topic"
                else:
                    name = "diff_topic"
                row = 0 if pattern.shape[1] == 1 else (i if rows is None else r)
                sums[name] = sums.get(name, 0.0) + float(pattern[d, row, j]) * scale
                counts[name] = counts.get(name, 0) + 1
    return {f"attn_{k}": sums[k] / counts[k] for k in sums}, counts


def _random_documents(gen, z, b=3, length=12):
    """Documents START tokens END PAD…, the tokens drawn from [MASK] and a handful of words (repeats likely)."""
    n_ids = z.shape[0]
    ids = torch.full((b, length), PAD)
    for d in range(b):
        n_tokens = int(torch.randint(4, length - 1, (1,), generator=gen))
        pool = torch.tensor([MASK] + list(range(NUM_SPECIALS, n_ids)))
        tokens = pool[torch.randint(0, len(pool), (n_tokens,), generator=gen)]
        ids[d, : n_tokens + 2] = torch.cat([torch.tensor([START]), tokens, torch.tensor([END])])
    return ids


@pytest.fixture
def overlapping_topics():
    # 3 topics of 3 words, each sharing its first word with the previous topic: topic sets {0,2}, {0}, {0}, {0,1}, …
    return id_topics(DataConfig(num_topics=3, words_per_topic=3, overlap=1))


@pytest.mark.parametrize("rows", ["per_query", "shared"])
def test_attention_class_means_brute_force(overlapping_topics, rows):
    z = overlapping_topics
    gen = generator(0, "attn-stats", 0 if rows == "per_query" else 1)
    ids = _random_documents(gen, z)
    b, n = ids.shape
    lq = n if rows == "per_query" else 1
    scores = torch.randn(b, lq, n, generator=gen) * 2
    scores = scores.masked_fill(ids[:, None, :] == PAD, float("-inf"))
    pattern = torch.softmax(scores, dim=-1)
    got = attention_class_means(pattern, ids, z)
    expected, counts = _brute_force_classes(pattern, ids, z)
    # the fixture exercises every class, intersecting topic sets included
    assert set(counts) == {"empty", "same_token", "same_topic", "diff_topic"}
    assert all(c >= 5 for c in counts.values())
    assert set(got) == set(expected)
    for k in expected:
        assert got[k] == pytest.approx(expected[k], rel=1e-5), k


def test_class_means_at_some_queries_are_those_rows_brute_force(overlapping_topics):
    """Class means over the rows of some query positions equal the brute force over the same rows, and differ from
    the all-rows statistic."""
    z = overlapping_topics
    ids = _random_documents(generator(9, "attn-rows"), z, b=4, length=30)
    n = (ids != PAD).sum(1, keepdim=True)
    rows = torch.arange(8)[None, :] * n // 8  # evenly spaced over each document's tokens
    scores = torch.randn(4, 30, 30, generator=generator(10, "attn-rows")).masked_fill(ids[:, None, :] == PAD, -1e9)
    pattern = torch.softmax(scores, -1).gather(1, rows[:, :, None].expand(-1, -1, 30))
    got = attention_class_means(pattern, ids, z, rows)
    want, _ = _brute_force_classes(pattern, ids, z, rows)
    assert set(got) == set(want) and all(got[k] == pytest.approx(want[k], rel=1e-5) for k in want)
    assert got != attention_class_means(torch.softmax(scores, -1), ids, z)  # not the all-rows statistic


def test_overlap_makes_topic_sets_intersect(overlapping_topics):
    """A hand-checked case. With T = 3, v = 3, overlap 1, topic t owns words 3t..3t+2 and word 3(t+1): the topic
    sets are w0 {0,2}, w1 {0}, w4 {1}, w6 {1,2}. In START w0 w6 w1 w4 END the word pairs are same-topic for
    (w0,w6), (w0,w1), (w6,w4) and different-topic for (w1,w4), (w0,w4), (w6,w1): 6 ordered pairs each; 4 same-token
    pairs (the diagonal); the 20 pairs with START/END are empty."""
    z = overlapping_topics
    w = [NUM_SPECIALS + k for k in (0, 6, 1, 4)]
    ids = torch.tensor([[START, *w, END]])
    pattern = torch.zeros(1, 6, 6)
    pattern[0, 1, 2] = 1.0  # w0 → w6: same topic (topic 2, shared through the overlap)
    pattern[0, 2, 4] = 1.0  # w6 → w4: same topic (topic 1)
    pattern[0, 3, 4] = 1.0  # w1 → w4: different topics
    pattern[0, 4, 4] = 1.0  # w4 → itself: same token
    pattern[0, 0, 0] = pattern[0, 5, 5] = 1.0  # START, END: empty
    got = attention_class_means(pattern, ids, z)
    scale = 6 / 100
    assert got["attn_same_topic"] == pytest.approx(2 * scale / 6)
    assert got["attn_diff_topic"] == pytest.approx(1 * scale / 6)
    assert got["attn_same_token"] == pytest.approx(1 * scale / 4)
    assert got["attn_empty"] == pytest.approx(2 * scale / 20)


def test_uniform_attention_reads_one_hundredth(overlapping_topics):
    z = overlapping_topics
    ids = _random_documents(generator(2, "attn-stats"), z, b=4, length=15)
    valid = (ids != PAD).float()
    pattern = (valid / valid.sum(1, keepdim=True))[:, None, :].expand(-1, ids.shape[1], -1)
    got = attention_class_means(pattern, ids, z)
    assert len(got) == 4
    for k, value in got.items():
        assert value == pytest.approx(0.01, abs=1e-8), k
    # and the same from one shared row per document
    got = attention_class_means(pattern[:, :1], ids, z)
    assert all(value == pytest.approx(0.01, abs=1e-8) for value in got.values())


# --------------------------------------------------------------------------------------------------------------
# the model: fast path against the plain maths


def _randomise(model, gen):
    """O(1) attention scores and non-zero biases everywhere, so that every term of the forward pass matters. A frozen
    one-hot embedding stays the identity it always is (the model computes with that: see test_frozen_onehot_...)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "W_E" and model.blocks[0].attn.identity_table:
                continue
            fan_in = p.shape[-2] if p.ndim >= 2 else 1
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            if name.endswith(("W_Q", "W_K")):
                p.mul_(3.0)


@torch.no_grad()
def _reference(model, ids, key_bias):
    """logits (B, L, V) and patterns [(B, H, L, L)] in float64, straight from the weights."""
    x = model.W_E.double()[ids]
    if hasattr(model, "ln_embed"):  # parity: LN(W_E[ids] + token-type vector)
        ln = model.ln_embed
        x = F.layer_norm(x + model.type_vector.double(), x.shape[-1:], ln.weight.double(), ln.bias.double(), ln.eps)
    kb = key_bias.double()
    patterns = []
    for block in model.blocks:
        attn = block.attn
        w_v, b_v, w_o = attn.W_V.double(), attn.b_V.double(), attn.W_O.double()
        heads = w_v.shape[0]
        if attn.uniform:
            alpha = torch.softmax(kb, dim=-1)[:, None, None, :].expand(-1, heads, x.shape[1], -1)
        else:
            q = torch.einsum("bld,hde->bhle", x, attn.W_Q.double())
            k = torch.einsum("bld,hde->bhle", x, attn.W_K.double())
            scores = q @ k.transpose(-1, -2) / math.sqrt(w_v.shape[-1]) + kb[:, None, None, :]
            alpha = torch.softmax(scores, dim=-1)
        patterns.append(alpha)
        values = torch.einsum("bld,hde->bhle", x, w_v) + b_v[None, :, None, :]
        out = torch.einsum("bhle,hed->bld", alpha @ values, w_o)
        y = x + out if block.residual else out
        if block.ln is not None:
            ln = block.ln[0]
            y = F.layer_norm(y, y.shape[-1:], ln.weight.double(), ln.bias.double(), ln.eps)
        if block.ffn is not None:
            lin1, lin2 = block.ffn[0], block.ffn[2]
            hidden = F.gelu(y @ lin1.weight.double().T + lin1.bias.double())
            f = hidden @ lin2.weight.double().T + lin2.bias.double()
            y = y + f if block.residual else f
            if block.ln is not None:
                ln = block.ln[1]
                y = F.layer_norm(y, y.shape[-1:], ln.weight.double(), ln.bias.double(), ln.eps)
        x = y
    if model.decoder == "trained":
        logits = x @ model.W_U.double()
    elif model.decoder == "tied":
        logits = x @ model.W_E.double().T
    else:
        logits = x
    return logits + model.b_U.double(), patterns


MODELS = {
    "B": {"preset": "B"},
    "C": {"preset": "C"},
    "D": {"preset": "D"},
    "A": {"preset": "A"},
    "B-2-layers": {"preset": "B", "n_layers": 2},
    "B-residual-2-layers": {"preset": "B", "residual": True, "n_layers": 2},
    "multihead-trained": {
        "embedding": "trained",
        "d_model": 32,
        "n_heads": 4,
        "d_head": 6,
        "output": "trained",
        "decoder": "trained",
        "decoder_bias": True,
    },
    "standard-block-2-layers": {
        "embedding": "trained",
        "d_model": 32,
        "n_heads": 4,
        "output": "trained",
        "decoder": "trained",
        "residual": True,
        "layer_norm": True,
        "ffn": True,
        "n_layers": 2,
    },
    "onehot-residual-2-layers": {"preset": "D", "residual": True, "n_layers": 2},
    "onehot-2-heads": {"preset": "D", "n_heads": 2},  # W^O = I over two heads: their outputs side by side
    "official-parity": {
        "embedding": "trained",
        "embedding_norm": True,
        "output": "trained",
        "decoder": "trained",
        "decoder_bias": True,
    },
}


@pytest.fixture(scope="module")
def inputs():
    data = {"doc_len_min": 6, "doc_len_max": 12}
    ids = sample_documents(DataConfig(**data), 5, generator(3, "model-docs")).ids
    batch = corrupt(ids, MaskingConfig(), 104, generator(3, "model-mask"))
    assert (batch.ids == MASK).any() and (batch.ids == PAD).any() and torch.isneginf(batch.key_bias).any()
    return data, batch


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("bias", ["mask", "weighted"])
@pytest.mark.parametrize("mixing", ["auto", "histogram", "gather", "inputs"])
@pytest.mark.parametrize("scoring", ["auto", "pairs", "vectors"])
def test_fast_path_equals_plain_attention(name, bias, mixing, scoring, inputs, monkeypatch):
    """Every model against the attention written out, with layer 0 mixing its values each of the three ways (where
    it reads an embedding table) and scoring its pairs each of the two ways, and by the cheapest; the frozen one-hot
    (W_E = I) and identity-output shortcuts of the presets included, and regime C's distinct value rows."""
    if mixing != "auto":
        forced = lambda self, table, length, *rest: "inputs" if table is None or length == 1 else mixing  # noqa: E731
        monkeypatch.setattr("toyformer.topic.model.Attention.mixing", forced)
    if scoring != "auto":
        monkeypatch.setattr("toyformer.topic.model.Attention.scoring", lambda self, *sizes: scoring)
    data, batch = inputs
    cfg = validate({"model": MODELS[name], "data": data})
    model = build_model(cfg)
    _randomise(model, generator(4, name))
    key_bias = batch.key_bias.clone()
    if bias == "weighted":  # finite, unequal key weights, as population mode's log μ
        key_bias = key_bias + torch.randn(key_bias.shape, generator=generator(5, "kb"))
    expected, expected_patterns = _reference(model, batch.ids, key_bias)
    b, n = batch.ids.shape
    scale = float(expected.abs().max())
    assert scale > 0.1  # the comparison is not between zeros

    with torch.no_grad():
        logits, patterns = model(batch.ids, key_bias)
    assert logits.shape[0] == b and logits.shape[1] in (1, n) and logits.shape[2] == num_ids(cfg.data)
    if logits.shape[1] == 1:  # every position alike: only allowed when attention is uniform and there is no residual
        assert cfg.model.attention == "uniform" and not cfg.model.residual
        # and then the reference positions are indeed all equal
        assert torch.allclose(expected, expected[:, :1].expand_as(expected), atol=1e-9 * scale)
    assert torch.allclose(logits.double().expand(b, n, -1), expected, atol=2e-5 * scale, rtol=1e-4)
    assert len(patterns) == cfg.model.n_layers
    for k, (got, ref) in enumerate(zip(patterns, expected_patterns, strict=True)):
        if k > 0 and got.shape[-1] == 1:
            # documented: after a uniform layer without residual all positions are equal and stand as one
            # position, attended with weight one (the reference's own layer input is indeed constant over positions)
            assert cfg.model.attention == "uniform" and not cfg.model.residual
            assert torch.equal(got, torch.ones_like(got))
            continue
        assert torch.allclose(got.double().expand_as(ref), ref, atol=2e-5)

    # a subset of query positions (some of them PAD positions: allowed, they are just not used by the loss)
    query_index = torch.randint(0, n, (b, 5), generator=generator(6, "q"))
    with torch.no_grad():
        logits_q, patterns_q = model(batch.ids, key_bias, query_index)
    picked = expected.gather(1, query_index[..., None].expand(-1, -1, expected.shape[-1]))
    assert logits_q.shape[1] in (1, 5)
    assert torch.allclose(logits_q.double().expand(b, 5, -1), picked, atol=2e-5 * scale, rtol=1e-4)
    last = expected_patterns[-1]
    picked_pattern = last.gather(2, query_index[:, None, :, None].expand(-1, last.shape[1], -1, n))
    if patterns_q[-1].shape[-1] == n:
        assert torch.allclose(patterns_q[-1].double().expand_as(picked_pattern), picked_pattern, atol=2e-5)


def _regime_c(inputs, seed: int = 4):
    """A regime-C model (one-hot W_E, frozen topic-block W^V) with O(1) attention scores."""
    data, batch = inputs
    model = build_model(validate({"model": {"preset": "C"}, "data": data}))
    gen = generator(seed, "regime-c")
    with torch.no_grad():
        for w in (model.blocks[0].attn.W_Q, model.blocks[0].attn.W_K):
            w.copy_(3.0 * torch.randn(w.shape, generator=gen) / math.sqrt(w.shape[-2]))
    return model, batch


@pytest.mark.parametrize("scoring", ["pairs", "vectors"])
@pytest.mark.parametrize("mixing", ["histogram", "gather", "inputs"])
def test_regime_c_paths_give_the_literal_values_and_gradients(scoring, mixing, inputs, monkeypatch):
    """Regime C mixes its values over the topic-block W^V's few distinct rows: every way of scoring and mixing gives
    the written-out model's logits and its gradients for the trained W_Q and W_K."""
    monkeypatch.setattr("toyformer.topic.model.Attention.mixing", lambda self, *args: mixing)
    monkeypatch.setattr("toyformer.topic.model.Attention.scoring", lambda self, *sizes: scoring)
    model, batch = _regime_c(inputs)
    attn = model.blocks[0].attn
    rows, row_of = attn.distinct_values(model.W_E)
    assert rows.shape[1] == 11  # ten topics' rows and the specials' zero row, of 104 ids
    assert torch.equal(rows[:, row_of], attn.W_V)
    b, n = batch.ids.shape
    index = torch.randint(0, n, (b, 5), generator=generator(6, "q"))
    weights = torch.randn(b, 5, num_ids(DataConfig()), generator=generator(7, "w"))

    logits, _ = model(batch.ids, batch.key_bias, index)
    grads = torch.autograd.grad((logits * weights).sum(), [attn.W_Q, attn.W_K])
    with torch.enable_grad():
        expected = _reference.__wrapped__(model, batch.ids, batch.key_bias)[0]
        expected = expected.gather(1, index[..., None].expand(-1, -1, expected.shape[-1]))
        expected_grads = torch.autograd.grad((expected * weights.double()).sum(), [attn.W_Q, attn.W_K])
    assert torch.allclose(logits.double(), expected, atol=2e-5, rtol=1e-4)
    for got, ref in zip(grads, expected_grads, strict=True):
        assert float(ref.abs().max()) > 1e-3  # the gradients compared are not zeros
        assert torch.allclose(got.double(), ref.double(), atol=1e-5 * float(ref.abs().max()), rtol=1e-4)


def test_a_frozen_w_v_edited_in_place_is_read_again(inputs):
    """The distinct value rows are found again when the frozen W^V changes, even by an edit autograd never sees
    (``.data``); under ``unchanged()`` they are kept as found, as documented, and found again after it."""
    model, batch = _regime_c(inputs)
    attn = model.blocks[0].attn
    before, _ = model(batch.ids, batch.key_bias)
    attn.W_V.data[:, NUM_SPECIALS:, NUM_SPECIALS:] *= 2.0  # every word's value row doubled
    after, _ = model(batch.ids, batch.key_bias)
    expected, _ = _reference(model, batch.ids, batch.key_bias)
    assert torch.allclose(after.double(), expected, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(after, before, atol=1e-3)
    with model.unchanged():
        inside, _ = model(batch.ids, batch.key_bias)
        attn.W_V.data[:, NUM_SPECIALS:, NUM_SPECIALS:] /= 2.0
        kept, _ = model(batch.ids, batch.key_bias)
    assert torch.equal(inside, kept)
    assert torch.allclose(model(batch.ids, batch.key_bias)[0], before, atol=1e-6)


def test_a_probe_block_keeps_one_query_key_table_and_gives_the_same_numbers(inputs):
    """Under ``unchanged()`` without gradients the query-key table of every id pair is made once and read by every
    forward pass; the numbers are those of the passes outside it. With gradients nothing is kept."""
    model, batch = _regime_c(inputs)
    attn = model.blocks[0].attn
    halves = [slice(0, 2), slice(2, None)]
    with torch.no_grad():
        outside = [model(batch.ids[h], batch.key_bias[h])[0] for h in halves]
        with model.unchanged():
            inside = [model(batch.ids[h], batch.key_bias[h])[0] for h in halves]
            kept = attn.unchanged["qk"]
            assert kept.shape == (1, 104, 104)
    for a, b in zip(inside, outside, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert attn.unchanged is None
    with model.unchanged():
        logits, _ = model(batch.ids, batch.key_bias)
        assert "qk" not in attn.unchanged and logits.requires_grad


def test_circuit_reads_of_frozen_weights_follow_an_edit(inputs):
    """A circuit read of frozen weights is given again while they are equal to what it was read from, and read again
    once they differ (here by an edit autograd never sees)."""
    model, _ = _regime_c(inputs)
    probe = CircuitStructure(word_pair_classes(id_topics(DataConfig())))
    first = probe.measure(model)
    assert probe.measure(model) == first
    model.blocks[0].attn.W_V.data[:, NUM_SPECIALS : NUM_SPECIALS + 10, NUM_SPECIALS + 10 :] += 1.0  # topic 0 leaks
    edited = probe.measure(model)
    assert edited["wv_diff_topic"] > first["wv_diff_topic"] + 0.01
    assert edited["qk_same_topic"] == first["qk_same_topic"]  # the trained QK read is unchanged: same weights


@pytest.mark.parametrize("preset,identity", [("B", True), ("C", True), ("D", True), ("A", False)])
def test_frozen_onehot_embedding_is_the_identity_the_shortcut_assumes(preset, identity):
    """The shortcut W_E·W = W holds exactly when W_E is a frozen identity: one-hot and frozen, never trained."""
    cfg = validate({"model": {"preset": preset}})
    model = build_model(cfg)
    assert model.blocks[0].attn.identity_table == identity
    if identity:
        assert not model.W_E.requires_grad and torch.equal(model.W_E, torch.eye(len(model.W_E)))
    trained = validate({"model": {"preset": "D", "freeze": ["output", "decoder"]}})  # one-hot, but it learns
    assert not build_model(trained).blocks[0].attn.identity_table


@pytest.mark.parametrize(
    "name", ["A", "B", "C", "D", "B-2-layers", "multihead-trained", "official-parity", "onehot-2-heads"]
)
def test_circuits_equal_their_written_out_products(name):
    """The OV and QK circuits, which skip identity factors, against W_E · Π_l Σ_h W_V W_O · W_U and W_E W_Q W_Kᵀ
    W_Eᵀ / H multiplied out."""
    from toyformer.topic.probes import ov_circuit, qk_circuit

    model = build_model(validate({"model": MODELS[name]}))
    _randomise(model, generator(7, name))
    with torch.no_grad():
        table = model.embedding_table().double()
        ov = table
        for block in model.blocks:
            ov = ov @ torch.einsum("hde,hef->df", block.attn.W_V.double(), block.attn.W_O.double())
        ov = ov @ model.unembed().double()
        torch.testing.assert_close(ov_circuit(model).double(), ov, rtol=1e-4, atol=2e-5 * float(ov.abs().max()))
        attn = model.blocks[0].attn
        if attn.uniform:
            assert qk_circuit(model) is None
        else:
            qk = table @ torch.einsum("hde,hfe->df", attn.W_Q.double(), attn.W_K.double()) @ table.T / attn.W_Q.shape[0]
            torch.testing.assert_close(qk_circuit(model).double(), qk, rtol=1e-4, atol=2e-5 * float(qk.abs().max()))
        n = len(table)
        eye = torch.eye(n, dtype=torch.bool)
        same = (torch.rand(n, n, generator=generator(8, "classes")) < 0.3) & ~eye
        classes = {"same_word": eye, "same_topic": same, "diff_topic": ~same & ~eye}  # disjoint, as pair classes are
        out = CircuitStructure(classes).measure(model)
        unit = table / table.norm(dim=1, keepdim=True)
        assert out["emb_same_word"] == pytest.approx(float((table @ table.T).diagonal().mean()), rel=1e-5)
        assert out["emb_cos_same_topic"] == pytest.approx(float((unit @ unit.T)[same].mean()), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize(
    "model_cfg, d_model, heads, d_head",
    [
        ({"preset": "D"}, 104, 1, 104),
        ({"embedding": "trained", "d_model": 32, "n_heads": 4, "output": "trained", "decoder": "trained"}, 32, 4, 8),
        (
            {
                "embedding": "trained",
                "d_model": 32,
                "n_heads": 4,
                "d_head": 6,
                "output": "trained",
                "decoder": "trained",
            },
            32,
            4,
            6,
        ),
    ],
)
def test_weight_shapes(model_cfg, d_model, heads, d_head):
    model = build_model(validate({"model": model_cfg}))
    attn = model.blocks[0].attn
    assert tuple(model.W_E.shape) == (104, d_model)
    for w in (attn.W_Q, attn.W_K, attn.W_V):
        assert tuple(w.shape) == (heads, d_model, d_head)
    assert tuple(attn.b_V.shape) == (heads, d_head)
    assert tuple(attn.W_O.shape) == (heads, d_head, d_model)
    assert tuple(model.unembed().shape) == (d_model, 104)
    if model_cfg.get("decoder") == "trained":
        assert tuple(model.W_U.shape) == (d_model, 104)


def test_presets_start_as_the_spec_says():
    """Regime C freezes W^V to the topic-block 0/1 matrix; regime B starts W^V small; both read one-hot inputs."""
    c = build_model(validate({"model": {"preset": "C"}}))
    block = torch.zeros(104, 104)
    for i in range(100):
        for j in range(100):
            block[NUM_SPECIALS + i, NUM_SPECIALS + j] = float(i // 10 == j // 10)
    assert torch.equal(c.blocks[0].attn.W_V[0], block)
    assert not c.blocks[0].attn.W_V.requires_grad and c.blocks[0].attn.W_Q.requires_grad
    assert torch.equal(c.W_E, torch.eye(104)) and not c.W_E.requires_grad
    b = build_model(validate({"model": {"preset": "B"}}))
    assert b.blocks[0].attn.uniform and b.blocks[0].attn.W_V.requires_grad
    # 'small' init: centred N(0, 0.01²) over 104² = 10816 entries; SE(mean) = 0.01/sqrt(n), SE(sd) ≈ 0.01/sqrt(2n)
    w_v = b.blocks[0].attn.W_V.detach().double()
    assert abs(float(w_v.mean())) < 5 * 0.01 / math.sqrt(10816)
    assert abs(float(w_v.std()) - 0.01) < 5 * 0.01 / math.sqrt(2 * 10816)
    assert END == 3 and START == 2  # the layout the inputs above rely on


@pytest.mark.parametrize(
    "recipe, sets, padded",
    [
        ("topic/s3", [], True),
        ("topic/s3", ["train.loss='squared'", "masking.random_pool='all'"], True),
        ("topic/s2-population", [], False),  # every id a position, weighted by its probability: nothing to cut
    ],
)
def test_dev_loss_in_sorted_cut_parts_is_the_loss_of_the_whole_dev_set(recipe, sets, padded):
    """The dev loss read a few documents at a time, in order of length, each part cut after its longest document,
    is the loss of the whole dev split in one pass (weighted by the positions the loss reads)."""
    from toyformer import tasks
    from toyformer.topic.losses import model_loss
    from toyformer.topic.probes import DevLoss

    x = tasks.build(tasks.load(recipe, ["data.dev_docs=30", "theory.samples=10", "data.train_docs=40", *sets]))
    dev = x.stream.dev
    with torch.no_grad():
        expected = float(model_loss(x.model, dev, x.cfg.train.loss))
        probe = DevLoss(dev, x.cfg.train.loss, pairs=2000, width=2**30)
        assert probe.chunk < len(dev) // 3  # several parts
        cut = min(part.ids.shape[1] for part, _, _ in probe.parts) < dev.ids.shape[1]
        assert cut == padded  # parts cut where documents are padded
        got = probe.measure(x.model)["loss_dev"]
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["C", "D", "multihead-trained"])
def test_queries_with_one_id_are_computed_once(name, monkeypatch):
    """A document's queries with one id (an MLM loss's [MASK]ed positions, mostly) have one attention row, and its
    keys with one id one term of each softmax: computed once per id (the keys weighted by their count), the loss,
    its gradients, the logits and the patterns are those of every query and key computed. The loss on the weighted
    positions (padded with each document's first one, counted once) is the loss on all positions."""
    data = {"doc_len_min": 300, "doc_len_max": 400}
    ids = sample_documents(DataConfig(**data), 8, generator(7, "one-id-docs")).ids
    batch = corrupt(ids, MaskingConfig(), 104, generator(7, "one-id-mask"))
    model = build_model(validate({"model": MODELS[name], "data": data}))
    _randomise(model, generator(8, name))
    trained = [p for p in model.parameters() if p.requires_grad]
    index = weighted_positions(batch.weight)
    real, calls = {f: getattr(topic_model, f) for f in ("distinct_ids", "distinct_keys")}, []

    def spy(f):
        def call(*args):
            calls.append((f, real[f](*args)))
            return calls[-1][1]

        return call

    def run():
        loss = model_loss(model, batch, "ce")
        logits, patterns = model(batch.ids, batch.key_bias, index)
        return loss, torch.autograd.grad(loss, trained), logits, patterns[-1]

    for f in real:
        monkeypatch.setattr(f"toyformer.topic.model.{f}", spy(f))
    once = run()
    # the loss's queries and keys, the forward's queries (it keeps its pattern: every key)
    assert [f for f, _ in calls] == ["distinct_ids", "distinct_keys", "distinct_ids"]
    queries, keys = [out for f, out in calls if f == "distinct_ids"], calls[1][1]
    assert all(back is not None and 2 * q.shape[1] <= index.shape[1] for q, back in queries)
    assert keys is not None and 2 * keys[0].shape[1] <= ids.shape[1]
    monkeypatch.setattr("toyformer.topic.model.distinct_ids", lambda query_ids: (query_ids, None))
    monkeypatch.setattr("toyformer.topic.model.distinct_keys", lambda *args: None)
    every = run()
    torch.testing.assert_close(once[0], every[0], rtol=1e-6, atol=0)
    for a, b in zip(once[1], every[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(once[2], every[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(once[3], every[3], rtol=1e-5, atol=1e-6)
    everywhere = torch.arange(ids.shape[1]).expand(len(ids), -1)
    torch.testing.assert_close(model_loss(model, batch, "ce", everywhere), once[0], rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", ["C", "standard-block-2-layers", "B-2-layers", "A"])
def test_attention_classes_on_compressed_documents_are_those_of_the_whole_documents(name):
    """The probe reads each document compressed to its distinct ids, each a row weighted by its tokens and a key
    with the log of their count as its bias: its class means (every layer's) are those of the whole documents'
    patterns, every query and key."""
    from toyformer.topic.probes import AttentionClasses, compressed

    data = {"doc_len_min": 300, "doc_len_max": 320}
    docs = sample_documents(DataConfig(**data), 6, generator(11, "distinct-queries"))
    z = id_topics(DataConfig(**data))
    model = build_model(validate({"model": MODELS[name], "data": data}))
    _randomise(model, generator(12, name))
    probe = AttentionClasses(docs, z)
    distinct, counts = compressed(docs.ids)
    assert distinct.shape[1] * 2 < docs.ids.shape[1]
    assert torch.equal(counts.sum(1), (docs.ids != PAD).sum(1).double())
    got = probe.measure(model)
    with torch.no_grad():
        _, patterns = model(docs.ids, probe.key_bias)
    want = {}
    for layer, pattern in enumerate(patterns):
        pattern = pattern.mean(1).expand(-1, docs.ids.shape[1], docs.ids.shape[1])
        means = attention_class_means(pattern, docs.ids, z)
        want |= {k + (f"_layer{layer}" if layer else ""): v for k, v in means.items()}
    assert set(want) == set(got) and len(want) >= 3
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5), k
