"""A sweep's report.html (``toyformer.report.page``): the grid's claims, and each phase diagram of the sweep as an
interactive heat-map: a cell's colour is its value, hovering shows its numbers (the value, the theory's S* and
margin, each claim's share of seeds, the metric means), and a click opens the cell's own page, its seed group's."""

from __future__ import annotations

from pathlib import Path

from toyformer.report.page import PAGE, clean, document
from toyformer.runs import atomic_write
from toyformer.sweep.figures import _note, _value, axis_label, panel_keys, place
from toyformer.sweep.spec import SweepConfig, literal

TIP_METRICS = 10  # metric means a cell's hover text lists at most


def _tip(entry: dict, value: float, label: str) -> str:
    lines = [f"{entry['name']}: {_label(entry)}", f"{label}: {_fmt(value)}", f"status: {entry['status']}"]
    if entry.get("error"):
        lines.append(f"error: {entry['error']}")
    theory = entry.get("theory", {})
    if "predicted_subset" in theory:
        margin = theory.get("mi_margin")
        lines.append(f"theory S* = {{{theory['predicted_subset']}}}" + (f", margin {margin:.1%}" if margin else ""))
    if entry.get("tie"):
        lines.append("the theory's margin is a tie (within two Monte-Carlo errors)")
    for name, share in entry.get("claims", {}).items():
        lines.append(f"{share:.0%} of seeds: {name}")
    for name, counts in entry.get("counts", {}).items():
        lines.append(f"{name}: " + ", ".join(f"{{{k}}} ×{n}" for k, n in counts.items()))
    for name, stat in list(entry.get("final", {}).items())[:TIP_METRICS]:
        lines.append(f"{name}: {_fmt(stat['mean'])} (95% {_fmt(stat['ci95'][0])} … {_fmt(stat['ci95'][1])})")
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "—" if x is None or x != x else f"{x:.4g}"


def _label(entry: dict) -> str:
    return ", ".join(f"{k}={literal(v)}" for k, v in entry["values"].items())


def _href(entry: dict) -> str:
    return f"cells/{entry['name']}/{PAGE}"


def payload(spec: SweepConfig, summary: dict) -> dict:
    entries = summary["cells"]
    plots = []
    for k, plot in enumerate(spec.plots):
        share = plot.value.startswith("claim:")
        keys = panel_keys(spec, plot)
        where = [place(spec, plot, e["values"]) for e in entries]
        ys = list(dict.fromkeys(y for _, y, _ in where))
        xs = list(dict.fromkeys(x for _, _, x in where))
        panels = []
        for panel in dict.fromkeys(p for p, _, _ in where):
            cells = []
            for e, (p, y, x) in zip(entries, where, strict=True):
                if p != panel:
                    continue
                value = _value(e, plot.value)
                cells.append(
                    {
                        "name": e["name"],
                        "i": ys.index(y),
                        "j": xs.index(x),
                        "value": value,
                        "status": e["status"],
                        "tie": bool(e.get("tie")),
                        "note": _note(e).replace("\n", " "),
                        "href": _href(e),
                        "tip": _tip(e, value, plot.value),
                    }
                )
            title = ", ".join(f"{key}={v}" for key, v in zip(keys, panel, strict=True)) or spec.name
            panels.append({"title": title, "xs": xs, "ys": ys, "cells": cells})
        plots.append(
            {
                "id": k,
                "title": plot.value,
                "value": plot.value,
                "share": share,
                "x": axis_label(spec, plot.x),
                "y": axis_label(spec, plot.y) if plot.y else "",
                "panels": panels,
            }
        )
    cells = [
        {"name": e["name"], "label": _label(e), "status": e["status"], "error": e.get("error"), "href": _href(e)}
        for e in entries
    ]
    return clean(
        {
            "kind": "sweep",
            "title": spec.name,
            "subtitle": f"{summary['done']} of {len(entries)} cells done · seeds {', '.join(map(str, spec.seeds))}",
            "notes": [f"failed cells: {', '.join(summary['failed'])}"] if summary["failed"] else [],
            "checks": summary["checks"],
            "plots": plots,
            "cells": cells,
            "figures": [],
            "up": None,
        }
    )


def write_page(out: Path, spec: SweepConfig, summary: dict) -> Path:
    data = payload(spec, summary)
    data["figures"] = sorted(p.name for p in (Path(out) / "figures").glob("*.png"))
    path = Path(out) / PAGE
    atomic_write(path, document(data))
    return path
