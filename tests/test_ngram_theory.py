"""Theory of in-context n-gram chains (docs/induction-heads.md §5; induction/theory.py) against brute force.

Stationary laws are rebuilt from a dense transition matrix written with Python loops over windows (tuples of
tokens) and solved with numpy least squares; joints are marginalised with loops; the mutual informations are
the spec formulas written as loops over (z, e). The predicted subset S* is checked against the spec's numbers and
against a recomputation over the same kernels, and the theory is cross-checked against one long simulated chain.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from toyformer.induction.chains import sample_chains, sample_kernels, stationary_windows
from toyformer.induction.theory import (
    candidate_subsets,
    chi2_mi,
    code_ce_mi,
    modified_chi2_mi,
    predict_subset,
    stationary_joint,
)
from toyformer.random import generator

# ----------------------------------------------------------------------------------------------- brute force


def _windows(d: int, width: int) -> list[tuple[int, ...]]:
    """All windows, in oldest-first code order (itertools.product is lexicographic = base-d order)."""
    return list(itertools.product(range(d), repeat=width))


def _index(window: tuple[int, ...], d: int) -> int:
    code = 0
    for t in window:
        code = code * d + t
    return code


def _history_code(window: tuple[int, ...], offsets: tuple[int, ...], d: int) -> int:
    """Code of (x_{l−s})_{s∈offsets}, nearest first, for a window ending at x_{l−1} (window[-s] = x_{l−s})."""
    code = 0
    for s in offsets:
        code = code * d + window[-s]
    return code


def _dense_chain(kernel: np.ndarray, d: int, parents: tuple[int, ...], width: int) -> np.ndarray:
    """Transition matrix of the chain on windows of ``width`` ≥ max(pa) tokens: w → (w[1:], e) w.p. π(e | parents)."""
    states = _windows(d, width)
    p = np.zeros((len(states), len(states)))
    for w in states:
        row = kernel[_history_code(w, parents, d)]
        for e in range(d):
            p[_index(w, d), _index(w[1:] + (e,), d)] += row[e]
    return p


def _solve_stationary(p: np.ndarray) -> np.ndarray:
    """μ with μP = μ, Σμ = 1: least squares on the stacked (overdetermined, consistent) system."""
    n = p.shape[0]
    a = np.vstack([p.T - np.eye(n), np.ones((1, n))])
    b = np.zeros(n + 1)
    b[-1] = 1.0
    return np.linalg.lstsq(a, b, rcond=None)[0]


def _brute_joint(kernel: np.ndarray, d: int, parents: tuple[int, ...], offsets: tuple[int, ...]) -> np.ndarray:
    """μ(z, e) from the stationary law of the width-W chain, W = max(max pa, max S), marginalised with loops."""
    width = max(max(parents), max(offsets))
    mu = _solve_stationary(_dense_chain(kernel, d, parents, width))
    joint = np.zeros((d ** len(offsets), d))
    for w in _windows(d, width):  # w ends at x_{l−1}
        row = kernel[_history_code(w, parents, d)]
        for e in range(d):
            joint[_history_code(w, offsets, d), e] += mu[_index(w, d)] * row[e]
    return joint


def _loop_mis(joint: np.ndarray) -> tuple[float, float, float]:
    """(modified χ², standard χ², code-ce) by the spec formulas; histories of probability 0 contribute nothing."""
    nz, d = joint.shape
    mu_z = [sum(joint[z, e] for e in range(d)) for z in range(nz)]
    mu_e = [sum(joint[z, e] for z in range(nz)) for e in range(d)]
    modified = standard = code_ce = 0.0
    for z in range(nz):
        if mu_z[z] == 0:
            continue
        ratio = 0.0
        sq = 0.0
        for e in range(d):
            cond = joint[z, e] / mu_z[z]
            if mu_e[e] > 0:
                ratio += cond**2 / mu_e[e]
            sq += (cond - mu_e[e]) ** 2
        modified += mu_z[z] ** 2 * (ratio - 1)
        standard += mu_z[z] * (ratio - 1)
        code_ce += mu_z[z] ** 2 * sq
    return modified, standard, code_ce


def _power(p: np.ndarray, steps: int) -> np.ndarray:
    v = np.full(p.shape[0], 1.0 / p.shape[0])
    for _ in range(steps):
        v = v @ p
    return v


# --------------------------------------------------------------------------------------- stationary_windows

CASES = [(2, (1, 2)), (3, (1, 2)), (2, (2,)), (3, (2,)), (2, (1, 3)), (3, (1, 3))]


@pytest.mark.parametrize(("d", "parents"), CASES)
def test_stationary_windows_brute_force(d, parents):
    """α = 1 (well mixing): μ from the module satisfies μP = μ, Σμ = 1, μ ≥ 0 for the dense P built here, and equals
    the numpy least-squares solution, the GTH state reduction and the 2000th power of P applied to the uniform law."""
    kernels = sample_kernels(6, d, len(parents), 1.0, generator(d, "test-sw"))
    mu = stationary_windows(kernels, d, parents).numpy()
    assert mu.shape == (6, d ** max(parents))
    for i in range(6):
        p = _dense_chain(kernels[i].numpy(), d, parents, max(parents))
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
        assert (mu[i] >= 0).all()
        assert abs(mu[i].sum() - 1) < 1e-12
        np.testing.assert_allclose(mu[i] @ p, mu[i], atol=1e-13)
        np.testing.assert_allclose(mu[i], _solve_stationary(p), atol=1e-12)
        np.testing.assert_allclose(mu[i], _gth(p), atol=1e-12)
        np.testing.assert_allclose(mu[i], _power(p, 2000), atol=1e-10)


def _gth(p: np.ndarray) -> np.ndarray:
    """Stationary law by Grassmann–Taksar–Heyman state reduction: it uses only the off-diagonal transition
    probabilities and no subtractions, so it stays accurate entrywise for nearly reducible chains (kernel entries
    ~1e-20, where P_ww = 1 − ε rounds to 1 and any method built on P − I loses the exit rates)."""
    p = p.copy()
    n = p.shape[0]
    for k in range(n - 1, 0, -1):
        out = p[k, :k].sum()
        p[:k, k] /= out
        p[:k, :k] += np.outer(p[:k, k], p[k, :k])
    pi = np.zeros(n)
    pi[0] = 1.0
    for k in range(1, n):
        pi[k] = pi[:k] @ p[:k, k]
    return pi / pi.sum()


def _exact_stationary(kernel: np.ndarray, d: int, parents: tuple[int, ...]) -> np.ndarray:
    """The stationary law in exact rational arithmetic: the float kernel entries taken as exact rationals, each row
    renormalised exactly, the chain on windows built with loops, μ(P − I) = 0, Σμ = 1 solved by Gauss–Jordan."""
    m = max(parents)
    rows = []
    for row in kernel:
        exact = [Fraction(float(x)) for x in row]
        total = sum(exact)
        rows.append([x / total for x in exact])
    states = _windows(d, m)
    n = len(states)
    p = [[Fraction(0)] * n for _ in range(n)]
    for w in states:
        for e in range(d):
            p[_index(w, d)][_index(w[1:] + (e,), d)] += rows[_history_code(w, parents, d)][e]
    a = [[p[j][i] - (1 if i == j else 0) for j in range(n)] + [Fraction(0)] for i in range(n - 1)]
    a.append([Fraction(1)] * n + [Fraction(1)])
    for c in range(n):
        r = next(r for r in range(c, n) if a[r][c] != 0)
        a[c], a[r] = a[r], a[c]
        for r in range(n):
            if r != c and a[r][c] != 0:
                f = a[r][c] / a[c][c]
                a[r] = [x - f * y for x, y in zip(a[r], a[c], strict=True)]
    return np.array([float(a[i][n] / a[i][i]) for i in range(n)])


def _oscillating_kernel() -> tuple[torch.Tensor, np.ndarray]:
    """An α = 0.02 kernel (d = 2, pa = (1, 2)) whose power iterates from the uniform law still move by > 0.05 in L1
    after 2000 steps: the first such kernel among seeded prior draws (one exists, else the helper fails)."""
    kernels = sample_kernels(300, 2, 2, 0.02, generator(1, "test-near-deterministic"))
    for i in range(kernels.shape[0]):
        p = _dense_chain(kernels[i].numpy(), 2, (1, 2), 2)
        v = _power(p, 2000)
        if np.abs(v @ p - v).sum() > 0.05:
            return kernels[i : i + 1], p
    raise AssertionError("no oscillating kernel among the draws")


def test_stationary_windows_near_deterministic_oscillating():
    """Power iteration from uniform does not converge on this kernel (iterates 2000 and 2001 differ by > 0.05 in L1),
    yet the solve gives the stationary law: μP = μ, Σμ = 1, μ ≥ 0, equal to the exact rational solution (and to
    GTH, checked against the exact solution here too)."""
    kernel, p = _oscillating_kernel()
    mu = stationary_windows(kernel, 2, (1, 2))[0].numpy()
    assert (mu >= 0).all() and abs(mu.sum() - 1) < 1e-12
    np.testing.assert_allclose(mu @ p, mu, atol=1e-12)
    exact = _exact_stationary(kernel[0].numpy(), 2, (1, 2))
    np.testing.assert_allclose(_gth(p), exact, atol=1e-14)
    np.testing.assert_allclose(mu, exact, atol=1e-7)  # as the batch test: 1e-6 in L1 over 4 windows


NEAR_DETERMINISTIC = [(2, (1, 2)), (3, (1, 2)), (2, (2,)), (2, (1, 3))]


@pytest.mark.parametrize(("d", "parents"), NEAR_DETERMINISTIC)
def test_stationary_windows_near_deterministic_is_stationary(d, parents):
    """Every α = 0.02 prior draw (300 per case, all in one batch) gets a stationary law: finite, μ ≥ 0, Σμ = 1 and
    μP = μ (L1 residual ≤ 1e-9) for the dense P built here. Near-deterministic kernels are why the module solves
    rather than iterates; a kernel entry can be ~1e-20, so P_ww = 1 − ε rounds to 1 in float64."""
    kernels = sample_kernels(300, d, len(parents), 0.02, generator(1, "test-near-deterministic-batch"))
    mu = stationary_windows(kernels, d, parents).numpy()
    bad = []
    for i in range(kernels.shape[0]):
        p = _dense_chain(kernels[i].numpy(), d, parents, max(parents))
        ok = (
            np.isfinite(mu[i]).all()
            and (mu[i] >= 0).all()
            and abs(mu[i].sum() - 1) < 1e-9
            and np.abs(mu[i] @ p - mu[i]).sum() < 1e-9
        )
        if not ok:
            bad.append((i, float(mu[i].sum()), float(np.abs(mu[i] @ p - mu[i]).sum())))
    assert not bad, f"{len(bad)} of 300 kernels: (index, Σμ, ‖μP − μ‖₁) = {bad[:5]}"


@pytest.mark.parametrize(("d", "parents"), NEAR_DETERMINISTIC)
def test_stationary_windows_near_deterministic_is_the_stationary_law(d, parents):
    """Stronger than μP = μ: a chain that is irreducible in exact arithmetic but reducible in float64 has many
    float64 fixed points, and only one is its stationary law. Every α = 0.02 draw must match GTH (accurate for
    such chains; checked against exact rationals on the first 5 draws here) to 1e-6 in L1."""
    kernels = sample_kernels(300, d, len(parents), 0.02, generator(1, "test-near-deterministic-batch"))
    mu = stationary_windows(kernels, d, parents).numpy()
    bad = []
    for i in range(kernels.shape[0]):
        p = _dense_chain(kernels[i].numpy(), d, parents, max(parents))
        ref = _gth(p)
        if not np.isfinite(ref).all():  # float64 GTH underflows on exit masses below 1e-308: use exact rationals
            ref = _exact_stationary(kernels[i].numpy(), d, parents)
        if i < 5:
            np.testing.assert_allclose(ref, _exact_stationary(kernels[i].numpy(), d, parents), atol=1e-14)
        err = np.abs(mu[i] - ref).sum()
        if not err < 1e-6:
            bad.append((i, float(err)))
    assert not bad, f"{len(bad)} of 300 kernels: (index, ‖μ − μ_GTH‖₁) = {bad[:6]}"


# ----------------------------------------------------------------------------------------- stationary_joint


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize(
    ("parents", "offsets"),
    [((1, 3), (2,)), ((1, 3), (1, 3)), ((1, 3), (2, 3)), ((1, 3), (4,)), ((1, 3), (1, 2, 4)), ((1, 2), (3,)),
     ((2,), (1, 2)), ((1, 2), (5,))],
)  # fmt: skip
def test_stationary_joint_brute_force(d, parents, offsets):
    kernels = sample_kernels(3, d, len(parents), 1.0, generator(7 * d, "test-joint"))
    joint = stationary_joint(kernels, d, parents, offsets).numpy()
    assert joint.shape == (3, d ** len(offsets), d)
    for i in range(3):
        expected = _brute_joint(kernels[i].numpy(), d, parents, offsets)
        np.testing.assert_allclose(joint[i], expected, atol=1e-12)
        # the token marginal is the stationary one-token law, the same for every S
        np.testing.assert_allclose(joint[i].sum(0), expected.sum(0), atol=1e-12)


def test_stationary_joint_conditional_is_kernel_for_S_equal_pa():
    """For S = pa the conditional μ(e | z) is the kernel row of z itself (a direct identity, no solve needed)."""
    d, parents = 3, (1, 3)
    kernels = sample_kernels(4, d, 2, 0.5, generator(0, "test-cond"))
    joint = stationary_joint(kernels, d, parents, parents).numpy()
    cond = joint / joint.sum(2, keepdims=True)
    np.testing.assert_allclose(cond, kernels.numpy(), atol=1e-10)


def test_stationary_joint_iid_rows_is_product():
    """A kernel with all rows equal to r makes the tokens i.i.d. r: μ(z, e) = Π_{s∈S} r(z_s) · r(e) (loops)."""
    d, parents, offsets = 3, (1, 3), (2, 4)
    r = np.array([0.5, 0.3, 0.2])
    kernel = torch.tensor(np.tile(r, (d**2, 1)))[None]
    joint = stationary_joint(kernel, d, parents, offsets)[0].numpy()
    for z1 in range(d):
        for z2 in range(d):
            for e in range(d):
                assert abs(joint[z1 * d + z2, e] - r[z1] * r[z2] * r[e]) < 1e-14


# --------------------------------------------------------------------------------------- mutual informations


def _random_joints() -> list[np.ndarray]:
    """Stationary joints of random kernels, plus arbitrary tables with a zero history row and a zero token column."""
    joints = []
    for d, parents, offsets, alpha in [(3, (1, 2), (1, 2), 0.1), (3, (1, 3), (2,), 1.0), (2, (1, 3), (1, 2, 3), 0.3)]:
        k = sample_kernels(3, d, len(parents), alpha, generator(3, "test-mi"))
        joints += list(stationary_joint(k, d, parents, offsets).numpy())
    rng = np.random.default_rng(0)
    for shape in [(9, 3), (4, 2), (27, 4)]:
        t = rng.dirichlet(np.ones(shape[0] * shape[1])).reshape(shape)
        t[1, :] = 0.0  # a history of probability 0
        joints.append(t / t.sum())
        t = t.copy()
        t[:, -1] = 0.0  # a token of probability 0
        joints.append(t / t.sum())
    return joints


def test_mutual_informations_match_loop_formulas():
    joints = _random_joints()
    batch_modified = modified_chi2_mi(torch.tensor(np.stack(joints[:3]))).numpy()  # a batch of same-shaped joints
    for i, j in enumerate(joints):
        modified, standard, code_ce = _loop_mis(j)
        t = torch.tensor(j)[None]
        assert modified_chi2_mi(t).item() == pytest.approx(modified, rel=1e-10, abs=1e-14)
        assert chi2_mi(t).item() == pytest.approx(standard, rel=1e-10, abs=1e-14)
        assert code_ce_mi(t).item() == pytest.approx(code_ce, rel=1e-10, abs=1e-14)
        if i < 3:
            assert batch_modified[i] == pytest.approx(modified, rel=1e-10, abs=1e-14)


def test_mutual_informations_vanish_for_independent_history():
    """All kernel rows equal: x_l is independent of every history, so all three informations are 0."""
    d, parents = 3, (1, 2)
    row = sample_kernels(1, d, 0, 0.5, generator(0, "test-row"))[0, 0]
    kernel = row.expand(d**2, d)[None].clone()
    for offsets in [(1,), (2,), (1, 2), (2, 3), (1, 2, 3)]:
        joint = stationary_joint(kernel, d, parents, offsets)
        for f in (modified_chi2_mi, chi2_mi, code_ce_mi):
            assert abs(f(joint).item()) < 1e-13, (offsets, f.__name__)
    # …while the same offsets under a kernel with distinct rows carry information (the check has power)
    kernel2 = sample_kernels(1, d, 2, 0.5, generator(0, "test-row2"))
    assert modified_chi2_mi(stationary_joint(kernel2, d, parents, (1, 2))).item() > 1e-3


@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_modified_mi_nonnegative_and_below_standard(alpha):
    """Ĩ ≥ 0, and Ĩ ≤ χ² since each per-history bracket Σ_e μ(e|z)²/μ(e) − 1 ≥ 0 (Cauchy–Schwarz) and μ(z)² ≤ μ(z)."""
    d, parents = 3, (1, 2)
    kernels = sample_kernels(300, d, 2, alpha, generator(4, "test-nonneg"))
    for offsets in candidate_subsets("code", 4, 3):
        joint = stationary_joint(kernels, d, parents, offsets)
        mod, std = modified_chi2_mi(joint), chi2_mi(joint)
        assert bool((mod >= -1e-13).all()), (offsets, float(mod.min()))
        assert bool((mod <= std + 1e-12).all()), offsets
        assert bool((code_ce_mi(joint) >= 0).all())


# ---------------------------------------------------------------------------------------- candidate subsets


def _subsets_by_bitmask(offsets: list[int], size: int) -> set[tuple[int, ...]]:
    out = set()
    for mask in range(1, 2 ** len(offsets)):
        chosen = tuple(o for b, o in enumerate(offsets) if mask >> b & 1)
        if len(chosen) <= size:
            out.add(chosen)
    return out


def test_candidate_subsets_code_layout():
    got = candidate_subsets("code", 3, 2)
    assert len(got) == len(set(got)) == 6
    assert set(got) == {(1,), (2,), (3,), (1, 2), (1, 3), (2, 3)}


def test_candidate_subsets_paper_layout():
    got = candidate_subsets("paper", 2, 2, window=4)
    assert len(got) == len(set(got)) == 10
    assert set(got) == _subsets_by_bitmask([1, 2, 3, 4], 2)


@pytest.mark.parametrize("layout", ["code", "paper"])
def test_candidate_subsets_sizes(layout):
    for heads in range(1, 6):
        for degree in range(1, 5):
            window = heads + 2 if layout == "paper" else None
            got = candidate_subsets(layout, heads, degree, window)
            offsets = list(range(1, (window or heads) + 1))
            assert len(got) == len(set(got))
            assert all(1 <= len(s) <= min(degree, heads) for s in got)
            assert all(list(s) == sorted(set(s)) for s in got)
            assert set(got) == _subsets_by_bitmask(offsets, min(degree, heads))


# --------------------------------------------------------------------------------------------- predict_subset


@pytest.fixture(scope="module")
def main_prediction():
    return predict_subset(3, (1, 2), 0.1, heads=3, degree=2, layout="code", kernels=2000, seed=0)


def test_predict_subset_official_setting(main_prediction):
    """d = 3, pa = {1, 2}, α = 0.1, H = 3, D = 2: S* = {1, 2} with Ĩ ≈ 0.20 (docs/induction-heads.md §5). Tolerance: 5
    returned SEs plus 0.005 for the rounding of the stated two-digit value."""
    r = main_prediction
    assert r.predicted == "1,2" and r.kernels == 2000
    assert set(r.table) == {"1", "2", "3", "1,2", "1,3", "2,3"}
    mean, se = r.table["1,2"]
    assert 0 < se < 0.01
    assert abs(mean - 0.20) < 5 * se + 0.005, (mean, se)
    # margin: relative gap between the two best means of the table, positive and well beyond its paired SE
    ranked = sorted((v[0] for v in r.table.values()), reverse=True)
    assert r.margin == pytest.approx((ranked[0] - ranked[1]) / ranked[0], rel=1e-9)
    assert r.margin > 0 and r.margin * ranked[0] > 5 * r.margin_se > 0


def test_predict_subset_matches_recomputation(main_prediction):
    """Mean and SE of every subset equal the mean and SE (ddof = 1, /√K) of Ĩ(stationary_joint) on the same kernels
    drawn here; the argmax agrees."""
    r = main_prediction
    kernels = sample_kernels(2000, 3, 2, 0.1, generator(0, "theory-kernels"))
    means = {}
    for s in candidate_subsets("code", 3, 2):
        values = modified_chi2_mi(stationary_joint(kernels, 3, (1, 2), s)).numpy()
        name = ",".join(map(str, s))
        means[name] = values.mean()
        assert r.table[name][0] == pytest.approx(values.mean(), rel=1e-12)
        assert r.table[name][1] == pytest.approx(values.std(ddof=1) / math.sqrt(2000), rel=1e-9)
    assert r.predicted == max(means, key=means.get)


@pytest.mark.parametrize(("loss", "mi"), [("standard", chi2_mi), ("code-ce", code_ce_mi)])
def test_predict_subset_other_losses(loss, mi):
    r = predict_subset(3, (1, 2), 0.3, heads=3, degree=2, kernels=200, seed=5, loss=loss)
    kernels = sample_kernels(200, 3, 2, 0.3, generator(5, "theory-kernels"))
    for s in [(1,), (2, 3), (1, 2)]:
        expected = mi(stationary_joint(kernels, 3, (1, 2), s)).mean().item()
        assert r.table[",".join(map(str, s))][0] == pytest.approx(expected, rel=1e-12)


def test_predict_subset_other_parent_sets():
    r13 = predict_subset(3, (1, 3), 0.1, heads=3, degree=2, kernels=2000, seed=0)
    assert r13.predicted == "1,3" and r13.margin > 0
    assert r13.margin * r13.table["1,3"][0] > 5 * r13.margin_se  # not a coin flip
    r123 = predict_subset(3, (1, 2, 3), 0.1, heads=3, degree=3, kernels=2000, seed=0)
    assert r123.predicted == "1,2,3" and "1,2,3" in r123.table and r123.margin > 0
    assert r123.margin * r123.table["1,2,3"][0] > 5 * r123.margin_se


def test_predict_subset_seeded(main_prediction):
    again = predict_subset(3, (1, 2), 0.1, heads=3, degree=2, layout="code", kernels=2000, seed=0)
    assert again.table == main_prediction.table
    assert again.margin == main_prediction.margin and again.predicted == main_prediction.predicted
    other = predict_subset(3, (1, 2), 0.1, heads=3, degree=2, layout="code", kernels=2000, seed=1)
    assert other.table["1,2"][0] != main_prediction.table["1,2"][0]


# ------------------------------------------------------------------------------------------ Monte-Carlo check


def test_modified_mi_matches_simulated_chain():
    """Three α = 1 kernels (d = 3, pa = (1, 2)); per kernel 200 chains × 1000 tokens started from the stationary law
    (≈ 2·10⁵ tokens, every position stationary). The empirical joint of (x_{l−s} for s∈S, x_l) and its plug-in Ĩ
    match stationary_joint and Ĩ of it. Standard errors from 40 independent groups of 5 chains (std of the group
    estimates / √40); 5 SE (≈ 320 cells compared: with a t₃₉ standardised error, P(|t| > 5) ≈ 1e-5 each), plus 5
    counts of slack per cell for cells of tiny probability. The plug-in bias of Ĩ is O(cells/N)
    ≈ 1e-4 relative, far below 5 SE."""
    d, parents, b, length, groups = 3, (1, 2), 200, 1000, 40
    kernels = sample_kernels(3, d, 2, 1.0, generator(2, "test-mc-kernels"))
    tokens = sample_chains(
        kernels.repeat_interleave(b, 0), parents, length, generator(2, "test-mc"), start="stationary"
    ).numpy()
    for offsets in [(1, 2), (1,), (2,), (3,), (1, 3), (2, 3)]:
        w = max(offsets)
        theory = stationary_joint(kernels, d, parents, offsets).numpy()
        mi_theory = modified_chi2_mi(torch.tensor(theory)).numpy()
        z = np.zeros((tokens.shape[0], length - w), dtype=np.int64)
        for s in offsets:
            z = z * d + tokens[:, w - s : length - s]
        cell = z * d + tokens[:, w:]  # (chains, positions)
        for i in range(3):
            mine = cell[i * b : (i + 1) * b]
            counts = np.stack([np.bincount(g.ravel(), minlength=theory.shape[1] * d) for g in np.split(mine, groups)])
            per_group = counts / counts.sum(1, keepdims=True)  # (groups, cells)
            pooled = counts.sum(0) / counts.sum()
            n_tok = counts.sum()
            cell_se = per_group.std(0, ddof=1) / math.sqrt(groups)
            dev = np.abs(pooled - theory[i].ravel())
            assert (dev < 5 * cell_se + 5 / n_tok).all(), (offsets, i, dev.max())
            emp_mi = modified_chi2_mi(torch.tensor(per_group.reshape(groups, -1, d))).numpy()
            pooled_mi = modified_chi2_mi(torch.tensor(pooled.reshape(1, -1, d))).item()
            mi_se = emp_mi.std(ddof=1) / math.sqrt(groups)
            assert abs(pooled_mi - mi_theory[i]) < 5 * mi_se, (offsets, i, pooled_mi, mi_theory[i], mi_se)
