"""Bad input: a one-line error naming the key, exit code 2, and no run directory left behind."""

import pytest
from typer.testing import CliRunner

from toyformer import config, tasks
from toyformer.cli import app
from toyformer.config import ConfigError

BAD = [
    (["--set", "model.colour=red"], "model.colour"),
    (["--set", "train.steps=many"], "train.steps"),
    (["--set", "data.vocab_size=50"], "vocab_size"),
    (["--set", "masking.select_prob=1.5"], "masking.select_prob"),
    (["--set", "data.doc_len_min=200"], "doc_len_min"),
    (["--set", "masking.keep_prob=0.3"], "sum to 1"),
    (["--set", "train.optimizer=lbfgs"], "train.optimizer"),
    (["--set", "model.d_model=64"], "d_model"),
    (["--set", "model.preset=E"], "model.preset"),
    (["--set", "data.tau=11", "--set", "data.mixture=tau"], "data.tau"),
    (["--set", "nonsense"], "key=value"),
    (["--seeds", "4-x"], "--seeds"),
]


@pytest.mark.parametrize(("args", "named"), BAD)
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, args, named):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "topic/s2", "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message, message
    assert named in message
    assert "Traceback" not in result.output
    assert not out.exists()


def test_unknown_recipe_and_unreadable_run_dir(tmp_path):
    result = CliRunner().invoke(app, ["run", "topic/nope"])
    assert result.exit_code == 2 and "toyformer recipes" in result.stderr
    result = CliRunner().invoke(app, ["run", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.stderr
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2


def test_overrides_parse_types_and_presets_fill_only_unset_fields():
    cfg = tasks.load("topic/s2", ["train.lr=0.5", "model.freeze=['embedding']", "data.start_end=false"])
    assert cfg.train.lr == 0.5 and cfg.model.freeze == ["embedding"] and cfg.data.start_end is False
    cfg = tasks.load("topic/s2", ["model.value_init=zero"])
    assert cfg.model.value_init == "zero" and cfg.model.attention == "uniform"  # preset B fills the rest


def test_every_recipe_validates_and_states_claims():
    names = config.recipe_names()
    for required in ["topic/s1", "topic/s2", "topic/s2-squared", "topic/s3", "topic/s4", "topic/pc0"]:
        assert required in names
    assert sum(n.startswith("topic/s5-") for n in names) >= 6
    for name in names:
        cfg = tasks.load(name)
        assert cfg.name == name and cfg.claims, name


def test_resolved_config_round_trips_through_toml():
    import tomllib

    cfg = tasks.load("topic/s5-block", ["seed=3"])
    again = tasks.validate(tomllib.loads(cfg.dump()))
    assert again == cfg


def test_claim_expressions_are_checked_at_load():
    with pytest.raises(ConfigError, match="claims"):
        tasks.validate({"claims": [{"name": "x", "left": "a * b", "op": ">", "right": "0"}]})
