"""Bad input, fuzzed: random wrong types, out-of-range and non-finite values, unknown keys, and unreadable,
truncated and tampered files, for every command and both families. Every case must end with exit code 2, one line
that starts with ``error:``, no traceback, and no run directory left behind.

Values are drawn so that each is invalid by the schema itself (a bound from the field, a non-finite number, true
where a number is meant, a name outside a Literal, a scalar where a list or section is meant, an unknown key), so
no case needs training to be judged. The default suite tries ``CASES`` of them; the slow suite ten times as many.
"""

from __future__ import annotations

import json
import random
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from toyformer import config, tasks
from toyformer.cli import app

CASES = 600
RECIPES = ["topic/s2", "topic/s4", "topic/s2-population", "induction/e5", "induction/grid-base", "induction/e6"]
SEED_FLAGS = [["--seeds", "0-100000"], ["--seeds", "5-2"], ["--seed", "-3"], ["--seeds", "x"]]
NUMBER_BAD = ["inf", "-inf", "nan", "true", "false", "'abc'", "[1, 2]", "{x = 1}"]


def _base(annotation):
    """The annotation without None, and whether None was allowed."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, __import__("types").UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _bad_values(field) -> list[str]:
    """--set values that this field's schema refuses, whatever the rest of the config."""
    t = _base(field.annotation)
    origin = typing.get_origin(t)
    if t in (int, float):
        out = list(NUMBER_BAD if t is float else [v for v in NUMBER_BAD if v != "false"] + ["1.5"])
        for m in field.metadata:
            for attr, shift in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
                bound = getattr(m, attr, None)
                if bound is not None:
                    out.append(repr(bound + shift if shift else bound))
        return out
    if t is bool:
        return ["'maybe'", "2", "[true]"]
    if origin is typing.Literal:
        return ["'no-such-choice'", "3", "[1]"]
    if origin is list:
        return ["5", "'abc'", "{x = 1}"]
    return []


def _leaves(model: BaseModel, prefix: str = "") -> list[tuple[str, list[str]]]:
    """(dotted key, bad values) for every scalar field of a config, sections and stage lists walked into."""
    out = []
    for name, field in type(model).model_fields.items():
        value, key = getattr(model, name), f"{prefix}{name}"
        if name in ("claims", "description", "name"):
            continue
        if isinstance(value, BaseModel):
            out.append((key, ["3", "'abc'"]))
            out += _leaves(value, f"{key}.")
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            out += _leaves(value[0], f"{key}.0.")
        elif bad := _bad_values(field):
            out.append((key, bad))
    return out


