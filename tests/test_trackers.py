"""`toyformer run --log tensorboard` and `--log wandb`: read back with each tracker's own reader, every scalar of
metrics.jsonl is there at its probe step with its value, the figures are there as images, and the run directory is
unchanged beside them. A missing extra is a one-line error before anything trains."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from toyformer.cli import app
from toyformer.report.page import scalars
from toyformer.runs import Run
from toyformer.trackers import tag

SETTING = ["data.train_docs=200", "data.dev_docs=50", "theory.samples=200", "probes.docs=8", "train.steps=20"]
SETTING += ["train.probes=5"]


def _run(out: Path, *flags: str) -> Run:
    args = ["run", "topic/s5-adam", "--out", str(out), *(a for s in SETTING for a in ("--set", s)), *flags]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == str(out)  # the run directory is still the last line
    return Run(out)


def _expected(run: Run) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for record in run.metrics():
        for name, value in scalars(record).items():
            if value is not None:
                out.setdefault(tag(name), {})[record["step"]] = value
    return out


def test_tensorboard_holds_every_scalar_and_the_figures(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra (scripts/env.sh installs it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _run(tmp_path / "run", "--log", "tensorboard")
    events = EventAccumulator(str(run.path / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    expected = _expected(run)
    assert set(events.Tags()["scalars"]) == set(expected)
    for name, values in expected.items():
        logged = {e.step: e.value for e in events.Scalars(name)}
        assert logged.keys() == values.keys(), name
        for step, value in values.items():  # TensorBoard keeps float32
            assert logged[step] == np.float32(value), (name, step)
    figures = sorted(p.stem for p in (run.path / "figures").glob("*.png"))
    assert figures and sorted(t.removeprefix("figures/") for t in events.Tags()["images"]) == figures
    assert (run.path / "summary.json").is_file() and (run.path / "report.html").is_file()


def _wandb_records(path: Path):
    """The records of a .wandb file: a log of 32 KiB blocks whose chunks (4-byte checksum, 2-byte length, 1-byte
    type: full, first, middle, last) hold serialized Record protobufs, after a 7-byte file header."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_runs_offline_and_holds_every_scalar(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra (scripts/env.sh installs it)")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # nothing configured: offline
    monkeypatch.setenv("WANDB_API_KEY", "")  # and no credentials to reach for
    run = _run(tmp_path / "run", "--log", "wandb")
    (offline,) = sorted((run.path / "wandb").glob("offline-run-*"))
    (log,) = offline.glob("run-*.wandb")
    logged: dict[str, dict[int, float]] = {}
    images = set()
    for record in _wandb_records(log):
        if record.WhichOneof("record_type") != "history":
            continue
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            value = json.loads(item.value_json)
            if key.startswith("figures/"):  # an image: its fields (path, size, ...) under its key
                images.add("/".join(key.split("/")[:2]))
            elif not key.startswith("_"):
                logged.setdefault(key, {})[record.history.step.num] = value
    assert logged == _expected(run)  # every value exactly: W&B keeps float64
    figures = {f"figures/{p.stem}" for p in (run.path / "figures").glob("*.png")}
    assert figures and images == figures


def test_a_missing_tracker_is_a_one_line_error_before_training(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    result = CliRunner().invoke(app, ["run", "topic/s5-adam", "--out", str(tmp_path / "run"), "--log", "wandb"])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "pip install" in result.stderr
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(app, ["run", "topic/s5-adam", "--out", str(tmp_path / "run"), "--log", "mlflow"])
    assert result.exit_code == 2 and "tensorboard, wandb" in result.stderr and not (tmp_path / "run").exists()
