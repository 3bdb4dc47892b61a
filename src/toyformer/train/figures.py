"""Figures of a group of seeds: every metric a claim names, and the losses, over training as the members' mean with
a 95% interval of the mean (dark band) and the members' range (light band). Members that ended early (diverged or
stopped) count only at the steps they reached."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from toyformer.claims import lookup  # noqa: E402
from toyformer.config import parse_terms  # noqa: E402
from toyformer.runs import Run  # noqa: E402

LOSSES = ("loss_train", "loss_dev", "loss_val")


def curves(runs: list[Run], names: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Steps (T,) and, per name, a (members, T) array of its values (NaN where a member has none)."""
    records = [r.metrics() for r in runs]
    steps = sorted({rec["step"] for member in records for rec in member})
    where = {s: i for i, s in enumerate(steps)}
    out = {}
    for name in names:
        values = np.full((len(runs), len(steps)), np.nan)
        for e, member in enumerate(records):
            for rec in member:
                x = lookup(name, rec, {})
                if isinstance(x, int | float):
                    values[e, where[rec["step"]]] = x
        if np.isfinite(values).any():
            out[name] = values
    return np.array(steps), out


def band(values: np.ndarray) -> dict[str, np.ndarray]:
    """Per step, over the members that have a value: mean, the 95% interval of the mean (low, high), min, max."""
    ok = np.isfinite(values)
    count = ok.sum(0)
    mean = np.where(ok, values, 0.0).sum(0) / np.maximum(count, 1)
    std = np.sqrt((np.where(ok, values - mean, 0.0) ** 2).sum(0) / np.maximum(count - 1, 1))
    half = 1.96 * std / np.sqrt(np.maximum(count, 1))
    empty = count == 0
    return {
        k: np.where(empty, np.nan, v)
        for k, v in {
            "mean": mean,
            "low": mean - half,
            "high": mean + half,
            "min": np.where(ok, values, np.inf).min(0),
            "max": np.where(ok, values, -np.inf).max(0),
        }.items()
    }


def claim_metrics(cfg) -> list[tuple[str, list[str]]]:
    """(claim name, the metric names its two sides read), for claims that read metrics over training."""
    out = []
    for claim in cfg.claims:
        names = []
        for side in (claim.left, claim.right):
            names += [t for _, t in parse_terms(side) if not t[0].isdigit() and not t.startswith("theory.")]
        if names:
            out.append((claim.name, list(dict.fromkeys(names))))
    return out


def write_group_figures(
    out: Path, cfg, runs: list[Run], extra: tuple[tuple[str, tuple[str, ...]], ...] = ()
) -> list[str]:
    """One panel per claim, the family's ``extra`` (title, metrics) panels (``Task.group_panels``), and the losses."""
    panels = claim_metrics(cfg) + [(title, list(names)) for title, names in extra] + [("losses", list(LOSSES))]
    steps, data = curves(runs, sorted({n for _, names in panels for n in names}))
    panels = [(title, [n for n in names if n in data]) for title, names in panels]
    panels = [p for p in panels if p[1]]
    if not panels or len(steps) == 0:
        return []
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    x = steps + 1  # log axis: step 0 drawn at 1
    for ax, (title, names) in zip(axes.flat, panels, strict=False):
        for name in names:
            b = band(data[name])
            (line,) = ax.plot(x, b["mean"], label=name, lw=1.4)
            ax.fill_between(x, b["low"], b["high"], color=line.get_color(), alpha=0.35, lw=0)
            ax.fill_between(x, b["min"], b["max"], color=line.get_color(), alpha=0.12, lw=0)
        ax.set_xscale("log")
        ax.set_xlabel("step + 1")
        ax.set_title(title if len(title) <= 60 else title[:57] + "…", fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{cfg.name}: {len(runs)} seeds, mean with 95% interval (dark) and range (light)", fontsize=10)
    fig.tight_layout()
    path = Path(out) / "figures" / "curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]
