"""The local backend: every cell of a sweep trained in this process. Cells whose configs differ only in what their
family lets stacked members differ in (``Task.stack_keys``: data, initial values) train together as one stacked
ensemble, a block, every seed of every cell a member; a sequential sweep trains each cell's seeds one after another.
The sweep directory holds ``sweep.json`` (the resolved sweep and its cells), ``cells/cell-NNN/`` (each a seed group
in the usual format) and ``blocks/block-NNN/`` (a block's resumable state). A cell is finished when its group's
summary.json exists, or failed when its ``error.json`` does; ``resume`` trains only the blocks with a cell that is
neither. A block that raises fails its cells, a cell whose every member diverged fails alone: the error is recorded
and the sweep goes on, after ``retries`` fresh attempts of the block."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toyformer import tasks
from toyformer.config import ConfigError, check_members, validate_as
from toyformer.runs import Run, atomic_write
from toyformer.sweep.spec import Cell, SweepConfig, cells, load_sweep
from toyformer.train.ensemble import STATE, Ensemble, Member
from toyformer.train.seeds import GROUP, Group, member_config, resume_seeds, run_seeds, write_group

SWEEP = "sweep.json"
ERROR = "error.json"
STACK_MEMBERS = 64  # members of a block unless the sweep sets stack_members

# (block, its number among the blocks left to train, how many are left) → the on_step of its ensemble, or None
BlockProgress = Callable[["Block", int, int], Callable | None]


@dataclass
class Block:
    """Cells trained as one stacked ensemble: every seed of every cell a member. Its resumable state lives in
    ``blocks/<name>/``; each cell stays a seed group in the usual format."""

    name: str
    cells: list[Cell]
    seeds: list[int]

    @property
    def members(self) -> int:
        return len(self.cells) * len(self.seeds)


def blocks(spec: SweepConfig, grid: list[Cell]) -> list[Block]:
    """The grid cut into blocks: cells whose configs differ only in their family's ``Task.stack_keys`` (data,
    initial values) share one, at most ``spec.stack_members`` members each, in cell order; every cell its own
    block when the sweep is sequential or ``stack_members`` leaves room for one cell only."""
    per_block = max(1, stack_limit(spec, grid) // len(spec.seeds)) if not spec.sequential else 1
    kinds: dict[str, list[Cell]] = {}
    for cell in grid:
        kinds.setdefault(_shape(cell), []).append(cell)
    chunks = [group[i : i + per_block] for group in kinds.values() for i in range(0, len(group), per_block)]
    chunks.sort(key=lambda chunk: chunk[0].index)
    return [Block(f"block-{k:03d}", chunk, spec.seeds) for k, chunk in enumerate(chunks)]


def stack_limit(spec: SweepConfig, grid: list[Cell]) -> int:
    """Members per block: ``stack_members``, else STACK_MEMBERS, except on the CPU for a family whose step gains
    nothing from members beyond one cell's seeds (``Task.cpu_stacks_cells``, benchmarks/RESULTS.md)."""
    if spec.stack_members is not None:
        return spec.stack_members
    cpu = all(cell.config.device == "cpu" for cell in grid)
    return len(spec.seeds) if cpu and not tasks.task_of(grid[0].config).cpu_stacks_cells else STACK_MEMBERS


def _shape(cell: Cell) -> str:
    """The cell's config without what may differ inside one ensemble."""
    raw = cell.config.model_dump(mode="json", exclude_none=True)
    for key in ("name", "description", "seed", "seeds", "claims", *tasks.task_of(cell.config).stack_keys):
        *path, last = key.split(".")
        node = raw
        for part in path:
            node = node.get(part, {})
        node.pop(last, None)
    return json.dumps(raw, sort_keys=True)


def cell_dir(out: Path, cell: Cell) -> Path:
    return Path(out) / "cells" / cell.name


def start(spec: SweepConfig, out: Path) -> list[Cell]:
    """Validate every cell, then create the sweep directory and write sweep.json."""
    grid = cells(spec)
    for block in blocks(spec, grid) if not spec.sequential else []:
        try:
            check_members("stack_members", stack_limit(spec, grid), [c.config for c in block.cells for _ in spec.seeds])
        except ValueError as e:
            raise ConfigError(f"{block.name} ({', '.join(c.name for c in block.cells)}): {e}") from None
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


def unfinished(out: Path, cell: Cell) -> bool:
    """Neither done nor failed: a cell a sweep still has to train."""
    return status(out, cell) in ("new", "started")


def todo(out: Path, spec: SweepConfig, grid: list[Cell]) -> list[Block]:
    """The blocks with a cell neither done nor failed."""
    return [b for b in blocks(spec, grid) if any(unfinished(out, c) for c in b.cells)]


