"""A run directory executes nothing when opened: checkpoints load with weights_only, so a pickle that would run
code is refused with a one-line error by resume, eval and report, and a truncated checkpoint is an error too."""

import pathlib
import shutil

import pytest
import torch
from typer.testing import CliRunner

from toyformer import tasks
from toyformer.cli import app
from toyformer.induction.experiment import InductionExperiment
from toyformer.train.loop import train

SMALL = ["data.sequences=300", "data.length=30", "theory.kernels=100", "train.probes=4", "train.checkpoints=3"]


class Planted:
    """Unpickling this object calls Path.touch on ``marker``: what a malicious shared run directory could do."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture
def finished(tmp_path):
    cfg = tasks.load("induction/grid-base", [*SMALL, "train.stages.0.steps=5"])
    return train(InductionExperiment(cfg), out=tmp_path / "run", figures=False).path


def _one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_a_checkpoint_that_would_run_code_is_refused_by_resume_eval_and_report(tmp_path, finished):
    marker = tmp_path / "pwned"
    probe = tmp_path / "probe.pt"  # the planted pickle really runs code when loaded the unsafe way
    torch.save({"model": Planted(tmp_path / "probe-marker")}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe-marker").exists()

    latest = sorted((finished / "checkpoints").glob("step-*.pt"))[-1]
    torch.save({"step": 5, "model": Planted(marker)}, latest)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(finished, unfinished)
    (unfinished / "summary.json").unlink()
    for args in (["run", "--resume", str(unfinished)], ["eval", str(finished)], ["report", str(finished)]):
        line = _one_line_error(args)
        assert "not a checkpoint that loads safely" in line, (args, line)
        assert not marker.exists(), args


def test_a_truncated_checkpoint_is_a_one_line_error(finished):
    latest = sorted((finished / "checkpoints").glob("step-*.pt"))[-1]
    latest.write_bytes(latest.read_bytes()[:100])
    assert "not a checkpoint that loads safely" in _one_line_error(["eval", str(finished)])
