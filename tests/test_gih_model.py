"""TF(M, H, d, D) of paper 2 (docs/induction-heads.md §2; induction/model.py): the fast path against the literal model,
the hard copier against the generalized induction head, the gradient on p_S at init against the modified χ² mutual
information."""

import itertools
import math

import pytest
import torch

from toyformer.config import ConfigError
from toyformer.induction.chains import sample_batch
from toyformer.induction.config import GIHModelConfig
from toyformer.induction.losses import prediction_loss
from toyformer.induction.model import GIHTransformer, bits, reference_predict, subsets
from toyformer.induction.plan import equality_patterns, make_plan
from toyformer.induction.predictors import gih_predict
from toyformer.induction.theory import predict_subset
from toyformer.random import generator

VARIANTS = [
    dict(variant="simplified"),
    dict(variant="simplified", layout="paper", window=4),
    dict(variant="simplified", heads=4, degree=3),
    dict(variant="full"),
    dict(variant="full", layout="paper", window=3, heads=2, degree=2),
    dict(variant="simplified", norm="layernorm"),
]


def _model(seed: int = 0, d: int = 3, **kw) -> GIHTransformer:
    """A model moved off its init in every parameter, in float64."""
    model = GIHTransformer(GIHModelConfig(**kw), d).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        model.a.fill_(2.5)
    return model


