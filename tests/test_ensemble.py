"""Stacked seed ensembles against solo runs: every member gets the numbers its seed gets alone, per-member clipping,
early stopping and divergence stay with their member, the group aggregates and resumes."""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from toyformer import tasks
from toyformer.cli import app
from toyformer.induction.stacked import run_sums
from toyformer.runs import Run
from toyformer.train.ensemble import STATE, Ensemble, Member
from toyformer.train.figures import band
from toyformer.train.loop import train
from toyformer.train.seeds import Group, member_config, resume_seeds, run_seeds

TOPIC_SMALL = ["data.train_docs=400", "data.dev_docs=40", "theory.samples=50", "train.probes=6", "probes.docs=8"]
SETTINGS = {
    # uniform attention, fixed documents with static masks: the stacked-gather batch path
    "s2": ("topic/s2", TOPIC_SMALL + ["train.steps=12"]),
    # regime C: trained attention over a frozen topic-block W^V, whose few distinct value rows a solo model mixes
    # (members inside vmap mix their own W^V's rows)
    "s3": ("topic/s3", TOPIC_SMALL + ["train.steps=10"]),
    # trained attention, masks redrawn every step, two layers with LayerNorm and FFN: member batches stacked
    "two-layer": ("topic/s5-two-layer", TOPIC_SMALL + ["train.steps=8", "masking.static=false"]),
    # the induction model, full batch: one plan over all members' chains
    "e5": ("induction/e5", ["data.sequences=300", "data.length=40", "train.stages.0.steps=12", "train.probes=6"]),
    # the full variant (content logits, OV, LayerNorm: the classifier's per-sequence shift) in the paper layout
    "e5-full-paper": (
        "induction/e5",
        [
            "data.sequences=300",
            "data.length=40",
            "train.stages.0.steps=12",
            "train.probes=6",
            "model.variant=full",
            "model.layout=paper",
            "model.window=4",
            "train.stages.0.groups=['c','w','a','qk','ov','norm']",
        ],
    ),
    # a standard transformer (relative positions, MLP, LayerNorm), mini-batches, loss at every position
    "standard": (
        "induction/standard-attn2",
        [
            "train.steps=8",
            "train.probes=4",
            "data.sequences=120",
            "theory.kernels=100",
            "data.length=24",
            "model.positions=relative",
            "model.mlp=true",
            "model.layernorm=true",
        ],
    ),
    # d = 5 and four heads (span 7), where the dense (query × key) table is out of reach at real data sizes: the
    # groups path regardless (the table limit is lowered for this case in the test)
    "e5-d5-h4": (
        "induction/e5",
        [
            "data.sequences=300",
            "data.length=40",
            "train.stages.0.steps=12",
            "train.probes=6",
            "data.d=5",
            "data.parents=[1,3]",
            "model.heads=4",
            "model.degree=3",
        ],
    ),
    # mini-batches, a plan per step
    "e5-batches": (
        "induction/e5",
        ["data.sequences=300", "data.length=40", "data.batch_size=32", "train.stages.0.steps=10", "train.probes=6"],
    ),
}


def _same(a, b, rel: float, where, abs_: float = 1e-7) -> None:
    """Numbers within ``rel`` or ``abs_`` (float tolerance), everything else equal, through nested dicts and lists."""
    if isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in b:
            _same(a[key], b[key], rel, (*where, key), abs_)
    elif isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, rel, (*where, i), abs_)
    elif isinstance(b, float) and math.isfinite(b):
        assert a == pytest.approx(b, rel=rel, abs=abs_), where
    else:
        assert a == b, where


def _close(a: list[dict], b: list[dict], rel: float = 1e-4, abs_: float = 1e-7) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        _same(ra, rb, rel, (ra["step"],), abs_)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_members_match_solo_runs(tmp_path, name, monkeypatch):
    if name == "e5-d5-h4":
        monkeypatch.setattr("toyformer.induction.plan.TABLE_LIMIT", 1)
    recipe, overrides = SETTINGS[name]
    cfg = tasks.load(recipe, overrides)
    group = run_seeds(cfg, tasks.task_of(cfg), [0, 1, 2], tmp_path / "group", figures=False)
    for seed in (0, 2):
        solo = train(tasks.build(member_config(cfg, seed)), tmp_path / f"solo-{seed}", figures=False)
        member = Run(group / f"seed-{seed}")
        _close(member.metrics(), solo.metrics())
        assert member.summary()["final"].keys() == solo.summary()["final"].keys()
    a, b = Run(group / "seed-0").metrics()[-1], Run(group / "seed-1").metrics()[-1]
    assert a["loss_train"] != b["loss_train"]  # members are different seeds, not copies


def _ensemble(cfg, seeds, out):
    xs = [tasks.build(member_config(cfg, s)) for s in seeds]
    members = [Member(s, x, Run.create(x.cfg, out / f"seed-{s}")) for s, x in zip(seeds, xs, strict=True)]
    return Ensemble(members, out, tasks.task_of(cfg))


