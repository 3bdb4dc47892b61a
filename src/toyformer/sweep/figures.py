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


def phase_diagram(spec: SweepConfig, summary: dict, plot: Plot, path: Path) -> Path:
    entries = summary["cells"]
    shown = {plot.x, plot.y}
    if shown & set(spec.zip):  # zipped keys are one axis: the others vary with the one drawn
        shown |= set(spec.zip)
    keys = [k for k in (*spec.axes, *spec.zip) if k not in shown]
    xs = list(dict.fromkeys(literal(e["values"][plot.x]) for e in entries))
    ys = list(dict.fromkeys(literal(e["values"][plot.y]) for e in entries)) if plot.y else [""]
    panels = list(dict.fromkeys(tuple(literal(e["values"][k]) for k in keys) for e in entries))
    size = (len(panels) * (1.2 * len(xs) + 2.5), 0.8 * len(ys) + 2.2)
    fig, axes = plt.subplots(1, len(panels), figsize=size, squeeze=False)
    share = plot.value.startswith("claim:")
    ties = any(e.get("tie") for e in entries)
    for ax, panel in zip(axes[0], panels, strict=True):
        grid = np.full((len(ys), len(xs)), np.nan)
        cells = []
        for e in entries:
            if tuple(literal(e["values"][k]) for k in keys) != panel:
                continue
            i = ys.index(literal(e["values"][plot.y])) if plot.y else 0
            j = xs.index(literal(e["values"][plot.x]))
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
        ax.set_xlabel(plot.x)
        if plot.y:
            ax.set_ylabel(plot.y)
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
