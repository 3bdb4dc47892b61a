"""The CLI and the run-directory contract: every recipe runs, summaries carry the public names, report rebuilds."""

import json

import pytest
from typer.testing import CliRunner

from toyformer import config, tasks
from toyformer.claims import all_checks
from toyformer.cli import app, parse_seeds
from toyformer.runs import Run
from toyformer.topic.experiment import TopicExperiment
from toyformer.train.loop import train

PUBLIC_FINAL = [
    "wv_same_word",
    "wv_same_topic",
    "wv_diff_topic",
    "emb_same_topic",
    "emb_diff_topic",
    "attn_same_token",
    "attn_same_topic",
    "attn_diff_topic",
    "onset_step_value",
    "onset_step_key",
    "onset_step_query",
    "loss_train",
    "loss_dev",
]


# topic/wiki-mlm reads a real corpus: tests/test_text.py runs it on a planted one
@pytest.mark.parametrize("name", [n for n in config.recipe_names() if n.startswith("topic/") and n != "topic/wiki-mlm"])
def test_every_recipe_runs_a_few_steps(tmp_path, fast, name):
    cfg = tasks.load(name, [*fast, "train.steps=3", "train.checkpoints=2"])
    run = train(TopicExperiment(cfg), tmp_path / "run", figures=False)
    summary = run.summary()
    assert set(summary) >= {"final", "theory", "checks"}
    assert len(all_checks(summary)) == len(cfg.claims)
    for c in all_checks(summary):
        assert set(c) >= {"name", "ok", "measured", "expected"}
    records = run.metrics()
    assert [r["step"] for r in records][0] == 0 and records[-1]["step"] == 3


def test_run_directory_contract_and_report(tmp_path, fast):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "run",
            "topic/s5-adam",
            "--out",
            str(out),
            "--seed",
            "7",
            *sum((["--set", s] for s in [*fast, "train.steps=40"]), []),
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)
    for name in ["config.toml", "meta.json", "metrics.jsonl", "summary.json"]:
        assert (out / name).is_file(), name
    run = Run(out)
    assert tasks.run_config(run).seed == 7 and tasks.run_config(run).train.steps == 40
    meta = run.meta()
    assert meta["status"] == "complete" and meta["seed"] == 7 and "torch" in meta["versions"]
    final = run.summary()["final"]
    for key in PUBLIC_FINAL:
        assert key in final, key
    assert {"wv_same_topic", "wv_diff_topic", "wv_same_word"} <= set(run.summary()["theory"])
    assert run.checkpoints()[-1].name == "step-00000040.pt"
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["attention.png", "curves.png", "matrices.png"]
    for p in (out / "figures").iterdir():
        p.unlink()
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "figures").iterdir()) == figures


def test_seed_group_aggregates_claims(tmp_path, fast):
    out = tmp_path / "group"
    result = CliRunner().invoke(
        app,
        [
            "run",
            "topic/s2",
            "--seeds",
            "0-2",
            "--out",
            str(out),
            *sum((["--set", s] for s in [*fast, "train.steps=20"]), []),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    members = [Run(out / f"seed-{s}").summary() for s in range(3)]
    assert summary["seeds"] == [0, 1, 2]
    xs = [m["final"]["wv_same_topic"] for m in members]
    assert summary["final"]["wv_same_topic"]["mean"] == pytest.approx(sum(xs) / 3)
    assert len(set(xs)) == 3  # seeds differ
    for i, check in enumerate(summary["checks"]):
        assert check["share"] == pytest.approx(sum(m["checks"][i]["ok"] for m in members) / 3)


def test_theory_topic_json_matches_spec_simulation():
    result = CliRunner().invoke(app, ["theory", "topic", "--json", "--samples", "4000"])
    assert result.exit_code == 0, result.output
    values = json.loads(result.stdout)
    # docs/topic-structure.md §5.1: a least-squares simulation of the official pipeline gave 0.091 / 0.091 / -0.010
    assert values["wv_contrast"] == pytest.approx(0.101, abs=0.004)
    assert values["wv_same_topic_population"] == pytest.approx(1 / (10 * values["attention_word_share"]))


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3] and parse_seeds("2,5") == [2, 5]
