"""Automatic stage detection on metric curves (docs/topic-structure.md §6: the two stages of training).

A component "starts to move" at the first probe step where its distance from initialisation reaches a fixed share
(``onset_fraction``, default 10%) of the largest distance it reaches in the run. The share is relative, so the rule
is blind to the component's scale and to the optimiser; it is robust on log-spaced probe schedules because it reads
the whole curve, not a local slope. A component that never moves (frozen, or exactly at a fixed point) has no onset.

The order of the two stages themselves is read on the structure curves (``reach_step``): the step where a block
contrast (same-topic minus different-topic, of W^V or of the attention) first reaches a share of its final value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

STAGE_GROUPS = ("embedding", "value", "key", "query")  # the components whose onsets the topic runs report
DISTANCE_CURVES = tuple(f"dist_{g}" for g in STAGE_GROUPS)  # their distances from initialisation, per probe step

# name → (left metric, right metric, fraction): the step where left − right first reaches fraction × its final value
CONTRAST_REACHES = {
    "wv_contrast_half_step": ("wv_same_topic", "wv_diff_topic", 0.5),
    "attn_contrast_tenth_step": ("attn_same_topic", "attn_diff_topic", 0.1),
}


def onset_step(
    steps: Sequence[int], distance: Sequence[float], fraction: float = 0.1, floor: float = 1e-8
) -> int | None:
    peak = max(distance, default=0.0)
    if peak <= floor:
        return None
    for step, value in zip(steps, distance, strict=True):
        if value >= fraction * peak:
            return int(step)
    return None


def onsets(records: list[dict], groups: Sequence[str], fraction: float) -> dict[str, int | None]:
    """``onset_step_<group>`` for each group, from the ``dist_<group>`` curves of the metric records."""
    out = {}
    for group in groups:
        rows = [r for r in records if f"dist_{group}" in r]
        out[f"onset_step_{group}"] = onset_step([r["step"] for r in rows], [r[f"dist_{group}"] for r in rows], fraction)
    return out


def reach_step(steps: Sequence[int], values: Sequence[float], fraction: float) -> int | None:
    """The first probe step at which a curve reaches ``fraction`` of its final value.

    The final value is the last one (the curve at the last probe step). A step reaches it when its value is at least
    ``fraction`` × final (inclusive: a value equal to the threshold counts). The whole curve is scanned from the
    start, so a non-monotone curve gives its first crossing, even if it later falls back below. A curve whose final
    value is non-finite or <= 0 (no structure at the end, or the opposite one) has no such step: None; so has an
    empty curve. With 0 < fraction <= 1 and a positive final value the last step always qualifies.
    """
    if len(steps) != len(values):
        raise ValueError(f"reach_step: {len(steps)} steps but {len(values)} values")
    if not values:
        return None
    final = float(values[-1])
    if not math.isfinite(final) or final <= 0:
        return None
    threshold = fraction * final
    for step, value in zip(steps, values, strict=True):
        if value >= threshold:  # NaN compares False: such a probe never counts
            return int(step)
    return None


def contrast_reaches(records: list[dict], reaches: dict[str, tuple[str, str, float]]) -> dict[str, int | None]:
    """For each ``name: (left, right, fraction)``, ``reach_step`` of the curve left − right over the metric records
    that carry both; a name whose metrics no record carries is left out."""
    out = {}
    for name, (left, right, fraction) in reaches.items():
        rows = [r for r in records if left in r and right in r]
        if rows:
            out[name] = reach_step([r["step"] for r in rows], [r[left] - r[right] for r in rows], fraction)
    return out