def _check_against_literal(model, tokens, targets, plan, losses=("nll",)):
    """The plan's predictions and the gradients of every parameter against the literal model's."""
    got = model(plan)
    want = reference_predict(model, tokens, targets)
    assert got.shape == want.shape == (len(tokens), 1 if targets == "last" else tokens.shape[1] - 1, model.d)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert torch.allclose(got.sum(-1), torch.ones_like(got[..., 0]))
    for kind in losses:
        g_fast = torch.autograd.grad(
            prediction_loss(got, plan.labels, kind), list(model.parameters()), retain_graph=True
        )
        g_ref = torch.autograd.grad(
            prediction_loss(want, plan.labels, kind), list(model.parameters()), retain_graph=True
        )
        for a, b in zip(g_fast, g_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


PATH_CASES = [  # (path, the groups' sparse sum, the kernel by pattern of equal tokens where the model allows it)
    ("grouped", False, True),
    ("grouped", True, True),
    ("grouped", True, False),
    ("table", False, True),
    ("windows", False, True),
    ("positions", False, True),
]


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
@pytest.mark.parametrize("targets", ["last", "all"])
@pytest.mark.parametrize(
    "path,sums,patterns", PATH_CASES, ids=["grouped", "sums", "window-pairs", "table", "windows", "positions"]
)
def test_every_path_matches_literal_model_and_its_gradient(kw, targets, path, sums, patterns):
    """Every path (the grouped classifier by gather and scatter, or by the groups' sparse sum, its kernel once per
    pattern of equal tokens where the model's inner products allow it or once per window pair; the dense table; the
    per-position kernel on distinct windows; every position its own window) against the literal model."""
    if path == "grouped" and targets == "all":
        pytest.skip("grouping is for last-token targets (a config error otherwise: see test_config)")
    chains = sample_batch(12, 3, (1, 2), 0.3, 14, generator(0, "model-test"))
    model = _model(**kw)
    patterns = patterns and model.cfg.equality_kernel
    plan = make_plan(chains.tokens, model.band, 3, targets, path, torch.float64, sums=sums, patterns=patterns)
    assert plan.path == path and plan.table == (path == "table")
    assert (plan.groups is not None) == (path == "grouped")
    assert plan.groups is None or ((plan.groups.sum is not None) == sums and plan.groups.patterns == patterns)
    _check_against_literal(model, chains.tokens, targets, plan, ("nll", "code-ce"))


def test_equal_patterns_are_the_same_tokens_renamed():
    """Against brute force: two rows share a pattern exactly when one bijection of the tokens below d maps one row
    onto the other (d and d+1, before the start and the placeholder, map to themselves)."""
    d = 3
    gen = torch.Generator().manual_seed(5)
    rows = torch.randint(0, d + 2, (300, 6), generator=gen)
    rows[rows == d + 1] = d  # the placeholder only at the query's offset 0: the first column
    rows[::3, 0] = d + 1
    patterns, kind = equality_patterns(rows[:, :2], rows[:, 2:], d)
    assert len(patterns) == len(torch.unique(kind)) and len(patterns) < len(torch.unique(rows, dim=0))

    def renamed(x, y):
        return any(
            all((a == b) if a >= d else (b < d and perm[a] == b) for a, b in zip(x, y, strict=True))
            for perm in itertools.permutations(range(d))
        )

    for i in range(60):
        for j in range(300):
            assert (kind[i] == kind[j]) == renamed(rows[i].tolist(), rows[j].tolist()), (rows[i], rows[j])


def test_the_kernel_by_pattern_merges_pairs_and_only_where_the_inner_products_allow_it():
    """At d = 8 the window pairs rarely repeat but their patterns of equal tokens do: far fewer kernel entries and
    groups. The pattern is only what the simplified variant's L2-normalised heads read: LayerNorm (a weight and a
    bias per token) and the full variant's Q, K and OV read the tokens, so their models must not take it (and
    would be wrong if they did)."""
    d = 8
    chains = sample_batch(4000, d, (1, 3), 0.3, 40, generator(8, "patterns"))
    model = _model(d=d)
    by_pairs = make_plan(chains.tokens, model.band, d, dtype=torch.float64, path="grouped")
    by_pattern = make_plan(chains.tokens, model.band, d, dtype=torch.float64, path="grouped", patterns=True)
    pairs = [p.groups.head_pair.shape[1] for p in (by_pairs, by_pattern)]
    assert pairs[1] < 0.6 * pairs[0] and len(by_pattern.groups.seq) < len(by_pairs.groups.seq)
    assert by_pattern.groups.count.sum() == by_pairs.groups.count.sum() == chains.tokens[:, :-1].numel()
    torch.testing.assert_close(model(by_pattern), model(by_pairs), rtol=0, atol=1e-12)
    assert model.cfg.equality_kernel
    for kw in (dict(norm="layernorm"), dict(variant="full")):
        other = _model(d=d, **kw)
        assert not other.cfg.equality_kernel
        wrong = make_plan(chains.tokens, other.band, d, dtype=torch.float64, path="grouped", patterns=True)
        assert (other(wrong) - reference_predict(other, chains.tokens)).abs().max() > 1e-4


LARGE = [
    dict(variant="simplified", heads=4, degree=3),  # code layout: span 7
    dict(variant="simplified", layout="paper", window=6, heads=4),
    dict(variant="full", heads=4, degree=2),
    dict(variant="simplified", heads=6, degree=2),  # span 11
]


@pytest.mark.parametrize("kw", LARGE, ids=lambda kw: "-".join(str(v) for v in kw.values()))
@pytest.mark.parametrize("d", [5, 8])
@pytest.mark.parametrize("path", ["auto", "table", "windows", "positions", "direct", "mixed", "tables", "couples"])
def test_every_path_matches_literal_model_at_larger_d_and_heads(kw, d, path, monkeypatch):
    """d = 5 and 8 with four or six heads, where the data's windows rarely repeat. The grouped path with every head
    reading its content table ("tables"), every head taking dot products per pair ("direct"), the two mixed, and
    (the simplified variant: kernels by pattern of equal tokens) every head one inner product per pattern of its own
    band ("couples"); auto takes the path of least estimated work (never the unshared positions, whose work bounds
    the others')."""
    chains = sample_batch(10, d, (1, 3), 0.3, 16, generator(d, "model-test-large"))
    model = _model(d=d, **kw)
    forced = {"direct": lambda *counts: True, "tables": lambda *counts: False}
    flips = itertools.cycle([True, False])  # heads 1, 3, ... direct
    forced["mixed"] = lambda *counts: next(flips)
    patterns = model.cfg.equality_kernel
    if path == "couples" and not patterns:
        pytest.skip("couples are for kernels by pattern of equal tokens")
    if path in forced:
        monkeypatch.setattr("toyformer.induction.plan.direct_head", forced[path])
        monkeypatch.setattr("toyformer.induction.plan.couple_cost", lambda *counts: math.inf)
    if path == "couples":
        monkeypatch.setattr("toyformer.induction.plan.couple_cost", lambda *counts: -1.0)
    for targets in ("last", "all"):
        grouped = path in forced or path == "couples"
        if grouped and targets == "all":
            continue
        way = "grouped" if grouped else path
        plan = make_plan(
            chains.tokens, model.band, d, targets, way, torch.float64, sums=targets == "last", patterns=patterns
        )
        if path == "auto":
            assert plan.path == min(plan.costs, key=plan.costs.get)
            assert ("grouped" in plan.costs) == (targets == "last") and plan.path != "positions"
        heads = model.cfg.heads
        if path in forced:
            want = {"direct": [True] * heads, "tables": [False] * heads, "mixed": [h % 2 == 0 for h in range(heads)]}
            assert plan.groups.direct == want[path] and not any(plan.groups.coupled)
        if path == "couples":
            assert plan.groups.coupled == [True] * heads
        _check_against_literal(model, chains.tokens, targets, plan)


def test_auto_takes_the_cheaper_path_and_a_forced_table_that_cannot_fit_is_an_error(monkeypatch):
    """All-position targets: the dense table while it is small against the scored positions, the per-position
    kernel once it is not; forcing the table beyond its limit says what to do."""
    chains = sample_batch(1000, 2, (1, 2), 0.3, 50, generator(1, "model-test-costs"))
    model = _model(d=2)
    small = make_plan(chains.tokens, model.band, 2, "all")  # at most 3^6 windows, 1,000 × 50 × 25 scored keys
    assert small.path == "table" and small.costs["table"] < small.costs["windows"]
    wide = make_plan(sample_batch(200, 8, (1, 2), 1.0, 30, generator(2, "w")).tokens, _model(d=8).band, 8, "all")
    assert wide.path == "windows" and ("table" not in wide.costs or wide.costs["windows"] < wide.costs["table"])
    monkeypatch.setattr("toyformer.induction.plan.TABLE_LIMIT", 1)
    with pytest.raises(ConfigError, match="model.path = 'table'.*use auto or windows"):
        make_plan(chains.tokens, model.band, 2, "all", "table")
    with pytest.raises(ConfigError, match="needs data.targets = 'last'"):
        make_plan(chains.tokens, model.band, 2, "all", "grouped")


def test_subsets_are_bounded_by_degree_and_named_by_bits():
    assert [bits(s, 3) for s in subsets(3, 2)] == ["100", "010", "001", "110", "101", "011"]
    assert len(subsets(10, 2)) == 10 + 45  # never 2^H
    assert len(subsets(5, 5)) == 2**5 - 1


def _hard(model: GIHTransformer, subset: tuple[int, ...]) -> GIHTransformer:
    """Each head copies exactly its own offset; the selector keeps exactly ``subset``."""
    with torch.no_grad():
        model.w.copy_(torch.where(model.w > 1.0, 80.0, 0.0))
        model.c.copy_(torch.tensor([1.0 if s == subset else 0.0 for s in model.subsets], dtype=model.c.dtype))
    return model


def test_hard_copier_outputs_are_the_copied_tokens():
    chains = sample_batch(20, 3, (1, 2), 0.2, 30, generator(1, "hard"))
    model = _hard(GIHTransformer(GIHModelConfig(), 3).double(), (0, 1))
    plan = make_plan(chains.tokens, model.band, 3)
    u = model.copier(plan.keys)  # (n_k, H, d)
    for h in range(3):
        token = plan.keys[:, h + 1]  # head h (0-based) copies offset h + 1
        present = token != 3
        expected = torch.nn.functional.one_hot(token[present], 3).double()
        torch.testing.assert_close(u[present, h], expected, atol=2e-6, rtol=0)  # ε of the L2 norm


@pytest.mark.parametrize("subset", [(0,), (0, 1), (0, 2), (1, 2)])
@pytest.mark.parametrize("a", [0.5, 4.0])
def test_hard_copier_kernel_is_the_history_match_indicator(subset, a):
    """Under a hard copier K(i, L+1) = 1[X_{i,S} = X_{L+1,S}], so the model is exactly the GIH at S and a."""
    chains = sample_batch(30, 3, (1, 2), 0.2, 40, generator(2, "hard"))
    model = _hard(GIHTransformer(GIHModelConfig(), 3).double(), subset)
    with torch.no_grad():
        model.a.fill_(a)
    offsets = tuple(h + 1 for h in subset)
    got = model(make_plan(chains.tokens, model.band, 3, dtype=torch.float64))[:, 0]
    want = gih_predict(chains.tokens[:, :-1], offsets, 3, a)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_gradient_on_p_at_init_is_proportional_to_modified_mi():
    """Spec §5: at init (hard copier, equal c, small a) −∂ nll/∂p_S ≈ a·E_π Ĩ(S) on long stationary chains."""
    d, parents, alpha, a = 3, (1, 2), 0.3, 1e-3
    chains = sample_batch(3000, d, parents, alpha, 400, generator(3, "grad"), start="stationary")
    model = GIHTransformer(GIHModelConfig(), d).double()
    with torch.no_grad():
        model.w.copy_(torch.where(model.w > 1.0, 80.0, 0.0))
        model.a.fill_(a)
    p = model.subset_share().detach().clone().requires_grad_(True)
    model.subset_share = lambda: p
    plan = make_plan(chains.tokens, model.band, d, dtype=torch.float64)
    (grad,) = torch.autograd.grad(prediction_loss(model(plan), plan.labels, "nll"), p)
    prediction = predict_subset(d, parents, alpha, 3, 2, kernels=3000, seed=4)
    mi = torch.tensor(
        [prediction.table[",".join(str(h + 1) for h in s)][0] for s in model.subsets], dtype=torch.float64
    )
    slope = -grad / a
    assert torch.corrcoef(torch.stack([slope, mi]))[0, 1] > 0.99
    torch.testing.assert_close(slope, mi, rtol=0.06, atol=0.0)  # finite L and sampling: a few %
    assert model.names[int(slope.argmax())] == "110"


def test_plan_shares_windows():
    """The fast path's tables are small: d = 3, span 5 has at most 4^5·3 key windows whatever the batch."""
    chains = sample_batch(2000, 3, (1, 2), 0.1, 100, generator(5, "plan"))
    model = GIHTransformer(GIHModelConfig(), 3)
    plan = make_plan(chains.tokens, model.band, 3)
    assert len(plan.keys) <= 3 * 4**5 and len(plan.queries) <= 3**5
    keys = plan.keys[plan.key_index]  # every position's own window comes back
    pos = torch.arange(100)
    for o in range(6):
        expect = torch.where(pos >= o, chains.tokens[:, (pos - o).clamp(min=0)], 3)
        assert torch.equal(keys[..., o], expect)
    assert int(plan.groups.log_count.exp().round().sum()) == 2000 * 100


def test_every_head_band_in_both_layouts():
    code = GIHTransformer(GIHModelConfig(heads=3), 3).band
    assert [torch.nonzero(row).flatten().tolist() for row in code] == [[1, 2, 3], [2, 3, 4], [3, 4, 5]]
    paper = GIHTransformer(GIHModelConfig(heads=2, layout="paper", window=4), 3).band
    assert [torch.nonzero(row).flatten().tolist() for row in paper] == [[1, 2, 3, 4], [1, 2, 3, 4]]
    full = GIHTransformer(GIHModelConfig(variant="full"), 3).band
    assert full[:, 0].all()
    model = GIHTransformer(GIHModelConfig(heads=3), 3)
    assert [int(model.w[h].argmax()) for h in range(3)] == [1, 2, 3]
    assert math.isclose(float(model.subset_share().detach().sum()), 1.0, rel_tol=1e-6)
    assert all(len(s) <= 2 for s in itertools.chain(model.subsets))


def test_vanishing_shares_are_exactly_zero_and_carry_no_gradient():
    from toyformer.induction.model import SHARE_FLOOR

    model = GIHTransformer(GIHModelConfig(heads=2, degree=2), 3)
    with torch.no_grad():
        model.c.copy_(torch.tensor([1.0, 1e-16, 3e-15]))  # shares 1, 1e-32 (below the floor), 9e-30 (above)
    share = model.subset_share()
    assert share[1] == 0 and share[2] > SHARE_FLOOR
    share[1:].sum().backward()
    assert model.c.grad[1] != 0  # the normalisation still reaches c_1: it keeps decaying, in normal floats


def test_building_an_induction_experiment_leaves_the_float_mode_alone():
    """The CPU's flush-to-zero mode is per thread: set by one experiment, it would change the arithmetic of
    everything after it in the process, and not on OpenMP workers created before it was set."""
    from toyformer.induction.experiment import InductionExperiment
    from toyformer.tasks import load

    subnormal = torch.full((1_000_000,), 8388607, dtype=torch.int32).view(torch.float32)  # from bits: no float op
    before = int(((subnormal * 1.0) != 0).sum())
    InductionExperiment(load("induction/grid-base", ["data.sequences=200", "theory.kernels=10"]))
    assert before == subnormal.numel() and int(((subnormal * 1.0) != 0).sum()) == before
