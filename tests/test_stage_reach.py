"""``reach_step``: the first probe step at which a curve reaches a share of its final value (the stage order of
topic/s4), on hand-built curves; and ``contrast_reaches`` on metric records."""

import math

import pytest

from toyformer.topic.stages import CONTRAST_REACHES, contrast_reaches, reach_step

STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128]


def test_monotone_curve():
    values = [0.0, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 9.0, 10.0]  # final 10
    assert reach_step(STEPS, values, 0.5) == 16  # 6.0 is the first value >= 5
    assert reach_step(STEPS, values, 0.1) == 2  # 1.0 >= 1.0
    assert reach_step(STEPS, values, 0.01) == 1  # 0.5 >= 0.1
    assert reach_step(STEPS, values, 1.0) == 128  # only the final value itself


def test_threshold_met_with_equality():
    values = [0.0, 1.0, 2.0, 4.0]  # final 4: a tenth is 0.4, a half is 2.0, a quarter is 1.0
    steps = [0, 10, 20, 40]
    assert reach_step(steps, values, 0.5) == 20  # 2.0 >= 2.0 counts; '>' would give 40
    assert reach_step(steps, values, 0.25) == 10  # 1.0 >= 1.0
    assert reach_step(steps, values, 0.26) == 20
    assert reach_step([0, 5], [0.0, 0.2], 1.0) == 5


def test_non_monotone_curve_gives_the_first_crossing():
    # overshoots to 8, falls back to 2, ends at 4: a half of the final (2) is first met at step 2, not at the end
    values = [0.0, 1.0, 8.0, 3.0, 2.0, 1.5, 2.5, 3.5, 4.0]
    assert reach_step(STEPS, values, 0.5) == 2
    assert reach_step(STEPS, values, 0.25) == 1  # 1.0 >= 1.0
    assert reach_step(STEPS, values, 1.0) == 2  # 8 >= 4: the peak before the end counts
    # a dip below zero on the way does not matter, only the final value's sign
    assert reach_step([0, 1, 2, 3], [0.0, -3.0, 0.4, 1.0], 0.3) == 2


def test_final_not_positive_or_not_finite_has_no_step():
    assert reach_step(STEPS, [0.0, 1.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.1, 0.0], 0.5) is None  # final 0
    assert reach_step([0, 1, 2], [0.0, 1.0, -0.5], 0.1) is None  # final < 0, though the curve was positive
    assert reach_step([0, 1, 2], [0.0, 1.0, math.nan], 0.1) is None
    assert reach_step([0, 1, 2], [0.0, 1.0, math.inf], 0.1) is None
    assert reach_step([], [], 0.5) is None


def test_nan_on_the_way_is_skipped():
    assert reach_step([0, 1, 2, 3], [0.0, math.nan, 0.6, 1.0], 0.5) == 2


def test_lengths_must_match():
    with pytest.raises(ValueError):
        reach_step([0, 1], [0.0], 0.5)


def test_contrast_reaches_on_records():
    records = [
        {"step": 0, "wv_same_topic": 0.0, "wv_diff_topic": 0.0, "attn_same_topic": 0.010, "attn_diff_topic": 0.010},
        {"step": 10, "wv_same_topic": 3.0, "wv_diff_topic": 1.0, "attn_same_topic": 0.010, "attn_diff_topic": 0.010},
        {"step": 20, "wv_same_topic": 4.0, "wv_diff_topic": 1.0, "attn_same_topic": 0.0125, "attn_diff_topic": 0.010},
        {"step": 40, "wv_same_topic": 5.0, "wv_diff_topic": 1.0, "attn_same_topic": 0.020, "attn_diff_topic": 0.010},
    ]
    # W^V contrast 0, 2, 3, 4: half of 4 at step 10; attention contrast 0, 0, 0.0025, 0.01: a tenth at step 20
    out = contrast_reaches(records, CONTRAST_REACHES)
    assert out == pytest.approx({"wv_contrast_half_step": 10, "attn_contrast_tenth_step": 20})
    assert all(isinstance(v, int) for v in out.values())
    # records without attention metrics (uniform attention classes missing): only the W^V step is reported
    no_attn = [{k: v for k, v in r.items() if not k.startswith("attn_")} for r in records]
    assert contrast_reaches(no_attn, CONTRAST_REACHES) == {"wv_contrast_half_step": 10}
    assert contrast_reaches([{"step": 0, "loss_dev": 1.0}], CONTRAST_REACHES) == {}
