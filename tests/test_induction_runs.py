"""Induction runs end to end (paper 2; train/induction.py): recipes, staged training, the summary contract, resume,
evaluation under shift, and bad input."""

import json

import pytest
import torch
from typer.testing import CliRunner

from toyformer import config, tasks
from toyformer.claims import all_checks
from toyformer.cli import app
from toyformer.induction.experiment import InductionExperiment
from toyformer.runs import Run
from toyformer.train.loop import train

SMALL = ["data.sequences=300", "data.length=30", "theory.kernels=100", "train.probes=6", "train.checkpoints=3"]
INDUCTION = [n for n in config.recipe_names() if config._read_toml(n).get("task") == "induction"]


def _small(name: str, steps: int = 3, extra: list[str] | None = None):
    raw = config._read_toml(name)
    stages = raw.get("train", {}).get("stages", [{}])
    overrides = [*SMALL, *(f"train.stages.{k}.steps={steps}" for k in range(len(stages))), *(extra or [])]
    return tasks.load(name, overrides)


@pytest.mark.parametrize("name", INDUCTION)
def test_every_induction_recipe_runs_a_few_steps(tmp_path, name):
    cfg = _small(name)
    run = train(InductionExperiment(cfg), out=tmp_path / "run", figures=False)
    summary = run.summary()
    assert [c["name"] for c in all_checks(summary)] == [c.name for c in cfg.claims if c.kind != "sanity"] + [
        c.name for c in cfg.claims if c.kind == "sanity"
    ]
    assert all(c["kind"] == "sanity" for c in summary["sanity_checks"])
    final = summary["final"]
    names = {n for n in final["subset_share"]}
    assert all(len(n) == cfg.model.heads and set(n) <= {"0", "1"} for n in names)
    assert abs(sum(final["subset_share"].values()) - 1) < 1e-5
    for key in ("a", "loss_train", "loss_val", "loss_ref_gih", "loss_ref_bayes", "tv_to_gih"):
        assert isinstance(final[key], float), key
    assert set(final["copy_offset"]) == {str(h + 1) for h in range(cfg.model.heads)}
    if final["selected_subset"] != "none":
        assert all(int(o) in cfg.model.offsets() for o in final["selected_subset"].split(","))
    theory = summary["theory"]
    assert theory["predicted_subset"] in {",".join(map(str, s)) for s in _offset_subsets(cfg)}
    assert set(theory["mi_modified"]) == {",".join(map(str, s)) for s in _offset_subsets(cfg)}
    if len(_offset_subsets(cfg)) > 1:
        assert theory["mi_margin"] >= 0
    else:  # one candidate: no runner-up, no margin
        assert theory["mi_margin"] is None


def _offset_subsets(cfg):
    from toyformer.induction.theory import candidate_subsets

    m = cfg.model
    return candidate_subsets(m.layout, m.heads, m.degree, m.window)


def test_stages_move_only_their_own_groups(tmp_path):
    cfg = _small("induction/e1", steps=4)
    run = train(InductionExperiment(cfg), out=tmp_path / "run", figures=False)
    summary = run.summary()
    assert [s["groups"] for s in summary["stages"]] == [["c"], ["w"], ["a"]]
    assert [s["steps"] for s in summary["stages"]] == [[0, 4], [4, 8], [8, 12]]
    for stage in summary["stages"]:
        assert stage["only_own_groups"], stage
        assert all((moved > 0) == (g in stage["groups"]) for g, moved in stage["moved"].items())
    assert summary["final"]["stages_in_order"] == 1.0
    records = run.metrics()
    assert [r["stage"] for r in records if r["step"] in (0, 3, 4, 7, 8, 12)] == [0, 0, 1, 1, 2, 2]


def test_a_stage_that_moves_nothing_is_caught(tmp_path):
    """The stage check can fail: at lr 1e-30 the c stage's float32 updates round to nothing."""
    cfg = _small("induction/e1", steps=3, extra=["train.stages.0.lr=1e-30"])
    run = train(InductionExperiment(cfg), out=tmp_path / "run", figures=False)
    summary = run.summary()
    assert summary["stages"][0]["moved"]["c"] == 0.0 and not summary["stages"][0]["only_own_groups"]
    assert summary["final"]["stages_in_order"] == 0.0


def test_selection_on_a_short_e5(tmp_path):
    """500 full-batch steps of E5 on 2,000 chains: the selector already sits on S* = {1,2} and the model is close
    to the GIH built from its learned S and a."""
    cfg = tasks.load("induction/e5", ["data.sequences=2000", "train.stages.0.steps=500", "train.probes=10"])
    run = train(InductionExperiment(cfg), out=tmp_path / "run")
    summary = run.summary()
    final = summary["final"]
    assert summary["theory"]["predicted_subset"] == "1,2"
    assert final["selected_subset"] == "1,2" and final["subset_share"]["110"] > 0.99
    assert final["copy_offset"] == {"1": 1, "2": 2, "3": 3}
    assert 4.0 < final["a"] < 9.0  # official: 4.28 at step 100, 7.28 at step 1,000
    assert final["loss_val"] < final["loss_ref_unigram"] - 0.2
    assert abs(final["loss_val"] - final["loss_ref_gih"]) < 0.01 * final["loss_ref_gih"]
    assert final["tv_to_gih"] < 0.02
    assert (run.path / "figures" / "training.png").is_file() and (run.path / "figures" / "mechanism.png").is_file()


