"""Automatic stage detection on metric curves (spec §6: the two stages of training).

A component "starts to move" at the first probe step where its distance from initialisation reaches a fixed share
(``onset_fraction``, default 10%) of the largest distance it reaches in the run. The share is relative, so the rule
is blind to the component's scale and to the optimiser; it is robust on log-spaced probe schedules because it reads
the whole curve, not a local slope. A component that never moves (frozen, or exactly at a fixed point) has no onset.
"""

from __future__ import annotations

from collections.abc import Sequence

STAGE_GROUPS = ("embedding", "value", "key", "query")  # the components whose onsets the topic runs report


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