def test_a_diverging_member_is_frozen_and_the_others_are_untouched(tmp_path):
    cfg = tasks.load("topic/s2", TOPIC_SMALL + ["train.steps=10"])
    ens = _ensemble(cfg, [0, 1, 2], tmp_path / "g")
    with torch.no_grad():
        ens.stacked.blocks[0].attn.W_V[1, 0, 5, 7] = float("nan")  # member 1 is broken from the start
    before = ens.stacked.blocks[0].attn.W_V[1].clone()
    ens.train()
    summaries = ens.finish()
    assert summaries[1]["diverged_at_step"] == 0
    assert not any(c["ok"] for c in summaries[1]["checks"])
    assert torch.equal(ens.stacked.blocks[0].attn.W_V[1].isnan(), before.isnan())  # frozen: never updated
    assert [r["step"] for r in Run(tmp_path / "g" / "seed-1").metrics()] == [0]  # its run ends where it diverged
    for seed in (0, 2):
        solo = train(tasks.build(member_config(cfg, seed)), tmp_path / f"solo-{seed}", figures=False)
        _close(Run(tmp_path / "g" / f"seed-{seed}").metrics(), solo.metrics())
        assert "diverged_at_step" not in summaries[seed]


def test_clipping_and_early_stopping_act_per_member(tmp_path):
    # A clip far below the gradient norm: a global norm over all members would shrink every member differently
    # from its solo run. The stop loss is reached by some members at some probe step and not by others.
    overrides = ["data.sequences=300", "data.length=40", "train.stages.0.steps=40", "train.probes=12"]
    base = tasks.load("induction/e5", overrides + ["train.grad_clip=0.05"])
    probe = run_seeds(base, tasks.task_of(base), [0, 1, 2, 3], tmp_path / "probe", figures=False)
    lowest = [min(r["loss_train"] for r in Run(probe / f"seed-{s}").metrics()) for s in range(4)]
    stop = float(np.median(lowest))  # two members reach it at some probe step, two never do
    cfg = tasks.load("induction/e5", overrides + ["train.grad_clip=0.05", f"train.stop_loss={stop}"])
    group = run_seeds(cfg, tasks.task_of(cfg), [0, 1, 2, 3], tmp_path / "group", figures=False)
    stopped = []
    for seed in range(4):
        solo = train(tasks.build(member_config(cfg, seed)), tmp_path / f"solo-{seed}", figures=False)
        member = Run(group / f"seed-{seed}")
        _close(member.metrics(), solo.metrics())
        assert member.summary().get("stopped_at_step") == solo.summary().get("stopped_at_step")
        stopped.append("stopped_at_step" in solo.summary())
    assert any(stopped) and not all(stopped)
    assert json.loads((group / "summary.json").read_text())["stopped"] == [s for s in range(4) if stopped[s]]


def test_group_summary_aggregates_members(tmp_path):
    cfg = tasks.load("topic/s2", TOPIC_SMALL + ["train.steps=10"])
    group = run_seeds(cfg, tasks.task_of(cfg), [3, 4, 5, 6], tmp_path / "g")
    summary = json.loads((group / "summary.json").read_text())
    members = [Run(group / f"seed-{s}").summary() for s in (3, 4, 5, 6)]
    xs = np.array([m["final"]["wv_same_topic"] for m in members])
    agg = summary["final"]["wv_same_topic"]
    assert agg["mean"] == pytest.approx(xs.mean()) and agg["std"] == pytest.approx(xs.std(ddof=1))
    half = 1.96 * xs.std(ddof=1) / 2
    assert agg["ci95"] == pytest.approx([xs.mean() - half, xs.mean() + half])
    for i, check in enumerate(summary["checks"]):
        assert check["share"] == pytest.approx(np.mean([m["checks"][i]["ok"] for m in members]))
    assert summary["members"] == 4 and summary["diverged"] == []
    assert (group / "figures" / "curves.png").stat().st_size > 10_000


def test_band_skips_missing_members():
    values = np.array([[1.0, 2.0, np.nan], [3.0, 6.0, np.nan], [5.0, np.nan, np.nan]])
    b = band(values)
    assert b["mean"][:2] == pytest.approx([3.0, 4.0]) and np.isnan(b["mean"][2])
    assert b["high"][0] - b["mean"][0] == pytest.approx(1.96 * 2.0 / math.sqrt(3))
    assert b["min"][1] == 2.0 and b["max"][1] == 6.0


