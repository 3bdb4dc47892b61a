"""A run killed with SIGKILL and resumed ends with exactly the numbers of an uninterrupted run (CPU), and the same
report: its matrices and its page."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from toyformer.cli import app
from toyformer.report.page import PAGE, page_data
from toyformer.runs import Run

# Regime D exercises Adam's state and trained attention; fresh masks per step exercise the (seed, step) stream.
SETTING = [
    "data.train_docs=200",
    "data.dev_docs=40",
    "theory.samples=200",
    "probes.docs=8",
    "train.steps=300",
    "train.probes=20",
    "train.checkpoints=10",
    "masking.static=false",
]


def _args(out: Path) -> list[str]:
    return ["run", "topic/s5-adam", "--out", str(out), *sum((["--set", s] for s in SETTING), [])]


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def _cli(*args: str) -> subprocess.Popen:
    # Every run in its own process with the same thread count: float reductions depend on it.
    return subprocess.Popen(
        [sys.executable, "-m", "toyformer.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    whole = tmp_path / "whole"
    assert _cli(*_args(whole)).wait() == 0

    cut = tmp_path / "cut"
    proc = _cli(*_args(cut))
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a mid-run checkpoint exists
        steps = [int(p.stem.split("-")[1]) for p in (cut / "checkpoints").glob("step-*.pt")] if cut.exists() else []
        if steps and max(steps) >= 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "summary.json").exists(), "the run finished before it could be killed"
    assert Run(cut).meta()["status"] == "running"

    resumed = _cli("run", "--resume", str(cut))
    assert resumed.wait() == 0, resumed.stderr.read()
    assert _metrics(cut) == _metrics(whole)
    assert Run(cut).summary()["final"] == Run(whole).summary()["final"]
    assert Run(cut).meta()["status"] == "complete"
    # the report's data too: the matrices of every probe step, bit for bit, and so the same page
    matrices, expected = Run(cut).matrices(), Run(whole).matrices()
    assert list(matrices) == list(expected) == [r["step"] for r in _metrics(whole)]
    for step, arrays in expected.items():
        assert list(matrices[step]) == list(arrays)
        for name, array in arrays.items():
            assert matrices[step][name].dtype == array.dtype
            np.testing.assert_array_equal(matrices[step][name], array)
    assert page_data(cut / PAGE) == page_data(whole / PAGE)
    assert (cut / PAGE).read_bytes() == (whole / PAGE).read_bytes()

    again = CliRunner().invoke(app, ["run", "--resume", str(cut)])
    assert again.exit_code == 2 and "complete" in again.stderr


def test_metrics_line_cut_by_a_kill_is_dropped(tmp_path):
    run = Run(tmp_path)
    run.append_metrics({"step": 0, "x": 1.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "x"')  # a write interrupted mid-line
    assert run.metrics() == [{"step": 0, "x": 1.0}]
    run.truncate_metrics(1)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 0, "x": 1.0}\n'
