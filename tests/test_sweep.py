"""Sweeps on the local backend: every cell a seed group whose numbers are its members' own, results.csv and
summary.json gathered from them, a SIGKILLed sweep resumed to the same results without training finished cells
again, a failing cell recorded while the others finish, bad sweeps refused before anything is written."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from test_ensemble import TOPIC_SMALL, _close
from toyformer import tasks
from toyformer.bench import spread, sweep_speed
from toyformer.cli import app
from toyformer.config import MEMORY_SHARE, machine_memory
from toyformer.runs import Run
from toyformer.sweep.figures import axis_label, coordinate, place
from toyformer.sweep.local import blocks, run_sweep, start
from toyformer.sweep.results import grid_claims
from toyformer.sweep.spec import SweepConfig, cells, load_sweep, sweep_names
from toyformer.train.loop import train
from toyformer.train.seeds import member_config

BASE = ["data.sequences=300", "theory.kernels=50", "train.probes=4", "train.checkpoints=2"]


def _sweep(tmp_path: Path, name: str, steps: int, axes: str, extra: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    overrides = ", ".join(f'"{o}"' for o in [*BASE, f"train.stages.0.steps={steps}"])
    path.write_text(
        f'name = "{name}"\nrecipe = "induction/grid-base"\nset = [{overrides}]\nseeds = [0, 1]\n{extra}\n{axes}\n'
        '[[plots]]\nvalue = "claim:the selected subset is the theory\'s S*"\nx = "data.alpha"\n'
    )
    return path


GRID = '[axes]\n"data.alpha" = [0.1, 1.0]\n[zip]\n"data.parents" = [[1, 2], [1, 3]]\n'
UNEVEN = '[zip]\n"data.d" = [2, 3]\n"data.length" = [50]\n'
CLAIM = (
    '[[claims]]\nname = "S*"\nclaim = "the selected subset is the theory\'s S*"\nmin_share = 0.5\nwhere = "clear"\n'
    "margin_min = 0.05\n"
)


def _csv(path: Path) -> list[dict]:
    with open(path / "results.csv") as f:
        return list(csv.DictReader(f))


def test_a_sweep_gathers_its_cells_members(tmp_path):
    spec = _sweep(tmp_path, "small", 15, GRID, CLAIM)
    result = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "s"
    assert result.stdout.strip().splitlines()[-1] == str(out)
    grid = cells(load_sweep(str(spec)))
    assert [c.values for c in grid] == [
        {"data.alpha": a, "data.parents": p} for a in (0.1, 1.0) for p in ([1, 2], [1, 3])
    ]
    rows = _csv(out)
    assert len(rows) == 4 * 2
    for row in rows:  # every row is its member's own summary
        member = json.loads((out / "cells" / row["cell"] / f"seed-{row['seed']}" / "summary.json").read_text())
        assert float(row["loss_val"]) == member["final"]["loss_val"]
        assert row["theory.predicted_subset"] == member["theory"]["predicted_subset"]
        ok = {c["name"]: c["ok"] for c in member["checks"]}
        assert int(row["claim:the selected subset is the theory's S*"]) == ok["the selected subset is the theory's S*"]
    summary = json.loads((out / "summary.json").read_text())
    for entry, cell in zip(summary["cells"], grid, strict=True):
        group = json.loads((out / "cells" / cell.name / "summary.json").read_text())
        share = next(c["share"] for c in group["checks"] if c["name"] == "the selected subset is the theory's S*")
        assert entry["claims"]["the selected subset is the theory's S*"] == share
        assert entry["theory"]["predicted_subset"] == ",".join(map(str, cell.values["data.parents"]))
    (claim,) = summary["checks"]
    clear = [e for e in summary["cells"] if not e["tie"] and e["theory"]["mi_margin"] >= 0.05]
    assert claim["cells"] == len(clear) and claim["cells"] + len(claim["not_claimed"]) == 4
    assert claim["ok"] == all(e["claims"]["the selected subset is the theory's S*"] >= 0.5 for e in clear)
    assert (out / "figures" / "phase-the-selected-subset-is-the-theory-s-S.png").stat().st_size > 1000


def _cli(*args: str) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # the uninterrupted and the resumed processes alike
    return subprocess.Popen([sys.executable, "-m", "toyformer.cli", *args], env=env, stdout=subprocess.DEVNULL)


def test_a_killed_sweep_resumes_to_the_same_results(tmp_path):
    spec = _sweep(tmp_path, "killed", 300, GRID, "stack_members = 2\n")  # a block per cell: cells finish one by one
    assert _cli("sweep", str(spec), "--out", str(tmp_path / "whole")).wait() == 0
    cut = tmp_path / "cut"
    proc = _cli("sweep", str(spec), "--out", str(cut))
    first = cut / "cells" / "cell-000" / "summary.json"
    deadline = time.time() + 300
    while not first.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into the next cell
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.is_file() and not (cut / "results.csv").exists()
    done = {p.parent.name: p.stat().st_mtime_ns for p in (cut / "cells").glob("cell-*/summary.json")}
    assert len(done) < 4
    assert _cli("sweep", "--resume", str(cut)).wait() == 0
    for name, mtime in done.items():  # finished cells were not trained again
        assert (cut / "cells" / name / "summary.json").stat().st_mtime_ns == mtime
    assert (cut / "results.csv").read_text() == (tmp_path / "whole" / "results.csv").read_text()


def test_failing_cells_are_recorded_and_the_others_finish(tmp_path):
    # lr 1e30: every member diverges; targets = 'all': the stacked ensemble raises when it is built (no grouped plan)
    axes = '[axes]\n"data.alpha" = [0.1]\n"train.stages.0.lr" = [1.0, 1e30]\n"data.targets" = ["last", "all"]\n'
    spec = _sweep(tmp_path, "failing", 10, axes)
    result = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(tmp_path / "s"), "--retries", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    good, all_targets, diverged, both = summary["cells"]
    assert good["status"] == "done" and summary["failed"] == [all_targets["name"], diverged["name"], both["name"]]
    assert diverged["error"].startswith("FloatingPointError: every member diverged") and diverged["attempts"] == 1
    for e in (all_targets, both):  # an exception: retried once afresh, then recorded with its message
        assert e["error"].startswith("ConfigError: a stacked ensemble of induction models") and e["attempts"] == 2
    rows = _csv(tmp_path / "s")
    assert [r["error"] != "" for r in rows] == [False, False, True, True, True, True, True, True]
    assert "failed cells" in result.stderr


def test_bad_sweeps_are_one_line_errors_and_write_nothing(tmp_path):
    cases = {
        "axis value": _sweep(tmp_path, "a", 5, '[axes]\n"data.alpha" = [0.1, -1.0]\n'),
        "unknown key": _sweep(tmp_path, "b", 5, '[axes]\n"data.colour" = [1]\n'),
        "zip lengths": _sweep(
            tmp_path, "c", 5, '[axes]\n"data.alpha" = [0.1]\n[zip]\n"data.d" = [2, 3]\n"data.length" = [50]\n'
        ),
        "plot axis": _sweep(tmp_path, "d", 5, '[axes]\n"data.d" = [3]\n'),
    }
    for why, spec in cases.items():
        out = tmp_path / f"out-{spec.stem}"
        result = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(out)])
        assert result.exit_code == 2, (why, result.output)
        assert "\n" not in result.stderr.strip() and "Traceback" not in result.output, why
        assert not out.exists(), why
    assert "sweep cell 1" in CliRunner().invoke(app, ["sweep", str(cases["axis value"])]).stderr
    result = CliRunner().invoke(app, ["sweep", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "not a sweep directory" in result.stderr


def test_shipped_sweeps_validate_every_cell():
    result = CliRunner().invoke(app, ["sweeps"])
    assert result.exit_code == 0 and "induction/selection-phase" in result.stdout
    spec = load_sweep("induction/selection-phase")
    grid = cells(spec)
    assert len(grid) >= 24 and len(spec.seeds) >= 8
    assert {tuple(c.values["data.parents"]) for c in grid} == {(1,), (2,), (1, 2), (1, 3), (2, 3), (1, 2, 3)}
    stage = cells(load_sweep("topic/stage-phase"))
    scales = sorted({c.values["model.init_scale"] for c in stage})
    assert scales[-1] / scales[0] >= 1e3 and {c.values["masking.keep_prob"] for c in stage} >= {0.0, 0.1}
    for name in sweep_names():  # every shipped sweep: each cell valid, each grid claim naming a claim of its cells
        spec = load_sweep(name)
        grid = cells(spec)
        names = {c.name for c in grid[0].config.claims}
        assert all(g.claim in names for g in spec.claims if g.claim), name
        assert spec.plots and spec.claims, name


STACKED = {  # cells that differ in data and initial values only: one stacked ensemble of every cell's seeds
    "induction": ("induction/grid-base", [*BASE, "train.stages.0.steps=12"], GRID),
    "topic": (
        "topic/s2",
        [*TOPIC_SMALL, "train.steps=10"],
        '[axes]\n"data.alpha" = [0.1, 0.3]\n"model.init_scale" = [0.01, 0.001]\n',
    ),
}


def test_default_blocks_follow_the_family_and_the_device(tmp_path):
    """Unless the sweep sets stack_members: on the CPU the induction step gains nothing from members beyond a cell's
    seeds (one block per cell), the topic step does (one block of every cell); on CUDA both stack up to 64."""
    for family, (recipe, overrides, axes) in STACKED.items():
        for device, want in (("cpu", [1, 1, 1, 1] if family == "induction" else [4]), ("cuda", [4])):
            path = tmp_path / f"{family}-{device}.toml"
            sets = ", ".join(f'"{o}"' for o in [*overrides, f"device={device}"])
            path.write_text(f'recipe = "{recipe}"\nset = [{sets}]\nseeds = [0, 1]\n{axes}')
            spec = load_sweep(str(path))
            assert [len(b.cells) for b in blocks(spec, cells(spec))] == want, (family, device)
    many = load_sweep(str(tmp_path / "topic-cpu.toml")).model_copy(update={"stack_members": 4})
    assert [len(b.cells) for b in blocks(many, cells(many))] == [2, 2]


@pytest.mark.parametrize("family", list(STACKED))
def test_stacked_cells_give_each_member_its_solo_numbers(tmp_path, family):
    recipe, overrides, axes = STACKED[family]
    path = tmp_path / "stacked.toml"
    sets = ", ".join(f'"{o}"' for o in overrides)
    path.write_text(f'recipe = "{recipe}"\nset = [{sets}]\nseeds = [0, 1]\nstack_members = 8\n{axes}')
    spec = load_sweep(str(path))
    grid = cells(spec)
    assert len(grid) == 4 and [len(b.cells) for b in blocks(spec, grid)] == [4]  # one ensemble of 8 members
    out = run_sweep(str(path), tmp_path / "s")
    for cell in grid:
        for seed in spec.seeds:
            solo = train(tasks.build(member_config(cell.config, seed)), tmp_path / f"solo-{cell.name}-{seed}")
            member = Run(out / "cells" / cell.name / f"seed-{seed}")
            # Members of different cells share one plan over the union of their windows, so a member's content
            # tables have other shapes than alone and their sums round differently; over the steps Adam's normalised
            # updates carry that rounding to about 1e-6 in the logits c (|c| ~ 0.1), far below any real difference.
            _close(member.metrics(), solo.metrics(), abs_=1e-6)
            assert member.summary()["theory"] == solo.summary()["theory"]
    if family == "induction":  # the block's members share one plan, and each member's meta says so
        plans = [Run(out / "cells" / c.name / f"seed-{s}").meta()["plan"] for c in grid for s in spec.seeds]
        assert all(p == plans[0] for p in plans) and plans[0]["shared_by_members"] == 8
    finals = {json.dumps(Run(out / "cells" / c.name / "seed-0").metrics()[-1]["loss_train"]) for c in grid}
    assert len(finals) == 4  # the cells are different settings, not copies


def test_stacked_members_must_fit_together(tmp_path):
    """Each member's data fits; 64 of them stacked in one block (or one seed group) do not: refused before anything
    is written, and a smaller block, or sequential seeds, is accepted."""
    cfg = tasks.load("induction/grid-base")
    per_member = MEMORY_SHARE * machine_memory() / 40  # a 40th of what a config may hold: fine alone, not 64 times
    sequences = int(per_member / (cfg.data_bytes() / cfg.data.sequences))
    sets = f'"data.sequences={sequences}"'
    spec = tmp_path / "big.toml"
    spec.write_text(
        f'recipe = "induction/grid-base"\nset = [{sets}]\nseeds = {list(range(8))}\nstack_members = 64\n[axes]\n'
        '"data.alpha" = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]\n'
    )
    result = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "stack_members = 64 needs about" in result.stderr, result.output
    assert "block-000" in result.stderr and not (tmp_path / "s").exists()
    ok = tmp_path / "ok"
    start(load_sweep(str(spec)).model_copy(update={"stack_members": 16}), ok)  # 2 cells of 8 seeds a block
    assert (ok / "sweep.json").is_file()
    seeds = ",".join(map(str, range(64)))
    result = CliRunner().invoke(
        app,
        [
            "run",
            "induction/grid-base",
            "--set",
            f"data.sequences={sequences}",
            "--seeds",
            seeds,
            "--out",
            str(tmp_path / "g"),
        ],
    )
    assert result.exit_code == 2 and "seeds = 64 needs about" in result.stderr, result.output
    assert "sequential" in result.stderr and not (tmp_path / "g").exists()


def _entries(ys: dict[tuple[float, float], float], share: dict[tuple[float, float], float]) -> list[dict]:
    """Cells over (scale, p) as results.cell_summary writes them: a metric's mean and one claim's share."""
    return [
        {
            "name": f"cell-{k:03d}",
            "values": {"scale": x, "p": p},
            "status": "done",
            "theory": {},
            "tie": None,
            "claims": {"aligned": share[(x, p)]},
            "final": {"onset": {"mean": y}},
        }
        for k, ((x, p), y) in enumerate(ys.items())
    ]


def _grid_spec(tmp_path: Path, claims: str) -> SweepConfig:
    path = tmp_path / "g.toml"
    path.write_text(
        'recipe = "induction/grid-base"\nseeds = [0]\n[axes]\n"data.alpha" = [0.1]\n"model.c_init" = [0.1]\n' + claims
    )
    raw = tomllib.loads(path.read_text())
    raw["axes"] = {"scale": [1e-1, 1e-2, 1e-3, 1e-4], "p": [0.0, 0.1]}  # names the entries use
    return SweepConfig.model_validate(raw)


def test_grid_claims_of_both_kinds_can_fail(tmp_path):
    claims = (
        '[[claims]]\nname = "null at p = 0"\nclaim = "aligned"\nmin_share = 0.0\nmax_share = 0.0\n'
        "only = { p = [0.0] }\n"
        '[[claims]]\nname = "aligned at p > 0"\nclaim = "aligned"\nonly = { p = [0.1] }\n'
        '[[claims]]\nname = "delay like log(1/scale)"\nmetric = "onset"\nalong = "scale"\nlog = true\n'
        'slope = "negative"\nr2_min = 0.9\nonly = { p = [0.1] }\n'
    )
    spec = _grid_spec(tmp_path, claims)
    assert SweepConfig.model_validate(spec.model_dump(mode="json")) == spec  # as sweep.json stores it
    scales = [1e-1, 1e-2, 1e-3, 1e-4]
    log_line = {(x, 0.1): 100 - 50 * np.log10(x) + (3 if i % 2 else -3) for i, x in enumerate(scales)}
    flat = {(x, 0.0): 500.0 for x in scales}
    share = {(x, p): float(p > 0) for x in scales for p in (0.0, 0.1)}
    null, aligned, trend = grid_claims(spec, _entries(flat | log_line, share))
    assert null["ok"] and null["cells"] == 4 and aligned["ok"] and aligned["cells"] == 4
    (line,) = trend["lines"]
    assert trend["ok"] and line["slope"] == pytest.approx(-50, rel=0.05) and line["r2"] > 0.99
    assert line["values"] == {"p": 0.1}
    # each of them fails when its cells say otherwise
    leak = share | {(1e-3, 0.0): 0.25}
    null, aligned, _ = grid_claims(spec, _entries(flat | log_line, leak))
    assert not null["ok"] and null["failed"] == ["cell-002"] and aligned["ok"]
    early = {(x, 0.1): 100 + 50 * np.log10(x) for x in scales}  # the delay shrinks as the init does
    assert not grid_claims(spec, _entries(flat | early, share))[2]["ok"]
    zigzag = {(x, 0.1): [100.0, 400.0, 120.0, 420.0][i] for i, x in enumerate(scales)}  # a slope, not a line
    (line,) = grid_claims(spec, _entries(flat | zigzag, share))[2]["lines"]
    assert line["slope"] < 0 and line["r2"] < 0.9 and not line["ok"]
    two = {k: v for k, v in log_line.items() if k[0] >= 1e-2}  # two points always make a line: no test
    (line,) = grid_claims(spec, _entries(flat | two, share))[2]["lines"]
    assert line["r2"] is None and not line["ok"]


def test_grid_claims_refuse_keys_that_do_nothing(tmp_path):
    bad = {
        "both kinds": 'claim = "aligned"\nmetric = "onset"\nalong = "scale"\n',
        "neither": "min_share = 0.5\n",
        "trend without an axis": 'metric = "onset"\n',
        "share with a slope": 'claim = "aligned"\nslope = "negative"\n',
        "trend with a share": 'metric = "onset"\nalong = "scale"\nmin_share = 0.5\n',
        "min above max": 'claim = "aligned"\nmin_share = 0.5\nmax_share = 0.2\n',
        "margin without clear": 'claim = "aligned"\nmargin_min = 0.05\n',
        "not an axis": 'claim = "aligned"\nonly = { colour = [1] }\n',
    }
    for why, body in bad.items():
        with pytest.raises(ValidationError):
            _grid_spec(tmp_path, f'[[claims]]\nname = "{why}"\n{body}')


def test_bench_times_a_sweep_against_the_shell_loop_of_the_same_cells(tmp_path):
    spec = _sweep(tmp_path, "timed", 10, '[axes]\n"data.alpha" = [0.1, 1.0]\n')
    path = tmp_path / "bench.json"
    kept = tmp_path / "kept"
    args = ["bench", "--sweep", str(spec), "--backends", "local", "--json", str(path), "--keep", str(kept)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (kept / "local" / "results.csv").is_file() and len(list((kept / "loop").iterdir())) == 2
    found = json.loads(path.read_text())
    assert found["cells"] == 2 and found["seeds"] == 2 and found["local_s"] > 0 and found["shell_loop_s"] > 0
    assert found["local_vs_shell_loop"] == pytest.approx(found["shell_loop_s"] / found["local_s"])
    # each member of the loop matches the sweep's: a loop that ran the base α = 0.1 for both cells would not
    assert found["max_final_loss_difference"] < 1e-5
    assert found["shell_loop_estimated"] is False and set(found["shell_loop_cell_s"]) == {"cell-000", "cell-001"}
    assert found["shell_loop_s"] == pytest.approx(sum(found["shell_loop_cell_s"].values()))
    bad_flags = (["--quick"], ["--backends", "slurm"], ["--device", "cuda"], ["--keep", str(kept)])
    no_gpu = ["--set", "device=cuda"] if not torch.cuda.is_available() else ["--quick"]
    for flags in (*bad_flags, ["--loop-cells", "0"], no_gpu):
        bad = CliRunner().invoke(app, ["bench", "--sweep", str(spec), *flags])
        assert bad.exit_code == 2 and "\n" not in bad.stderr.strip(), flags
    for flags in (["--set", "data.d=4"], ["--loop-cells", "2"]):
        assert CliRunner().invoke(app, ["bench", *flags]).exit_code == 2


def test_a_sampled_shell_loop_times_cells_spread_over_the_grid_and_scales_their_time(tmp_path):
    grid = list(range(28))
    assert spread(grid, 7) == [0, 4, 9, 14, 18, 22, 27] and spread(grid, 1) == [0] and spread(grid, 40) == grid
    spec = _sweep(tmp_path, "sampled", 5, '[axes]\n"data.alpha" = [0.1, 0.3, 1.0]\n')
    found = sweep_speed(str(spec), [], ("local",), loop_cells=2)
    assert found["shell_loop_estimated"] is True and set(found["shell_loop_cell_s"]) == {"cell-000", "cell-002"}
    assert found["shell_loop_s"] == pytest.approx(1.5 * sum(found["shell_loop_cell_s"].values()))
    assert found["max_final_loss_difference"] < 1e-5


def test_every_cell_of_a_shipped_sweep_has_its_own_place_in_each_phase_diagram():
    """A zipped key's value may repeat along the zip (selection-phase: parents [1, 2, 3] at D = 2 and at D = 3);
    its tick is the zipped tuple, so two cells never share a square and the diagram does not overprint them."""
    for name in sweep_names():
        spec = load_sweep(name)
        grid = cells(spec)
        for plot in spec.plots:
            assert len({place(spec, plot, c.values) for c in grid}) == len(grid), (name, plot.value)
    spec = load_sweep("induction/selection-phase")
    ticks = {coordinate(spec, c.values, "data.parents") for c in cells(spec)}
    assert {"[1, 2, 3], 2", "[1, 2, 3], 3"} <= ticks and axis_label(spec, "data.parents").endswith("model.degree")