def test_interrupted_ensemble_resumes_to_the_same_numbers(tmp_path):
    cfg = tasks.load("topic/s2", TOPIC_SMALL + ["train.steps=12", "train.checkpoints=3"])
    whole = run_seeds(cfg, tasks.task_of(cfg), [0, 1], tmp_path / "whole", figures=False)

    def crash(step, records):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_seeds(cfg, tasks.task_of(cfg), [0, 1], tmp_path / "cut", on_step=crash, figures=False)
    assert (tmp_path / "cut" / STATE).is_file() and not (tmp_path / "cut" / "summary.json").exists()
    group = Group.read(tmp_path / "cut")
    resume_seeds(tmp_path / "cut", group, cfg, tasks.task_of(cfg))
    for seed in (0, 1):
        assert Run(tmp_path / "cut" / f"seed-{seed}").metrics() == Run(whole / f"seed-{seed}").metrics()


def test_cli_runs_a_stacked_ensemble(tmp_path):
    out = tmp_path / "g"
    result = CliRunner().invoke(
        app, ["run", "topic/s2", "--seeds", "0-2", "--out", str(out), "--set", "train.steps=5"] + _sets(TOPIC_SMALL)
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(out)
    group = json.loads((out / "group.json").read_text())
    assert group["stacked"] and group["seeds"] == [0, 1, 2]
    assert json.loads((out / "summary.json").read_text())["members"] == 3


def _sets(overrides: list[str]) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


def test_bench_quick_writes_the_public_keys(tmp_path, monkeypatch):
    from toyformer import bench

    monkeypatch.setattr(bench, "QUICK_MEMBERS", (1, 2))
    monkeypatch.setitem(bench.SETTINGS, "s2", ("topic/s2", ["theory.samples=10", "data.train_docs=400"]))
    monkeypatch.setitem(bench.SETTINGS, "e5", ("induction/e5", ["data.sequences=300", "data.length=40"]))
    small = ["data.sequences=200", "data.length=30", "theory.kernels=100"]
    monkeypatch.setattr(bench, "STANDARD", (bench.STANDARD[0], bench.STANDARD[1] + small))
    path = tmp_path / "b.json"
    result = CliRunner().invoke(app, ["bench", "--quick", "--json", str(path)])
    assert result.exit_code == 0, result.output
    r = json.loads(path.read_text())
    for key in ("ngram_tokens_per_s", "lda_tokens_per_s", "e5_steps_per_s", "s2_steps_per_s", "peak_memory_mb"):
        assert r[key] > 0
    assert r["device"] == "cpu" and set(r["ensemble"]) == {"s2", "e5"}
    assert set(r["ensemble"]["s2"]) == {"1", "2"} and all(v > 0 for v in r["ensemble"]["e5"].values())
    standard = r["standard"]  # both implementations of one model: the same loss from the same weights
    assert standard["same_loss"] and standard["repeats"] == 1
    assert standard["speedup"] == standard["toyformer"]["steps_per_s"] / standard["eager"]["steps_per_s"]
    same = standard["toyformer"]["steps_per_s"] / standard["eager-reused"]["steps_per_s"]
    assert standard["speedup_same_allocator"] == r["standard_speedup_same_allocator"] == same
    code_only = standard["toyformer-system"]["steps_per_s"] / standard["eager"]["steps_per_s"]
    assert standard["speedup_default_allocator"] == r["standard_speedup_default_allocator"] == code_only
    rows = r["scaling"]["rows"]  # the induction step against the banded model, and the topic model's probe share
    assert [row["axis"] for row in rows] == ["base", "d"] and rows[0]["step_time_over_base"] == 1.0
    for row in rows:
        assert row["speedup_over_banded"] == row["fast"]["steps_per_s"] / row["banded"]["steps_per_s"]
        assert row["fast"]["plan"]["path"] == "grouped" and row["banded"]["plan"]["path"] == "positions"
    (topic,) = r["scaling"]["topic"]
    assert topic["vocabulary"] == 100 and 0 < topic["probe_share"] < 1 and topic["probes"] > 0
    bad = CliRunner().invoke(app, ["bench", "--json", str(tmp_path / "missing" / "b.json")])
    assert bad.exit_code == 2 and "does not exist" in bad.output


def test_run_sums_by_prefix_sum_and_by_index_add_agree():
    """The stacked gather's backward: the CUDA prefix-sum path against the CPU index_add path, on runs of every
    length including empty entries in between."""
    gen = torch.Generator().manual_seed(0)
    index = torch.sort(torch.randint(0, 50, (400,), generator=gen))[0] * 2  # odd entries never read
    runs, lengths = torch.unique_consecutive(index, return_counts=True)
    grad = torch.randn(400, generator=gen)
    by_prefix = run_sums(grad, index, runs, lengths, 101, prefix=True)
    by_add = run_sums(grad, index, runs, lengths, 101, prefix=False)
    torch.testing.assert_close(by_prefix, by_add, rtol=0, atol=1e-5)
    want = torch.zeros(101, dtype=torch.float64).index_add_(0, index, grad.double()).float()
    torch.testing.assert_close(by_add, want, rtol=0, atol=1e-5)
    assert by_add[1::2].abs().max() == 0 and by_add.abs().sum() > 0