def test_resume_gives_the_uninterrupted_numbers(tmp_path):
    cfg = _small("induction/e1", steps=5)
    whole = train(InductionExperiment(cfg), out=tmp_path / "whole", figures=False)

    class Stop(Exception):
        pass

    def stop_at(step, record):
        if step == 9:
            raise Stop

    with pytest.raises(Stop):
        train(InductionExperiment(cfg), out=tmp_path / "cut", on_step=stop_at, figures=False)
    cut = Run.open(tmp_path / "cut")
    assert not cut.complete
    train(InductionExperiment(tasks.run_config(cut)), resume=cut, figures=False)
    assert cut.metrics() == whole.metrics()
    assert cut.summary()["final"] == whole.summary()["final"]


def test_eval_under_shift(tmp_path):
    cfg = tasks.load("induction/e5", ["data.sequences=1000", "train.stages.0.steps=200", "train.probes=4"])
    run = train(InductionExperiment(cfg), out=tmp_path / "run", figures=False)
    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(run.path), "--set", "data.length=200", "--set", "data.d=4", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["data"]["length"] == 200 and out["data"]["d"] == 4
    assert out["loss_val"] < out["loss_ref_unigram"]  # the learned induction head transfers to longer chains, d = 4
    assert out["loss_ref_oracle"] < out["loss_ref_bayes"] < out["loss_ref_unigram"] < out["loss_ref_uniform"]
    bad = runner.invoke(app, ["eval", str(run.path), "--set", "model.heads=2"])
    assert bad.exit_code == 2 and "data" in bad.output


BAD = [
    (["model.degree=4"], "model.degree"),
    (["data.parents=[1,7]"], "outside the offsets"),
    (["model.layout=paper"], "model.window"),
    (["data.parents=[0,1]"], "data.parents"),
    (["train.stages.0.groups=['qk']"], "simplified"),
    (["data.d=20", "data.parents=[1,2,3]"], "4096"),
    (["data.split=stream"], "batch_size"),
    (["data.first_order=true"], "parents"),
    (["train.stages.3.steps=2"], "not an index"),
    (["task=lm"], "task"),
    (["model.path=grouped", "data.targets=all", "data.batch_size=32"], "needs data.targets = 'last'"),
    (["model.fast=false", "model.path=windows"], "set one of them"),
    (["model.path=banded"], "model.path"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_induction_config_is_one_line_exit_2(tmp_path, overrides, message):
    out = tmp_path / "run"
    args = ["run", "induction/e5", "--out", str(out), *sum((["--set", o] for o in overrides), [])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_all_targets_path_trains(tmp_path):
    cfg = _small("induction/e5", steps=3, extra=["data.targets=all", "data.batch_size=32"])
    run = train(InductionExperiment(cfg), out=tmp_path / "run", figures=False)
    final = run.summary()["final"]
    assert "loss_val_last" in final and final["loss_val"] > 0
    assert torch.isfinite(torch.tensor(final["loss_train"]))
    assert run.meta()["plan"]["path"] in ("table", "windows")


@pytest.mark.parametrize("path", ["auto", "windows", "positions"])
def test_the_chosen_path_is_in_meta_and_every_path_trains_to_the_same_numbers(tmp_path, path):
    """meta.json names the path the model was computed by (auto: the cheapest estimate, grouped for last-token
    targets) with the estimates; a forced path gives the auto run's losses."""
    runs = {}
    for p in dict.fromkeys(("auto", path)):
        cfg = _small("induction/grid-base", steps=4, extra=[f"model.path={p}"])
        runs[p] = train(InductionExperiment(cfg), out=tmp_path / p, figures=False)
    plan = runs[path].meta()["plan"]
    assert plan["path"] == ("grouped" if path == "auto" else path)
    if path == "auto":  # the estimates of every path that can run, the chosen one the least
        assert min(plan["estimated_work"], key=plan["estimated_work"].get) == "grouped"
        assert set(plan["estimated_work"]) == {"grouped", "table", "windows", "positions"}
        assert plan["pairs"] <= plan["groups"] and plan["direct_heads"] == []
    elif path == "windows":  # forced: the groups were never built, so they have no estimate
        assert set(plan["estimated_work"]) == {"table", "windows", "positions"}
    else:  # nothing shared, nothing estimated
        assert "estimated_work" not in plan and plan["key_windows"] == 270 * 30
    want, got = (runs[p].summary()["final"] for p in ("auto", path))
    assert got["loss_val"] == pytest.approx(want["loss_val"], rel=1e-5)
    assert got["loss_train"] == pytest.approx(want["loss_train"], rel=1e-5)


def test_seed_group_counts_selected_subsets(tmp_path):
    from toyformer.train.seeds import run_seeds

    cfg = _small("induction/fewer-slots", steps=3)
    out = run_seeds(cfg, tasks.task_of(cfg), [0, 1], tmp_path / "g")
    plans = [Run(out / f"seed-{s}").meta()["plan"] for s in (0, 1)]
    assert plans[0] == plans[1] and plans[0]["path"] == "grouped" and plans[0]["shared_by_members"] == 2
    summary = json.loads((out / "summary.json").read_text())
    counts = summary["final"]["selected_subset"]["counts"]
    assert sum(counts.values()) == 2
    members = [Run(out / f"seed-{s}").summary()["final"]["selected_subset"] for s in (0, 1)]
    assert counts == {m: members.count(m) for m in set(members)}
    assert summary["final"]["a"]["min"] <= summary["final"]["a"]["mean"] <= summary["final"]["a"]["max"]
