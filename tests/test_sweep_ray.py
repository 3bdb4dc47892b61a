"""Sweeps on the Ray backend, on real clusters: one started by the test with `ray start` (joined with --address),
and one started by the sweep itself. A sweep killed with SIGKILL part-way is resumed through Ray's own restore to
the results of an uninterrupted local sweep, without training finished cells again; failures are recorded as the
local backend records them; bad input is refused before anything is written."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_sweep import GRID, _cli, _sweep
from toyformer.cli import app
from toyformer.sweep.raytune import resources

RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster with one CPU and token authentication, as `ray start` makes it; stopped after."""
    port = _free_port()
    env = os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    head = [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"]
    proc = subprocess.Popen(
        [*head, "--disable-usage-stats"], env=env, start_new_session=True, stdout=subprocess.DEVNULL
    )
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 120
    while subprocess.run([RAY, "status", f"--address={address}"], env=env, capture_output=True).returncode:
        assert time.time() < deadline and proc.poll() is None, "the Ray head did not come up"
        time.sleep(1)
    yield address, env
    proc.terminate()  # `ray start --block` stops its cluster on SIGTERM
    try:
        proc.wait(60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything left of it


def test_a_killed_ray_sweep_resumes_through_rays_restore(tmp_path, cluster):
    address, env = cluster
    spec = _sweep(tmp_path, "killed", 300, GRID, "stack_members = 2\n")  # a trial per cell: they finish one by one
    assert _cli("sweep", str(spec), "--out", str(tmp_path / "whole")).wait() == 0  # the local backend, uninterrupted
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        [sys.executable, "-m", "toyformer.cli", "sweep", str(spec), "--backend", "ray", "--address", address]
        + ["--out", str(cut)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = cut / "cells" / "cell-000" / "summary.json"
    deadline = time.time() + 300
    while not first.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into the next cell
    proc.send_signal(signal.SIGKILL)  # the driver only: the cluster lives on and ends the trials it ran
    proc.wait()
    assert first.is_file() and not (cut / "results.csv").exists()
    done = {p.parent.name: p.stat().st_mtime_ns for p in (cut / "cells").glob("cell-*/summary.json")}
    assert len(done) < 4
    experiment = cut / "ray" / "sweep"
    assert list(experiment.glob("experiment_state-*.json"))  # Ray saved its experiment before the kill
    # resumed on another cluster: a local one the sweep starts (one trial, one CPU as before)
    resumed = _cli("sweep", "--resume", str(cut), "--backend", "ray", "--workers", "1")
    assert resumed.wait() == 0
    for name, mtime in done.items():  # finished cells were not trained again
        assert (cut / "cells" / name / "summary.json").stat().st_mtime_ns == mtime
    assert (cut / "results.csv").read_text() == (tmp_path / "whole" / "results.csv").read_text()
    trials = [p.name.split("_")[1] for p in experiment.glob("trial_*")]
    assert len(set(trials)) == 1 and len(trials) >= 4  # one experiment, restored: not a fresh one per driver


def test_failing_cells_are_recorded_on_ray_as_locally(tmp_path):
    axes = '[axes]\n"data.alpha" = [0.1]\n"train.stages.0.lr" = [1.0, 1e30]\n"data.targets" = ["last", "all"]\n'
    spec = _sweep(tmp_path, "failing", 10, axes)
    summaries = {}
    for backend in ("local", "ray"):
        out = tmp_path / backend
        result = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(out), "--backend", backend])
        assert result.exit_code == 0, result.output
        summaries[backend] = json.loads((out / "summary.json").read_text())
    local, ray = summaries["local"], summaries["ray"]
    assert ray["failed"] == local["failed"] == ["cell-001", "cell-002", "cell-003"]
    for a, b in zip(local["cells"], ray["cells"], strict=True):
        assert (a["status"], a.get("error"), a.get("attempts")) == (b["status"], b.get("error"), b.get("attempts"))
    assert ray["cells"][0]["status"] == "done"
    assert ray["cells"][1]["error"].startswith("ConfigError: a stacked ensemble of induction models")


def test_trial_resources_share_the_cluster():
    assert resources({"CPU": 2.0}, None) == (1, {"cpu": 2})
    assert resources({"CPU": 16.0}, None) == (8, {"cpu": 2})
    assert resources({"CPU": 16.0}, 3) == (3, {"cpu": 5})
    assert resources({"CPU": 16.0, "GPU": 1.0}, None) == (1, {"cpu": 16, "gpu": 1.0})
    assert resources({"CPU": 16.0, "GPU": 1.0}, 4) == (4, {"cpu": 4, "gpu": 0.25})
    assert resources({"CPU": 32.0, "GPU": 8.0}, 2) == (2, {"cpu": 16, "gpu": 4.0})


def test_bad_ray_options_are_one_line_errors_and_write_nothing(tmp_path):
    spec = _sweep(tmp_path, "bad", 5, GRID)
    cases = {
        "workers without ray": ["--workers", "2"],
        "address without ray": ["--address", "127.0.0.1:6379"],
        "no cluster there": ["--backend", "ray", "--address", f"127.0.0.1:{_free_port()}"],
        "not an address": ["--backend", "ray", "--address", "headnode"],
        "no workers": ["--backend", "ray", "--workers", "0"],
        "unknown backend": ["--backend", "slurm"],
    }
    for why, flags in cases.items():
        out = tmp_path / "out"
        result = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(out), *flags])
        assert result.exit_code == 2, (why, result.output)
        assert "\n" not in result.stderr.strip() and "Traceback" not in result.output, why
        assert not out.exists(), why