def _cases(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    leaves = {name: _leaves(tasks.load(name)) for name in RECIPES}
    cases = []
    for _ in range(n):
        name = rng.choice(RECIPES)
        kind = rng.random()
        if kind < 0.8:
            key, bad = rng.choice(leaves[name])
            args = [name, "--set", f"{key}={rng.choice(bad)}"]
        elif kind < 0.9:
            key, _ = rng.choice(leaves[name])
            args = [name, "--set", f"{key}x=1" if rng.random() < 0.5 else f"{key.rsplit('.', 1)[0]}.nokey=1"]
        else:
            args = [
                name,
                *rng.choice([["--seeds", "0-100000"], ["--seeds", "5-2"], ["--seed", "-3"], ["--seeds", "x"]]),
            ]
        cases.append(["run", *args])
    return cases


def _assert_refused(args: list[str], out: Path | None = None) -> None:
    result = CliRunner().invoke(app, args)
    text = result.output
    lines = text.strip().splitlines()
    assert result.exit_code == 2, (args, result.exit_code, text[-2000:])
    assert "Traceback" not in text and len(lines) == 1 and lines[0].startswith("error:"), (args, text)
    if out is not None:
        assert not out.exists(), (args, "a run directory was left behind")


@pytest.mark.parametrize("chunk", range(3))
def test_fuzzed_config_values_are_refused(tmp_path, chunk):
    for k, args in enumerate(_cases(CASES, seed=chunk)[chunk::3]):
        out = tmp_path / f"run-{k}"
        _assert_refused([*args, "--out", str(out)], out)


@pytest.mark.slow
def test_fuzzed_config_values_are_refused_many(tmp_path):
    for k, args in enumerate(_cases(10 * CASES, seed=100)):
        out = tmp_path / f"run-{k}"
        _assert_refused([*args, "--out", str(out)], out)


def _files(tmp_path: Path) -> dict[str, Path]:
    good = config._read_toml("induction/e5")
    text = (Path(config.__file__).parent / "recipes" / "induction" / "e5.toml").read_text()
    files = {
        "missing": tmp_path / "nope.toml",
        "a folder": tmp_path,
        "truncated": tmp_path / "truncated.toml",
        "binary": tmp_path / "binary.toml",
        "tampered": tmp_path / "tampered.toml",
        "unknown extends": tmp_path / "extends.toml",
    }
    files["truncated"].write_text(text[: len(text) // 2] + "\n[[train.stages]\n")
    files["binary"].write_bytes(bytes(random.Random(0).randrange(256) for _ in range(500)))
    files["tampered"].write_text(text.replace("heads = 3", "heads = 'three'"))
    files["unknown extends"].write_text('extends = "induction/nope"\n')
    assert good["task"] == "induction"
    return files


def test_unreadable_truncated_and_tampered_recipe_files_are_refused(tmp_path):
    for label, path in _files(tmp_path).items():
        out = tmp_path / f"run-{label.replace(' ', '-')}"
        _assert_refused(["run", str(path), "--out", str(out)], out)
        _assert_refused(["theory", "topic", "--recipe", str(path)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished topic run and a finished induction run, made once for the tampering tests."""
    from toyformer.train.loop import train

    root = tmp_path_factory.mktemp("fuzz-runs")
    small = {
        "topic/s2": ["data.train_docs=50", "data.dev_docs=20", "theory.samples=100", "train.steps=3", "probes.docs=4"],
        "induction/grid-base": ["data.sequences=100", "data.length=20", "theory.kernels=50", "train.stages.0.steps=3"],
    }
    return {
        name: train(tasks.build(tasks.load(name, o)), out=root / name.replace("/", "-"), figures=False).path
        for name, o in small.items()
    }


@pytest.mark.parametrize(
    "damage",
    ["no config", "config tampered", "config truncated", "checkpoint truncated", "checkpoint garbage", "no dir"],
)
def test_damaged_run_directories_are_refused(tmp_path, runs, damage):
    import shutil

    for name, source in runs.items():
        run = tmp_path / name.replace("/", "-")
        shutil.copytree(source, run)
        latest = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
        if damage == "no config":
            (run / "config.toml").unlink()
        elif damage == "config tampered":
            (run / "config.toml").write_text((run / "config.toml").read_text().replace("seed = 0", "seed = -5"))
        elif damage == "config truncated":
            (run / "config.toml").write_text((run / "config.toml").read_text()[:37] + "\n[")
        elif damage == "checkpoint truncated":
            latest.write_bytes(latest.read_bytes()[:64])
        elif damage == "checkpoint garbage":
            latest.write_bytes(b"\x80\x04not a checkpoint" * 10)
        else:
            run = tmp_path / "missing"
        commands = [["report", str(run)]] + ([["eval", str(run)]] if name.startswith("induction") else [])
        if damage in ("checkpoint truncated", "checkpoint garbage") and (run / "summary.json").exists():
            (run / "summary.json").unlink()
        commands.append(["run", "--resume", str(run)])
        for args in commands:
            _assert_refused(args)


@pytest.mark.parametrize(
    "args",
    [
        ["theory", "ngram", "--d", "1"],
        ["theory", "ngram", "--parents", "0,2"],
        ["theory", "ngram", "--alpha", "nan"],
        ["theory", "ngram", "--alpha", "inf"],
        ["theory", "ngram", "--heads", "2", "--degree", "3"],
        ["theory", "topic", "--set", "data.alpha=inf"],
        ["theory", "topic", "--samples", "-4"],
        ["recipes", "--show", "topic/nope"],
        ["eval", "nowhere"],
        ["report", "nowhere"],
        ["run"],
        ["run", "topic/s2", "--device", "tpu"],
        ["run", "topic/s2", "--seed", "2", "--seeds", "0-3"],
        ["sweep"],
        ["sweep", "induction/nope"],
        ["sweep", "induction/selection-phase", "--retries", "-1"],
        ["sweep", "induction/selection-phase", "--backend", "slurm"],
        ["sweep", "induction/selection-phase", "--set", "data.d=nan"],
        ["sweep", "induction/selection-phase", "--set", "data.alpha=0.2"],  # an axis: it would do nothing
        ["sweep", "induction/selection-phase", "--set", "model.colour=1"],
        ["sweep", "--resume", "nowhere"],
        ["sweep", "induction/selection-phase", "--resume", "nowhere"],
    ],
)
def test_other_commands_refuse_bad_flags(args):
    _assert_refused(args)


@pytest.mark.parametrize(
    "args, says",
    [
        (["topic/s2", "--set", "train.lr=inf"], "train.lr: Input should be a finite number"),
        (["induction/e5", "--set", "model.matrix_init=nan"], "model.matrix_init: Input should be a finite number"),
        (["induction/e5", "--set", "model.c_init=nan"], "model.c_init"),
        (["induction/e5", "--set", "model.w_plus=inf"], "model.w_plus"),
        (["induction/e5", "--set", "train.stages=[]"], "train.stages: List should have at least 1 item"),
        (["topic/s2", "--seeds", "0-100000000"], "a group holds at most 4,096"),
        (["topic/s2", "--set", "data.train_docs=100000000000"], "data.train_docs = 100,000,000,000 needs about"),
        (["induction/e5", "--set", "data.sequences=10000000000"], "data.sequences = 10,000,000,000 needs about"),
        (["topic/s2", "--set", "masking.select_prob=true"], "masking.select_prob takes a number"),
        (["topic/s2", "--set", "train.momentum=0.9"], "train.momentum = 0.9 does nothing here"),
        (
            ["induction/e5", "--set", "train.stages.0.optimizer=adam", "--set", "train.stages.0.momentum=0.5"],
            "does nothing",
        ),
        (["induction/e5", "--set", "model.window=4"], "model.window = 4 does nothing here"),
        (["topic/s2", "--set", "model.decoder_bias=true"], "model.decoder_bias = True does nothing here"),
        (["induction/e5", "--set", "train.stages.0.groups=[]"], "a stage must train at least one group"),
    ],
)
def test_the_inputs_that_used_to_run_or_crash_are_refused(tmp_path, args, says):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", *args, "--out", str(out)])
    assert result.exit_code == 2 and says in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_an_analysis_config_is_not_trained(tmp_path):
    path = tmp_path / "analysis.toml"
    path.write_text(f'task = "analyze"\nmodel_dir = "{tmp_path}"\n')
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "trains nothing" in result.output and not (tmp_path / "run").exists()


def test_seed_runs_that_seed_alone_on_a_recipe_that_lists_seeds(tmp_path):
    small = ["data.train_docs=50", "data.dev_docs=20", "theory.samples=100", "train.steps=2", "probes.docs=4"]
    args = ["run", "topic/s4", "--seed", "3", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args + [a for s in small for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "run" / "group.json").exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["seed"] == 3
