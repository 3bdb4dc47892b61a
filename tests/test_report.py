"""The report page's data: the matrices a run stores at each probe step are those of its model at that step (recomputed
from the checkpoint), float16 loses at most its stated share, a resumed run cuts them like its metrics; the page carries
exactly the run's metrics, claims and matrices and nothing from outside; a group's band is its members' statistics;
a sweep's cells link to pages that exist; `toyformer report` refuses what it cannot rebuild without writing."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from toyformer import tasks
from toyformer.cli import app
from toyformer.report.page import PAGE, page_data, scalars
from toyformer.runs import HALF_RANGE, MATRICES, Run, compact
from toyformer.train.loop import train
from toyformer.train.seeds import run_seeds

TOPIC = ["data.train_docs=200", "data.dev_docs=50", "theory.samples=200", "probes.docs=8"]
INDUCTION = ["data.sequences=300", "data.length=30", "theory.kernels=100", "train.checkpoints=3"]


def _half_bound(fresh: np.ndarray) -> np.ndarray:
    """The most float16 rounding can move each entry (half a unit in the last of its 11 bits, or of a subnormal)."""
    return np.abs(fresh) * 2.0**-11 + 2.0**-25


def _assert_stored(stored: np.ndarray, fresh: np.ndarray) -> None:
    fresh = np.asarray(fresh, dtype=np.float32)
    assert stored.shape == fresh.shape
    if stored.dtype == np.float16:
        ok = np.isnan(fresh) | (np.abs(stored.astype(np.float64) - fresh) <= _half_bound(fresh))
        assert ok.all()
    elif np.issubdtype(stored.dtype, np.floating):
        np.testing.assert_array_equal(stored, fresh)
    else:
        np.testing.assert_array_equal(stored, fresh.astype(stored.dtype))


def _recomputed(run: Run, cfg, step: int) -> dict[str, np.ndarray]:
    """The experiment's matrices on the model of the checkpoint at ``step`` (the state after ``step`` updates, the
    one the probe at ``step`` reads)."""
    experiment = tasks.build(cfg)
    state = run.load_checkpoint(run.path / "checkpoints" / f"step-{step:08d}.pt")
    experiment.model.load_state_dict(state["model"])
    experiment.model.eval()
    return {k: v.detach().cpu().numpy() for k, v in experiment.matrices().items()}


def test_topic_matrices_are_the_model_at_each_stored_step(tmp_path):
    # regime D: W^V and the QK circuit both move; every step probed, a checkpoint at 1, 3, 10 and 30
    cfg = tasks.load("topic/s4", [*TOPIC, "train.steps=30", "train.probes=40", "train.checkpoints=4"], seed=0)
    run = train(tasks.build(cfg), tmp_path / "run", figures=False)
    stored = run.matrices()
    assert sorted(stored) == [r["step"] for r in run.metrics()]  # one entry per probe step, no more
    checkpoints = [int(p.stem.split("-")[1]) for p in run.checkpoints()]
    assert checkpoints == [0, 1, 3, 10, 30]
    for step in checkpoints:
        fresh = _recomputed(run, cfg, step)
        assert set(stored[step]) == set(fresh) >= {"ov", "qk", "attention", "words", "word_topic"}
        for name, array in fresh.items():
            _assert_stored(stored[step][name], array)
    # the OV circuit is W^V itself over the words grouped by topic, and it did move
    w = stored[30]["words"]
    experiment = tasks.build(cfg)
    experiment.model.load_state_dict(run.load_checkpoint()["model"])
    from toyformer.topic.probes import ov_circuit

    full = ov_circuit(experiment.model).detach().numpy()[w][:, w]
    _assert_stored(stored[30]["ov"], full)
    assert np.abs(stored[30]["ov"].astype(float) - stored[0]["ov"].astype(float)).max() > 0.01
    # words arrive grouped by topic: the topic labels never go back
    assert (np.diff(stored[30]["word_topic"]) >= 0).all()


def test_induction_copy_weights_are_the_model_at_each_stored_step(tmp_path):
    cfg = tasks.load("induction/grid-base", [*INDUCTION, "train.stages.0.steps=12", "train.probes=20"])
    run = train(tasks.build(cfg), tmp_path / "run", figures=False)
    stored = run.matrices()
    for step in [int(p.stem.split("-")[1]) for p in run.checkpoints()]:
        fresh = _recomputed(run, cfg, step)
        for name, array in fresh.items():
            _assert_stored(stored[step][name], array)
        weights = stored[step]["copy_weights"].astype(np.float64)
        np.testing.assert_allclose(weights.sum(1), 1.0, atol=3e-3)  # a distribution over the positions
    assert stored[0]["chains"].shape == stored[0]["copy_weights"].shape == (3, 30)


@pytest.mark.parametrize("scale", [2.0**-10, 1e-3, 0.5, 7.0, 3e3, 6e4])
def test_float16_storage_loses_at_most_its_stated_share(scale):
    gen = np.random.default_rng(0)
    x = (gen.standard_normal((64, 64)) * scale / 4).astype(np.float32)
    x[0, 0] = scale  # the largest entry sets the range
    stored = compact(x)
    assert stored.dtype == np.float16
    error = np.abs(stored.astype(np.float64) - x)
    assert (error <= _half_bound(x)).all()
    assert error.max() <= (2.0**-11 + 2.0**-15) * scale  # under 0.05% of the largest entry: invisible


@pytest.mark.parametrize("scale", [1e-5, 1e5])
def test_values_float16_cannot_hold_stay_exact(scale):
    x = np.full((3, 3), scale, dtype=np.float32)
    assert not HALF_RANGE[0] <= scale <= HALF_RANGE[1]
    stored = compact(x)
    assert stored.dtype == np.float32 and (stored == x).all()


def test_integers_and_nan_are_kept():
    assert compact(torch.tensor([[1, 200000]])).dtype == np.int32
    stored = compact(np.array([np.nan, 1.0, -2.0]))
    assert np.isnan(stored[0]) and list(stored[1:]) == [1.0, -2.0]


def test_matrices_wait_for_a_checkpoint_and_resume_cuts_them(tmp_path):
    run = Run(tmp_path)
    run.add_matrices(0, {"a": np.ones((2, 2))})
    run.add_matrices(5, {"a": np.zeros((2, 2))})
    assert not (tmp_path / MATRICES).exists()  # kept until the next checkpoint
    run.save_checkpoint(6, {"step": 6})
    assert sorted(Run(tmp_path).matrices()) == [0, 5]
    run.add_matrices(9, {"a": np.zeros((2, 2))})  # lost with the process: the checkpoint at 6 resumes before it
    resumed = Run(tmp_path)
    resumed.truncate_probes(5)
    assert sorted(resumed.matrices()) == [0]
    (tmp_path / MATRICES).write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match="unreadable"):
        Run(tmp_path).matrices()


def test_a_run_page_carries_the_run_and_nothing_from_outside(tmp_path):
    cfg = tasks.load("topic/s5-adam", [*TOPIC, "train.steps=20", "train.probes=6"])
    run = train(tasks.build(cfg), tmp_path / "run")
    text = (run.path / PAGE).read_text()
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # no script, style or image from afar
    assert "<link" not in text and "@import" not in text
    data = page_data(run.path / PAGE)
    records = run.metrics()
    assert data["steps"] == [r["step"] for r in records]
    for name, values in data["scalars"].items():
        assert values == [scalars(r).get(name) for r in records], name
    assert set(data["scalars"]) == {k for r in records for k in scalars(r)}  # every tracked curve
    shown = {s for panel in data["curves"] for s in panel["series"]}
    assert shown == set(data["scalars"])
    summary = run.summary()
    claims = summary["checks"] + summary["sanity_checks"]
    assert [(c["name"], c["ok"], c["measured"]) for c in data["claims"]] == [
        (c["name"], c["ok"], c["measured"]) for c in claims
    ]
    stored = run.matrices()
    ov = data["matrices"]["ov"]["steps"]
    for k, step in enumerate(data["steps"]):
        assert ov[k]["shape"] == list(stored[step]["ov"].shape)
    refs = {r["label"]: r["value"] for panel in data["curves"] for r in panel["refs"]}
    assert refs["theory: wv_same_topic"] == summary["theory"]["wv_same_topic"]
    assert data["views"][0]["matrix"] == "ov"
    assert (run.path / PAGE).stat().st_size < 3_000_000


def test_a_group_page_bands_are_its_members_statistics(tmp_path):
    cfg = tasks.load("topic/s4", [*TOPIC, "train.steps=20", "train.probes=6", "train.checkpoints=2"])
    out = run_seeds(cfg, tasks.task_of(cfg), [0, 1, 2], tmp_path / "group", figures=False)
    data = page_data(out / PAGE)
    members = [Run(out / f"seed-{s}") for s in (0, 1, 2)]
    assert [m["href"] for m in data["members"]] == [f"seed-{s}/{PAGE}" for s in (0, 1, 2)]
    assert all((out / m["href"]).is_file() for m in data["members"])
    values = np.array([[r["loss_dev"] for r in m.metrics()] for m in members])
    band = data["bands"]["loss_dev"]
    np.testing.assert_allclose(band["mean"], values.mean(0), rtol=1e-12)
    np.testing.assert_allclose(band["min"], values.min(0), rtol=1e-12)
    np.testing.assert_allclose(band["max"], values.max(0), rtol=1e-12)
    half = 1.96 * values.std(0, ddof=1) / math.sqrt(3)
    np.testing.assert_allclose(band["high"], values.mean(0) + half, rtol=1e-9)
    summary = json.loads((out / "summary.json").read_text())
    assert [c["share"] for c in data["claims"]] == [c["share"] for c in summary["checks"] + summary["sanity_checks"]]
    assert all(m["matrices"] is not None for m in data["members"])  # small members: carried for the picker


def test_report_rebuilds_pages_and_refuses_what_it_cannot(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.stderr and len(result.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    cfg = tasks.load("topic/s5-adam", [*TOPIC, "train.steps=10", "train.probes=4"])
    run = train(tasks.build(cfg), tmp_path / "run")
    page = run.path / PAGE
    before = page.read_bytes()
    page.unlink()
    result = runner.invoke(app, ["report", str(run.path)])
    assert result.exit_code == 0, result.output
    assert str(page) in result.stdout.splitlines()
    assert page.read_bytes() == before  # the same data gives the same page
    (run.path / MATRICES).write_bytes(b"\x00" * 20)  # damaged: refused, nothing rewritten
    page.unlink()
    result = runner.invoke(app, ["report", str(run.path)])
    assert result.exit_code == 2 and MATRICES in result.stderr and not page.exists()
    (run.path / "summary.json").unlink()  # not complete
    result = runner.invoke(app, ["report", str(run.path)])
    assert result.exit_code == 2 and "not complete" in result.stderr


def test_a_sweep_page_links_every_cell_to_its_page(tmp_path):
    spec = tmp_path / "tiny.toml"
    sets = ", ".join(f'"{s}"' for s in [*INDUCTION, "train.probes=4", "train.stages.0.steps=6"])
    spec.write_text(
        f'name = "tiny"\nrecipe = "induction/grid-base"\nset = [{sets}]\nseeds = [0, 1]\n'
        '[axes]\n"data.alpha" = [0.1, 1.0]\n'
        '[[plots]]\nvalue = "gap_share"\nx = "data.alpha"\n'
    )
    result = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    data = page_data(tmp_path / "s" / PAGE)
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    (plot,) = data["plots"]
    cells = {c["name"]: c for panel in plot["panels"] for c in panel["cells"]}
    assert sorted(cells) == ["cell-000", "cell-001"]
    for entry in summary["cells"]:
        cell = cells[entry["name"]]
        assert (tmp_path / "s" / cell["href"]).is_file()
        assert cell["value"] == entry["final"]["gap_share"]["mean"]
        assert f"gap_share: {entry['final']['gap_share']['mean']:.4g}" in cell["tip"]