def train_cells(
    out: Path, spec: SweepConfig, grid: list[Cell], retries: int = 0, progress: BlockProgress | None = None
) -> None:
    """Train every block that has a cell neither done nor failed, one after another in this process."""
    left = todo(out, spec, grid)
    for k, block in enumerate(left):
        train_block(out, spec, block, retries, progress(block, k, len(left)) if progress else None)


def train_block(out: Path, spec: SweepConfig, block: Block, retries: int = 0, on_step: Callable | None = None) -> None:
    """One block from where it stands, ``retries`` fresh attempts after a failure, which is then recorded for its
    cells; then the cells whose every member diverged are recorded as failed."""
    for attempt in range(retries + 1):
        try:
            _train_block(out, spec, block, on_step)
            break
        except Exception as e:  # any failure of a block is recorded for its cells; an interrupt stops the sweep
            if attempt < retries:
                _clear(out, block)  # a fresh attempt, not a resume
                continue
            fail(out, block, e, attempt + 1)
    for cell in block.cells:  # a cell whose every member diverged found nothing
        path = cell_dir(out, cell)
        if (path / "summary.json").is_file() and not (path / ERROR).is_file():
            summary = json.loads((path / "summary.json").read_text())
            if summary["diverged"] and len(summary["diverged"]) == summary["members"]:
                _fail(out, cell, f"FloatingPointError: every member diverged (seeds {summary['diverged']})", 1)


def fail(out: Path, block: Block, error: BaseException, attempts: int) -> None:
    """Record an exception as the error of the block's unfinished cells."""
    message = str(error).splitlines()[0] if str(error) else ""
    for cell in block.cells:
        if unfinished(out, cell):
            _fail(out, cell, f"{type(error).__name__}: {message}", attempts)


def _fail(out: Path, cell: Cell, error: str, attempts: int) -> None:
    atomic_write(cell_dir(out, cell) / ERROR, json.dumps({"error": error, "attempts": attempts}, indent=2))


def _clear(out: Path, block: Block) -> None:
    shutil.rmtree(Path(out) / "blocks" / block.name, ignore_errors=True)
    for cell in block.cells:
        shutil.rmtree(cell_dir(out, cell), ignore_errors=True)


def _train_block(out: Path, spec: SweepConfig, block: Block, on_step: Callable | None) -> None:
    """The block's ensemble from its last state, or from the start; then each cell's group summary and figures. A
    sequential sweep trains its one cell's seeds one after another instead."""
    state = Path(out) / "blocks" / block.name
    task = tasks.task_of(block.cells[0].config)
    if spec.sequential:
        (cell,) = block.cells
        path = cell_dir(out, cell)
        if (path / GROUP).is_file():
            resume_seeds(path, Group.read(path), cell.config, task)
        else:
            run_seeds(cell.config, task, block.seeds, path, sequential=True)
        return
    if (state / STATE).is_file():
        members = []
        for cell in block.cells:
            for seed in block.seeds:
                run = Run.open(cell_dir(out, cell) / f"seed-{seed}")
                members.append(Member(seed, task.build(validate_as(type(cell.config), run.raw_config())), run))
        ensemble = Ensemble(members, state, task)
        start = ensemble.restore()
    else:  # never started, or killed before its first state: nothing was trained
        _clear(out, block)
        experiments = [(c, s, task.build(member_config(c.config, s))) for c in block.cells for s in block.seeds]
        for cell in block.cells:
            path = cell_dir(out, cell)
            path.mkdir(parents=True)
            config = cell.config.model_dump(mode="json", exclude_none=True)
            Group(block.seeds, config, stacked=True).write(path)
        members = [Member(s, x, Run.create(x.cfg, cell_dir(out, c) / f"seed-{s}")) for c, s, x in experiments]
        state.mkdir(parents=True)
        ensemble = Ensemble(members, state, task)
        ensemble.record_choices()
        start = 0
    ensemble.train(start, on_step)
    summaries = ensemble.finish()
    n = len(block.seeds)
    for i, cell in enumerate(block.cells):
        runs = [m.run for m in ensemble.members[i * n : (i + 1) * n]]
        write_group(cell_dir(out, cell), cell.config, task, runs, summaries[i * n : (i + 1) * n], figures=True)


def run_sweep(ref: str, out: Path, overrides: list[str] | None = None, train: Callable = train_cells, **kw) -> Path:
    """Start a sweep in ``out`` and train it with ``train`` (this module's ``train_cells``, or another backend's
    with the same first arguments); ``kw`` goes to ``train``."""
    spec = load_sweep(ref, overrides)
    grid = start(spec, out)
    train(out, spec, grid, **kw)
    return Path(out)


def resume_sweep(out: Path, train: Callable = train_cells, **kw) -> Path:
    spec, grid = reopen(out)
    train(out, spec, grid, **kw)
    return Path(out)
