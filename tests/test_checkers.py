"""The checkers a run's verdict rests on: claims against hand-computed numbers, the onset rule on hand-built curves,
the MLM corruption at non-default rates, and the selector share p_S.

Every expectation here is computed by hand (or by a formula written out in the test), never by the code under
test, and each case is chosen so that a plausible slip in the checker changes its outcome: a tolerance ten times too
wide, a factor dropped, ``>`` for ``>=``, a different reference for the onset, random and keep swapped, hard-coded
BERT rates, p_S ∝ |c|.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from toyformer.claims import check, lookup, value
from toyformer.config import Claim
from toyformer.induction.model import GIHTransformer
from toyformer.random import generator
from toyformer.tasks import validate
from toyformer.topic.config import END, MASK, NUM_SPECIALS, PAD, START, DataConfig, MaskingConfig
from toyformer.topic.masking import corrupt, population_batch
from toyformer.topic.stages import onset_step, onsets

# --------------------------------------------------------------------------------------------------------------
# claims

FINAL = {
    "a": 3.0,
    "b": 1.0,
    "c": 2.0,
    "n": 4,  # an int metric reads as a number too
    "loss": 0.5,
    "x": 100.0,  # a final metric with the same name as a theory prediction: theory.x must not read it
    "subset_share": {"110": 0.9, "011": 0.05, "101": 0.05},
    "nested": {"deep": {"y": 7.5}},
    "a.b": 11.0,  # a literal key with a dot is read as it is
    "selected_subset": "1,2",
    "label": "text",
}
THEORY = {"x": 2.0, "loss_ref": 0.25, "predicted_subset": "1,2", "other_subset": "1,3", "inner": {"z": -1.5}}


def _check(left: str, op: str, right: str, **kw) -> dict:
    return check(Claim(name="t", left=left, op=op, right=right, **kw), FINAL, THEORY)


@pytest.mark.parametrize(
    "left, op, right, factor, ok",
    [
        # a = 3, b = 1, c = 2. Each pair: one case that holds only with the factor applied, one that fails only
        # because of it (the same comparison without the factor would give the opposite answer).
        ("b", ">", "c", 0.25, True),  # 1 > 0.5;  without the factor 1 > 2 fails
        ("a", ">", "c", 2.0, False),  # 3 > 4 fails; without the factor 3 > 2 holds
        ("c", ">", "a", -1.0, True),  # 2 > −3 (negative factor)
        ("b", ">=", "c", 0.5, True),  # 1 >= 1: equality at factor·right
        ("a", ">=", "c", 1.6, False),  # 3 >= 3.2 fails; 3 >= 2 holds
        ("a", "<", "c", 2.0, True),  # 3 < 4;  3 < 2 fails
        ("b", "<", "c", 0.25, False),  # 1 < 0.5 fails; 1 < 2 holds
        ("c", "<=", "b", 2.0, True),  # 2 <= 2: equality at factor·right
        ("b", "<=", "c", 0.4, False),  # 1 <= 0.8 fails; 1 <= 2 holds
    ],
)
def test_inequalities_apply_the_factor(left, op, right, factor, ok):
    out = _check(left, op, right, factor=factor)
    assert out["ok"] is ok
    # measured and reference are the two sides as written (the factor is not folded into the reference)
    assert out["measured"] == FINAL[left] and out["reference"] == FINAL[right]


@pytest.mark.parametrize("op, ok", [(">", False), (">=", True), ("<", False), ("<=", True)])
def test_strict_and_non_strict_at_exact_equality(op, ok):
    # 3 against 1.5·2 = 3 exactly (binary-exact numbers): only the non-strict operators hold
    assert _check("a", op, "c", factor=1.5)["ok"] is ok
    # and with factor 1: 2 against 2
    assert _check("c", op, "c")["ok"] is ok


@pytest.mark.parametrize(
    "left, right, rel, ok",
    [
        # right = 2 → tolerance rel·2. rel = 0.05: |Δ| <= 0.1
        ("2.09", "2", 0.05, True),
        ("2.11", "2", 0.05, False),  # fails at rel, holds at 10·rel
        ("1.89", "2", 0.05, False),  # below the reference too
        ("1.91", "2", 0.05, True),
        # the boundary is inclusive: right = 4, rel = 0.25 → tolerance exactly 1
        ("5", "4", 0.25, True),
        ("3", "4", 0.25, True),
        ("5.0001", "4", 0.25, False),
        # a negative reference: the tolerance is rel·|right|
        ("0 - 2.09", "0 - 2", 0.05, True),
        ("0 - 2.11", "0 - 2", 0.05, False),
        # a tight tolerance: rel = 0.01 of 0.5 is 0.005
        ("0.504", "loss", 0.01, True),
        ("0.506", "loss", 0.01, False),
    ],
)
def test_close_tolerance_is_rel_times_right(left, right, rel, ok):
    out = _check(left, "close", right, rel=rel)
    assert out["ok"] is ok
    assert out["measured"] == pytest.approx(value(left, FINAL, THEORY))


def test_close_tolerance_ten_times_tighter_than_a_loose_one():
    # the same offset judged at rel and at 10·rel: the verdict must change
    assert _check("1.3", "close", "1", rel=0.1)["ok"] is False
    assert _check("1.3", "close", "1", rel=1.0)["ok"] is True
    assert _check("1.03", "close", "1", rel=0.01)["ok"] is False
    assert _check("1.03", "close", "1", rel=0.1)["ok"] is True


@pytest.mark.parametrize(
    "left, right, scale, rel, ok",
    [
        # scale b = 1 → tolerance 0.1, while rel·|right| would be 0.05 (right = loss = 0.5)
        ("0.58", "loss", "b", 0.1, True),
        ("0.62", "loss", "b", 0.1, False),
        # right = 10, scale = 1: tolerance 0.1 (rel·|right| would be 1 and pass)
        ("10.5", "10", "b", 0.1, False),
        ("10.05", "10", "b", 0.1, True),
        # a negative scale counts by its size: |0 − b| = 1
        ("0.58", "loss", "0 - b", 0.1, True),
        ("0.62", "loss", "0 - b", 0.1, False),
        # the scale is an expression: a − b = 2 → tolerance 0.2 around theory.x = 2
        ("2.19", "theory.x", "a - b", 0.1, True),
        ("2.21", "theory.x", "a - b", 0.1, False),
    ],
)
def test_close_tolerance_from_scale(left, right, scale, rel, ok):
    assert _check(left, "close", right, rel=rel, scale=scale)["ok"] is ok


def test_close_with_zero_reference_needs_exact_equality_or_a_scale():
    assert _check("0", "close", "0")["ok"] is True
    assert _check("0.001", "close", "0")["ok"] is False  # tolerance 0.1·|0| = 0
    assert _check("0.001", "close", "0", scale="b", rel=0.01)["ok"] is True  # tolerance 0.01


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a - b", 2.0),
        ("a-b", 2.0),
        ("a + b + c", 6.0),
        ("a - b - c", 0.0),
        ("-a + 5", 2.0),
        ("a - 2.5", 0.5),
        ("1e-3 + b", 1.001),
        ("2.5e1 - a", 22.0),
        ("n - b", 3.0),
        ("subset_share.110 - subset_share.011", 0.85),
        ("nested.deep.y", 7.5),
        ("a.b", 11.0),
        ("theory.x", 2.0),  # not final's x = 100
        ("x - theory.x", 98.0),
        ("theory.inner.z + a", 1.5),
        ("loss - theory.loss_ref", 0.25),
    ],
)
def test_value_of_sums_differences_and_dotted_names(text, expected):
    assert value(text, FINAL, THEORY) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "text",
    [
        "missing",
        "a - missing",
        "missing + 1",
        "subset_share.111",  # a dotted name whose last part is missing
        "subset_share",  # a dict is not a number
        "a.x",  # dotting into a number
        "nested.deep.y.z",
        "theory.missing",
        "theory.a",  # a final metric is not a theory prediction
        "label",  # a string is not a number
        "theory.predicted_subset + 1",
    ],
)
def test_value_of_a_missing_or_non_numeric_name_is_none(text):
    assert value(text, FINAL, THEORY) is None


def test_lookup_reads_final_theory_and_nested_values():
    assert lookup("subset_share.110", FINAL, THEORY) == 0.9
    assert lookup("subset_share", FINAL, THEORY) == FINAL["subset_share"]
    assert lookup("theory.inner.z", FINAL, THEORY) == -1.5
    assert lookup("theory.x", FINAL, THEORY) == 2.0 and lookup("x", FINAL, THEORY) == 100.0
    assert lookup("a.b", FINAL, THEORY) == 11.0
    assert lookup("missing", FINAL, THEORY) is None and lookup("theory.nothing", FINAL, THEORY) is None


@pytest.mark.parametrize("op", [">", ">=", "<", "<=", "close"])
@pytest.mark.parametrize("left, right", [("missing", "b"), ("a", "missing"), ("a - missing", "b"), ("a", "theory.a")])
def test_a_claim_on_a_missing_name_fails(op, left, right):
    out = _check(left, op, right, **({} if op == "close" else {"factor": 0.5}))
    assert out["ok"] is False
    assert out["measured"] == value(left, FINAL, THEORY)
    assert (out["measured"] is None) or (out["reference"] is None)
    if "missing" in left:
        assert out["measured"] is None


def test_factor_is_refused_where_it_would_do_nothing():
    with pytest.raises(ValueError, match="factor applies to"):
        Claim(name="t", left="a", op="close", right="b", factor=2.0)
    with pytest.raises(ValueError, match="factor applies to"):
        Claim(name="t", left="a", op="==", right="b", factor=0.5)


def test_close_with_a_missing_scale_fails():
    out = _check("loss", "close", "loss", scale="missing")
    assert out["ok"] is False and out["measured"] == 0.5


def test_nested_claims_on_subset_share():
    assert _check("subset_share.110", ">", "0.85")["ok"] is True
    assert _check("subset_share.110", ">", "0.95")["ok"] is False
    assert _check("subset_share.110", ">", "subset_share.011", factor=17.0)["ok"] is True  # 0.9 > 0.85
    assert _check("subset_share.110", ">", "subset_share.011", factor=19.0)["ok"] is False  # 0.9 > 0.95
    assert _check("subset_share.110 + subset_share.011", "close", "0.95", rel=1e-9)["ok"] is True
    assert _check("subset_share.111", ">", "0")["measured"] is None


def test_equality_claims():
    ok = _check("selected_subset", "==", "theory.predicted_subset")
    assert ok["ok"] is True and ok["measured"] == "1,2" and ok["reference"] == "1,2"
    assert _check("selected_subset", "==", "theory.other_subset")["ok"] is False
    assert _check("theory.x", "==", "c")["ok"] is True  # 2.0 == 2.0
    assert _check("theory.x", "==", "a")["ok"] is False
    assert _check("n", "==", "n")["ok"] is True
    assert _check("subset_share.110", "==", "subset_share.110")["ok"] is True
    # two missing names are not equal to each other
    missing = _check("missing", "==", "theory.missing")
    assert missing["ok"] is False and missing["measured"] is None
    assert _check("selected_subset", "==", "theory.missing")["ok"] is False


# --------------------------------------------------------------------------------------------------------------
# onsets

LOG_STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


def test_onset_is_the_first_step_reaching_the_fraction_of_the_max():
    # max 10 at step 128, final 5 (non-monotone). 10% of the max is 1: first reached at step 16.
    dist = [0.0, 0.01, 0.02, 0.05, 0.5, 1.2, 3.0, 8.0, 10.0, 6.0, 5.0]
    assert onset_step(LOG_STEPS, dist) == 16
    # 10% of the final value (5) would be 0.5 and give step 8; a slope rule would pick 32 → 64 (+5)
    assert onset_step(LOG_STEPS, dist, fraction=0.5) == 64  # 5: first reached by 8.0 (50% of the final: 32)
    assert onset_step(LOG_STEPS, dist, fraction=0.25) == 32  # 2.5
    assert onset_step(LOG_STEPS, dist, fraction=0.03) == 8  # 0.3
    assert onset_step(LOG_STEPS, dist, fraction=0.9) == 128  # 9 only at the max


def test_onset_threshold_is_inclusive():
    # max 8, fraction 0.25 → threshold exactly 2 (binary exact), met with equality at step 16
    dist = [0.0, 0.5, 1.0, 1.5, 1.75, 2.0, 4.0, 8.0, 6.0]
    assert onset_step(LOG_STEPS[:9], dist, fraction=0.25) == 16  # '>' would give 32
    assert onset_step(LOG_STEPS[:9], dist, fraction=0.5) == 32  # threshold 4, met with equality
    assert onset_step([0, 10], [0.0, 1.0], fraction=0.5) == 10


def test_onset_reads_the_whole_curve_not_a_local_slope():
    # A fast early rise to 0.3 then a slow creep, then the real move much later, on log-spaced steps. The largest
    # slope per step is on the first interval (0 → 1) and the largest jump is 2 → 9 (316 → 1000); the onset at 10%
    # of the max 9 (0.9) is step 316, the first value >= 0.9.
    steps = [0, 1, 3, 10, 31, 100, 316, 1000, 3162]
    dist = [0.0, 0.3, 0.4, 0.45, 0.5, 0.6, 2.0, 9.0, 8.5]
    assert onset_step(steps, dist) == 316
    assert onset_step(steps, dist, fraction=0.05) == 10  # 0.45, met with equality
    assert onset_step(steps, dist, fraction=0.04) == 3  # 0.36: first 0.4
    assert onset_step(steps, dist, fraction=0.5) == 1000  # 4.5


def test_onset_on_a_non_monotone_curve():
    # a spike then a decay: the max is the spike, and the onset is the first point reaching 20% of it
    steps = [5, 10, 20, 40, 80, 160]
    dist = [0.1, 0.15, 0.4, 2.0, 0.5, 0.3]
    assert onset_step(steps, dist, fraction=0.2) == 20  # 0.4 >= 0.4 (20% of 2.0), inclusive
    assert onset_step(steps, dist, fraction=0.21) == 40
    # relative to the final value 0.3 the 20% threshold would be 0.06 and give step 5
    assert onset_step(steps, dist, fraction=0.05) == 5  # 0.1 >= 0.1


def test_onset_returns_a_step_not_an_index_and_an_int():
    got = onset_step((100, 200, 300), (0.0, 0.05, 1.0))
    assert got == 300 and type(got) is int
    got = onset_step(torch.tensor([7, 9, 11]).tolist(), [0.0, 0.2, 1.0])
    assert got == 9 and type(got) is int


@pytest.mark.parametrize(
    "dist",
    [
        [0.0] * 6,  # frozen
        [1e-9, 5e-9, 2e-9, 0.0, 1e-10, 3e-9],  # below the floor
        [],
    ],
)
def test_a_curve_that_never_moves_has_no_onset(dist):
    assert onset_step(list(range(len(dist))), dist) is None
    assert onset_step(list(range(len(dist))), dist, fraction=0.5) is None


def test_onset_floor_is_a_parameter():
    dist = [0.0, 1e-9, 4e-9]
    assert onset_step([0, 1, 2], dist) is None  # default floor 1e-8
    assert onset_step([0, 1, 2], dist, floor=1e-10) == 1  # 10% of 4e-9 = 4e-10 <= 1e-9


def test_onsets_reads_each_group_from_its_records():
    records = [
        {"step": 0, "dist_value": 0.0, "dist_key": 0.0, "dist_query": 0.0},
        {"step": 1, "loss_dev": 3.0},  # a record without distances is skipped
        {"step": 2, "dist_value": 0.2, "dist_key": 0.0, "dist_query": 0.0},
        {"step": 4, "dist_value": 1.0, "dist_key": 0.05, "dist_query": 0.0},
        {"step": 8, "dist_value": 2.0, "dist_key": 0.3, "dist_query": 0.0},
        {"step": 16, "dist_value": 1.5, "dist_key": 1.0, "dist_query": 0.0},
        {"step": 32, "dist_value": 1.0, "dist_key": 0.9, "dist_query": 0.0},
    ]
    got = onsets(records, ["value", "key", "query", "embedding"], 0.25)
    # value: max 2 → 0.5 first at step 4; key: max 1 → 0.25 first at step 8; query never moves; no embedding curve
    assert got == {
        "onset_step_value": 4,
        "onset_step_key": 8,
        "onset_step_query": None,
        "onset_step_embedding": None,
    }
    # the fraction is passed through: at 10% value's 0.2 (step 2) and key's 0.3 (step 8, 0.05 < 0.1)
    assert onsets(records, ["value", "key"], 0.1) == {"onset_step_value": 2, "onset_step_key": 8}
    assert onsets(records, ["value", "key"], 0.6) == {"onset_step_value": 8, "onset_step_key": 16}


# --------------------------------------------------------------------------------------------------------------
# masking at non-default rates

N_IDS = 10  # PAD, MASK, START, END and 6 words: a small pool, so a random draw often hits the original
N_WORDS = N_IDS - NUM_SPECIALS
ROWS, LENGTH = 5000, 40


def _se_ok(count: int, n: int, p: float, k: float = 5.0) -> bool:
    """count/n within k binomial standard errors of p; p = 0 or 1 must be exact."""
    if p <= 0.0 or p >= 1.0:
        return count == (0 if p <= 0.0 else n)
    return abs(count / n - p) <= k * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def word_ids():
    """(ROWS, LENGTH) words only, uniform over the 6 word ids; every position can be selected."""
    return torch.randint(NUM_SPECIALS, N_IDS, (ROWS, LENGTH), generator=generator(20, "checker-ids"))


def _expected_shares(m: float, r: float, k: float, pool: str) -> dict[str, float]:
    """Shares of selected positions (whose original is a word) by what they show: [MASK], the original word, another
    special (PAD/START/END) or another word. A random draw is uniform over the pool and can hit [MASK] (pool "all")
    or the original word itself."""
    size = N_IDS if pool == "all" else N_WORDS
    specials = 3 if pool == "all" else 0  # PAD, START, END
    return {
        "mask": m + (r / size if pool == "all" else 0.0),
        "same": k + r / size,
        "special": r * specials / size,
        "other_word": r * (N_WORDS - 1) / size,
    }


CASES = [
    # (mask, random, keep, pool, select)
    (0.6, 0.3, 0.1, "all", 0.35),
    (0.5, 0.1, 0.4, "all", 0.15),
    (0.5, 0.1, 0.4, "words", 0.6),
    (0.7, 0.3, 0.0, "all", 0.25),  # keep 0: the original shows only through a random hit (0.3/10)
    (0.75, 0.0, 0.25, "all", 0.5),  # random 0: no other token ever
    (1.0, 0.0, 0.0, "all", 0.2),  # everything selected becomes [MASK]
    (0.0, 1.0, 0.0, "words", 0.3),  # everything selected is a uniform word
    (0.0, 0.0, 1.0, "all", 0.3),  # nothing changes
    (0.2, 0.6, 0.2, "all", 0.05),
]


@pytest.mark.parametrize("m, r, k, pool, p", CASES)
def test_corruption_rates(word_ids, m, r, k, pool, p):
    cfg = MaskingConfig(select_prob=p, mask_prob=m, random_prob=r, keep_prob=k, random_pool=pool)
    batch = corrupt(word_ids, cfg, N_IDS, generator(21, f"checker-{m}-{r}-{k}-{pool}-{p}"))
    selected = batch.weight > 0
    # the selection rate: rows are re-drawn until they have a selection, so each position is selected with
    # p / (1 − (1 − p)^L) (a 15% correction at p = 0.05, negligible at the larger p)
    n_pos = word_ids.numel()
    assert _se_ok(int(selected.sum()), n_pos, p / (1 - (1 - p) ** LENGTH))
    assert torch.equal(batch.ids[~selected], word_ids[~selected])
    inp, orig = batch.ids[selected], word_ids[selected]
    n = inp.numel()
    counts = {
        "mask": int((inp == MASK).sum()),
        "same": int((inp == orig).sum()),
        "special": int(((inp == PAD) | (inp == START) | (inp == END)).sum()),
        "other_word": int(((inp >= NUM_SPECIALS) & (inp != orig)).sum()),
    }
    assert sum(counts.values()) == n
    want = _expected_shares(m, r, k, pool)
    for key, share in want.items():
        assert _se_ok(counts[key], n, share), (key, counts[key] / n, share)


def test_random_replacements_are_uniform_over_the_pool(word_ids):
    """At random-only corruption every selected position shows a uniform draw of the pool: each of the 10 ids with
    probability 1/10, whatever the original."""
    cfg = MaskingConfig(select_prob=0.5, mask_prob=0.0, random_prob=1.0, keep_prob=0.0)
    batch = corrupt(word_ids, cfg, N_IDS, generator(22, "checker-uniform"))
    inp = batch.ids[batch.weight > 0]
    freq = torch.bincount(inp, minlength=N_IDS)
    assert all(_se_ok(int(c), inp.numel(), 1 / N_IDS) for c in freq)


def test_random_and_keep_are_told_apart_at_one_position_class():
    """With the original fixed (every word the same id), "same" is keep + random/|pool| and "other" is the rest of
    random: swapping random and keep moves both by many standard errors."""
    ids = torch.full((4000, 30), NUM_SPECIALS + 2)
    cfg = MaskingConfig(select_prob=0.5, mask_prob=0.6, random_prob=0.3, keep_prob=0.1)
    batch = corrupt(ids, cfg, N_IDS, generator(23, "checker-fixed"))
    inp = batch.ids[batch.weight > 0]
    n = inp.numel()
    assert _se_ok(int((inp == NUM_SPECIALS + 2).sum()), n, 0.1 + 0.3 / N_IDS)
    assert _se_ok(int((inp == MASK).sum()), n, 0.6 + 0.3 / N_IDS)
    assert _se_ok(int(((inp != MASK) & (inp != NUM_SPECIALS + 2)).sum()), n, 0.3 * (N_IDS - 2) / N_IDS)


@pytest.mark.parametrize("m, r, k, pool", [(0.6, 0.3, 0.1, "all"), (0.5, 0.1, 0.4, "words"), (0.7, 0.3, 0.0, "all")])
def test_population_soft_targets_at_unequal_rates(m, r, k, pool):
    """soft[q, y] = μ_y·(m·1[q = MASK] + k·1[q = y] + r·1[q ∈ pool]/|pool|), built here entry by entry."""
    data = DataConfig(num_topics=2, words_per_topic=3)
    masking = MaskingConfig(mask_prob=m, random_prob=r, keep_prob=k, random_pool=pool)
    theta = torch.tensor([[0.7, 0.3], [0.1, 0.9]], dtype=torch.float64)
    soft = population_batch(theta, data, masking).soft.double()
    size = N_IDS if pool == "all" else N_WORDS
    want = torch.zeros(2, N_IDS, N_IDS, dtype=torch.float64)
    for d in range(2):
        mu = [0.0] * NUM_SPECIALS + [float(theta[d, 0]) / 3] * 3 + [float(theta[d, 1]) / 3] * 3
        for q in range(N_IDS):
            in_pool = pool == "all" or q >= NUM_SPECIALS
            for y in range(N_IDS):
                w = (m if q == MASK else 0.0) + (k if q == y else 0.0) + (r / size if in_pool else 0.0)
                want[d, q, y] = mu[y] * w
    torch.testing.assert_close(soft, want, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------------------------
# selector share p_S


@pytest.mark.parametrize(
    "model, c",
    [
        ({}, [1.0, -2.0, 0.5, 3.0, -0.1, 0.0]),  # H = 3, D = 2: 6 subsets
        ({"heads": 4, "degree": 3}, [0.3, -1.0, 2.0, -0.7, 0.05, 1.5, -2.5, 0.0, 0.2, -0.4, 1.1, 0.9, -3.0, 0.6]),
        ({"heads": 2, "degree": 2}, [-1.0, 1.0, 2.0]),  # opposite signs, same size: equal shares
    ],
)
def test_subset_share_is_c_squared_over_the_sum(model, c):
    cfg = validate({"task": "induction", "model": model})
    net = GIHTransformer(cfg.model, cfg.data.d).double()
    assert len(net.subsets) == len(c)
    with torch.no_grad():
        net.c.copy_(torch.tensor(c, dtype=torch.float64))
    total = sum(x * x for x in c)
    want = torch.tensor([x * x / total for x in c], dtype=torch.float64)
    got = net.subset_share().detach()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0.0)
    assert float(got.sum()) == pytest.approx(1.0, abs=1e-12)
    # the kernel weights the subsets by p_S: with per-head inner products g_h, K = Σ_S p_S ∏_{h∈S} g_h
    gen = torch.Generator().manual_seed(5)
    inner = torch.rand(cfg.model.heads, 7, generator=gen, dtype=torch.float64) * 2 - 1
    k = torch.zeros(7, dtype=torch.float64)
    for share, subset in zip(want, net.subsets, strict=True):
        k += share * torch.prod(inner[list(subset)], dim=0)
    torch.testing.assert_close(net.kernel(inner).detach(), k, rtol=1e-12, atol=1e-14)


def test_subset_share_by_hand_for_three_heads():
    """c = (1, −2, 0, 0, 2, 0) over subsets 100, 010, 001, 110, 101, 011: Σc² = 9, so p = (1, 4, 0, 0, 4, 0)/9.
    (p ∝ |c| would give (1, 2, 0, 0, 2, 0)/5.)"""
    net = GIHTransformer(validate({"task": "induction"}).model, 3)
    assert net.names == ["100", "010", "001", "110", "101", "011"]
    with torch.no_grad():
        net.c.copy_(torch.tensor([1.0, -2.0, 0.0, 0.0, 2.0, 0.0]))
    got = net.subset_share().detach().tolist()
    assert got == pytest.approx([1 / 9, 4 / 9, 0.0, 0.0, 4 / 9, 0.0], abs=1e-7)


def test_block_effect_is_cohens_d_over_the_topic_classes():
    from toyformer.topic.theory import block_effect, word_pair_classes

    gen = torch.Generator().manual_seed(0)
    words = 12
    z = torch.zeros(NUM_SPECIALS + words, 3, dtype=torch.bool)
    z[NUM_SPECIALS + torch.arange(words), torch.arange(words) // 4] = True  # three topics of four words
    classes = word_pair_classes(z)
    same, diff = classes["same_topic"], classes["diff_topic"]
    m = torch.randn(len(z), len(z), generator=gen, dtype=torch.float64) + 2.0 * same.double()
    m[0, 0] = 1e6  # special ids and the diagonal are in neither class
    s, d = m[same].numpy(), m[diff].numpy()
    pooled = np.sqrt(((len(s) - 1) * s.var(ddof=1) + (len(d) - 1) * d.var(ddof=1)) / (len(s) + len(d) - 2))
    expected = (s.mean() - d.mean()) / pooled
    assert block_effect(m, classes, "wv")["wv_block_effect"] == pytest.approx(expected, rel=1e-9)
    assert 1.5 < expected < 2.5  # the planted shift of two standard deviations
    assert block_effect(3.0 * m + 7.0, classes, "wv")["wv_block_effect"] == pytest.approx(expected, rel=1e-9)
    flipped = block_effect(-m, classes, "qk")
    assert flipped == {"qk_block_effect": pytest.approx(-expected, rel=1e-9)}
