"""What a sweep found: ``results.csv`` (one row per member: the cell's axis values, the seed, final metrics, the
theory's scalar predictions, each claim's outcome) and ``summary.json`` (per cell: its status, the share of seeds
each claim held for, metric means with 95% intervals, the theory's prediction and whether its margin is a tie; and
the grid's own claims)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from toyformer.claims import all_checks
from toyformer.runs import atomic_write
from toyformer.sweep.local import ERROR, cell_dir, status
from toyformer.sweep.spec import TIE_SE, Cell, GridClaim, SweepConfig, literal


def _scalars(d: dict) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}


def tie(theory: dict) -> bool | None:
    """Whether the theory's margin between its best and runner-up subset is within TIE_SE Monte-Carlo standard
    errors of 0 (None when the theory states no margin)."""
    margin, se, table = theory.get("mi_margin"), theory.get("mi_margin_se"), theory.get("mi_modified")
    if margin is None or se is None or not table:
        return None
    best = max(table.values())
    return margin * best <= TIE_SE * se


def cell_summary(out: Path, cell: Cell) -> dict:
    state = status(out, cell)
    entry: dict[str, Any] = {"name": cell.name, "values": cell.values, "status": state}
    path = cell_dir(out, cell)
    if state == "failed":
        entry |= json.loads((path / ERROR).read_text())
    if not (path / "summary.json").is_file():
        return entry
    group = json.loads((path / "summary.json").read_text())
    theory = _scalars(group.get("theory", {}))
    entry |= {
        "theory": theory,
        "tie": tie(group.get("theory", {})),
        "claims": {c["name"]: c["share"] for c in all_checks(group)},
        "final": {k: v for k, v in group["final"].items() if "mean" in v},
        "counts": {k: v["counts"] for k, v in group["final"].items() if "counts" in v},
        "diverged": group["diverged"],
    }
    return entry


def grid_claims(spec: SweepConfig, entries: list[dict]) -> list[dict]:
    out = []
    for claim in spec.claims:
        chosen = [e for e in entries if all(e["values"][k] in v for k, v in claim.only.items())]
        out.append(_share_claim(claim, chosen) if claim.claim is not None else _trend_claim(claim, chosen))
    return out


def _share_claim(claim: GridClaim, entries: list[dict]) -> dict:
    picked, ties, missing = [], [], []
    for e in entries:
        if claim.claim not in e.get("claims", {}):
            missing.append(e["name"])
            continue
        margin = e["theory"].get("mi_margin")
        clear = not e["tie"] and margin is not None and margin >= claim.margin_min
        (picked if claim.where == "all" or clear else ties).append(e)
    held = [e["name"] for e in picked if claim.min_share <= e["claims"][claim.claim] <= claim.max_share]
    share = f">= {claim.min_share:.0%}" if claim.max_share == 1 else f"{claim.min_share:.0%}–{claim.max_share:.0%}"
    if claim.max_share == 0:
        share = "none"
    return {
        "name": claim.name,
        "ok": bool(picked) and len(held) == len(picked) and not missing,
        "cells": len(picked),
        "held": len(held),
        "failed": sorted({e["name"] for e in picked} - set(held)),
        "not_claimed": [e["name"] for e in ties],  # near-ties (where = "clear"): reported, not claimed
        "missing": missing,  # cells that failed or have no such claim
        "expected": f"{claim.claim!r} for {share} of seeds in every "
        + ("cell" if claim.where == "all" else f"cell with a clear margin >= {claim.margin_min:.0%}")
        + _only(claim),
    }


def _trend_claim(claim: GridClaim, entries: list[dict]) -> dict:
    """The metric's cell means against the axis, one least-squares line per combination of the other axes."""
    groups: dict[str, list[dict]] = {}
    missing = []
    for e in entries:
        if claim.metric not in e.get("final", {}):
            missing.append(e["name"])
            continue
        rest = {k: v for k, v in e["values"].items() if k != claim.along}
        groups.setdefault(json.dumps(rest, sort_keys=True), []).append(e)
    lines = []
    for key, cells in groups.items():
        x = np.array([float(e["values"][claim.along]) for e in cells])
        x = np.log10(x) if claim.log else x
        y = np.array([e["final"][claim.metric]["mean"] for e in cells])
        line = {"values": json.loads(key), "cells": [e["name"] for e in cells], "x": x.tolist(), "y": y.tolist()}
        if len(cells) >= 3 and np.ptp(x) > 0:
            slope, intercept = np.polyfit(x, y, 1)
            residual = y - (slope * x + intercept)
            total = float(((y - y.mean()) ** 2).sum())
            r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else 0.0
            sign = slope > 0 if claim.slope == "positive" else slope < 0
            line |= {"slope": float(slope), "r2": r2, "ok": bool(sign and r2 >= claim.r2_min)}
        else:  # two points always lie on a line: not a test of one
            line |= {"slope": None, "r2": None, "ok": False}
        lines.append(line)
    held = [line for line in lines if line["ok"]]
    axis = f"log10 {claim.along}" if claim.log else claim.along
    return {
        "name": claim.name,
        "ok": bool(lines) and len(held) == len(lines) and not missing,
        "cells": len(lines),  # here: the lines fitted, one per combination of the other axes
        "held": len(held),
        "failed": [line["cells"] for line in lines if not line["ok"]],
        "not_claimed": [],
        "missing": missing,
        "lines": lines,
        "expected": f"{claim.metric} against {axis}: a {claim.slope} slope with R² >= {claim.r2_min:g} along every "
        f"line of at least 3 cells" + _only(claim),
    }


def _only(claim: GridClaim) -> str:
    return "".join(f", {k} in {literal(v)}" for k, v in claim.only.items())


def rows(out: Path, spec: SweepConfig, grid: list[Cell]) -> list[dict]:
    table = []
    for cell in grid:
        base = {"cell": cell.name, **{k: literal(v) for k, v in cell.values.items()}}
        path = cell_dir(out, cell)
        error = json.loads((path / ERROR).read_text())["error"] if (path / ERROR).is_file() else ""
        for seed in spec.seeds:
            row = base | {"seed": seed, "error": error}
            member = path / f"seed-{seed}" / "summary.json"
            if member.is_file():
                s = json.loads(member.read_text())
                row |= {f"theory.{k}": v for k, v in _scalars(s.get("theory", {})).items()}
                row |= _scalars(s["final"])
                row |= {f"claim:{c['name']}": int(c["ok"]) for c in all_checks(s)}
            table.append(row)
    return table


def write(out: Path, spec: SweepConfig, grid: list[Cell]) -> dict:
    """results.csv and summary.json of the cells as they stand."""
    table = rows(out, spec, grid)
    columns = list(dict.fromkeys(k for row in table for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic_write(Path(out) / "results.csv", buffer.getvalue())
    entries = [cell_summary(out, c) for c in grid]
    summary = {
        "name": spec.name,
        "cells": entries,
        "done": sum(e["status"] == "done" for e in entries),
        "failed": [e["name"] for e in entries if e["status"] == "failed"],
        "checks": grid_claims(spec, entries),
    }
    atomic_write(Path(out) / "summary.json", json.dumps(summary, indent=2))
    return summary
