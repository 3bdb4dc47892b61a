"""Phase diagrams: a heat-map of one value per cell (a final metric's mean over seeds, or ``claim:NAME``, the share
of seeds a claim held for) over two axes of the sweep, small multiples over a third. Each cell is annotated with
its value and the theory's prediction (S* and its margin, where the theory gives one); a cell whose margin is a
tie (``results.tie``) is hatched, a failed cell crossed out."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from toyformer.sweep.spec import Plot, SweepConfig, literal  # noqa: E402


def _value(entry: dict, name: str) -> float:
    if entry["status"] != "done":
        return float("nan")
    if name.startswith("claim:"):
        return entry["claims"].get(name[len("claim:") :], float("nan"))
    stat = entry["final"].get(name)
    return stat["mean"] if stat else float("nan")


def _note(entry: dict) -> str:
    theory = entry.get("theory", {})
    if "predicted_subset" not in theory:
        return ""
    margin = theory.get("mi_margin")
    return f"S*={{{theory['predicted_subset']}}}" + (f"\n{margin:.0%}" if margin is not None else "")


def coordinate(spec: SweepConfig, values: dict, axis: str) -> str:
    """A cell's tick on ``axis``. A zipped key is one axis with every zipped key: its own value may repeat along the
    zip (parents [1, 2, 3] at D = 2 and at D = 3), the zipped tuple does not."""
    if axis in spec.zip:
        return ", ".join(literal(values[k]) for k in spec.zip)
    return literal(values[axis])


def axis_label(spec: SweepConfig, axis: str) -> str:
    return ", ".join(spec.zip) if axis in spec.zip else axis


def panel_keys(spec: SweepConfig, plot: Plot) -> list[str]:
    """The keys not drawn on a plot's axes, one panel per combination of their values. Zipped keys are one axis:
    the others vary with the one drawn."""
    shown = {plot.x, plot.y}
    if shown & set(spec.zip):
        shown |= set(spec.zip)
    return [k for k in (*spec.axes, *spec.zip) if k not in shown]


def place(spec: SweepConfig, plot: Plot, values: dict) -> tuple[tuple[str, ...], str, str]:
    """Where a cell goes in a plot: its panel, its y tick and its x tick."""
    panel = tuple(literal(values[k]) for k in panel_keys(spec, plot))
    return panel, coordinate(spec, values, plot.y) if plot.y else "", coordinate(spec, values, plot.x)


def phase_diagram(spec: SweepConfig, summary: dict, plot: Plot, path: Path) -> Path:
    entries = summary["cells"]
    keys = panel_keys(spec, plot)
    where = [place(spec, plot, e["values"]) for e in entries]
    panels = list(dict.fromkeys(p for p, _, _ in where))
    ys = list(dict.fromkeys(y for _, y, _ in where))
    xs = list(dict.fromkeys(x for _, _, x in where))
    size = (len(panels) * (1.2 * len(xs) + 2.5), 0.8 * len(ys) + 2.2)
    fig, axes = plt.subplots(1, len(panels), figsize=size, squeeze=False)
    share = plot.value.startswith("claim:")
    ties = any(e.get("tie") for e in entries)
    for ax, panel in zip(axes[0], panels, strict=True):
        grid = np.full((len(ys), len(xs)), np.nan)
        cells = []
        for e, (p, y, x) in zip(entries, where, strict=True):
            if p != panel:
                continue
            i, j = ys.index(y), xs.index(x)
            grid[i, j] = _value(e, plot.value)
            cells.append((i, j, e))
        finite = grid[np.isfinite(grid)]
        low, high = (0.0, 1.0) if share or not finite.size else (float(finite.min()), float(finite.max()))
        for i, j, e in cells:
            text = "failed" if e["status"] == "failed" else f"{grid[i, j]:.3g}\n{_note(e)}".strip()
            dark = (grid[i, j] - low) < 0.5 * (high - low)  # the low end of viridis: white text reads there
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
            if e.get("tie"):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor="grey", lw=0))
            if e["status"] == "failed":
                ax.plot([j - 0.4, j + 0.4], [i - 0.4, i + 0.4], color="red", lw=1)
        image = ax.imshow(grid, cmap="viridis", vmin=low, vmax=high, aspect="auto")
        ax.set_xticks(range(len(xs)), xs, fontsize=8)
        ax.set_yticks(range(len(ys)), ys, fontsize=8)
        ax.set_xlabel(axis_label(spec, plot.x))
        if plot.y:
            ax.set_ylabel(axis_label(spec, plot.y))
        title = ", ".join(f"{k}={v}" for k, v in zip(keys, panel, strict=True)) or spec.name
        ax.set_title(title + ("\n(hatched: the theory's margin is a tie)" if ties else ""), fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8, label=plot.value)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_figures(out: Path, spec: SweepConfig, summary: dict) -> list[Path]:
    names = []
    for plot in spec.plots:
        slug = "".join(ch if ch.isalnum() else "-" for ch in plot.value.removeprefix("claim:")).strip("-")[:60]
        names.append(phase_diagram(spec, summary, plot, Path(out) / "figures" / f"phase-{slug}.png"))
    return names
