"""The local backend: every cell of a sweep trained in this process, one seed group after another (the seeds of a
cell stacked unless the sweep says ``sequential``). The sweep directory holds ``sweep.json`` (the resolved sweep and
its cells) and ``cells/cell-NNN/`` (each a seed group in the usual format). A cell is finished when its group's
summary.json exists, or failed when its ``error.json`` does; ``resume`` trains only what is neither. A cell that
raises, or whose every member diverged, is failed: its error is recorded and the sweep goes on, after ``retries``
fresh attempts."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from toyformer import tasks
from toyformer.config import ConfigError
from toyformer.runs import atomic_write
from toyformer.sweep.spec import Cell, SweepConfig, cells, load_sweep
from toyformer.train.seeds import GROUP, Group, resume_seeds, run_seeds

SWEEP = "sweep.json"
ERROR = "error.json"

# (cell, its number among the cells left to train, how many are left) → the on_step of its ensemble, or None
CellProgress = Callable[[Cell, int, int], Callable | None]


def cell_dir(out: Path, cell: Cell) -> Path:
    return Path(out) / "cells" / cell.name


def start(spec: SweepConfig, out: Path) -> list[Cell]:
    """Validate every cell, then create the sweep directory and write sweep.json."""
    grid = cells(spec)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: the directory exists and is not empty; pick a new one or --resume it")
    out.mkdir(parents=True, exist_ok=True)
    payload = {"sweep": spec.model_dump(mode="json"), "cells": [{"name": c.name, "values": c.values} for c in grid]}
    atomic_write(out / SWEEP, json.dumps(payload, indent=2))
    return grid


def reopen(out: Path) -> tuple[SweepConfig, list[Cell]]:
    """The sweep and cells of a sweep directory (from its sweep.json)."""
    path = Path(out) / SWEEP
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))["sweep"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a sweep directory, or a damaged one ({type(e).__name__})") from None
    spec = SweepConfig.model_validate(raw)
    return spec, cells(spec)


def status(out: Path, cell: Cell) -> str:
    """done, failed, started (a group directory exists) or new."""
    path = cell_dir(out, cell)
    if (path / ERROR).is_file():
        return "failed"
    if (path / "summary.json").is_file():
        return "done"
    return "started" if (path / GROUP).is_file() else "new"


def train_cells(
    out: Path, spec: SweepConfig, grid: list[Cell], retries: int = 0, progress: CellProgress | None = None
) -> None:
    """Train every cell that is neither done nor failed."""
    todo = [c for c in grid if status(out, c) in ("new", "started")]
    for k, cell in enumerate(todo):
        on_step = progress(cell, k, len(todo)) if progress else None
        for attempt in range(retries + 1):
            try:
                _train_cell(out, spec, cell, on_step)
                break
            except Exception as e:  # any failure of one cell is recorded; an interrupt stops the sweep
                if attempt < retries:
                    shutil.rmtree(cell_dir(out, cell), ignore_errors=True)  # a fresh attempt, not a resume
                    continue
                message = str(e).splitlines()[0] if str(e) else ""
                error = {"error": f"{type(e).__name__}: {message}", "attempts": attempt + 1}
                atomic_write(cell_dir(out, cell) / ERROR, json.dumps(error, indent=2))


def _train_cell(out: Path, spec: SweepConfig, cell: Cell, on_step: Callable | None) -> None:
    path = cell_dir(out, cell)
    task = tasks.task_of(cell.config)
    if (path / GROUP).is_file():
        group = Group.read(path)
        resume_seeds(path, group, tasks.validate(group.config), task, on_step)
    else:
        if path.exists():  # killed before its group.json: nothing of it was trained
            shutil.rmtree(path)
        run_seeds(cell.config, task, spec.seeds, path, sequential=spec.sequential, on_step=on_step)
    summary = json.loads((path / "summary.json").read_text())
    if len(summary["diverged"]) == summary["members"]:
        raise FloatingPointError(f"every member diverged (at steps of {summary['diverged']})")


def run_sweep(ref: str, out: Path, overrides: list[str] | None = None, **kw) -> Path:
    spec = load_sweep(ref, overrides)
    grid = start(spec, out)
    train_cells(out, spec, grid, **kw)
    return Path(out)


def resume_sweep(out: Path, **kw) -> Path:
    spec, grid = reopen(out)
    train_cells(out, spec, grid, **kw)
    return Path(out)
