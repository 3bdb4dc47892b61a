"""The registry: each task name (a config's ``task`` key) → its family's ``Task``. The one place that knows every
family; the CLI and the benchmarks reach the families through it. Adding a family is one package and one entry
here (README, "How the code is laid out")."""

from __future__ import annotations

from typing import Any

from toyformer.config import ConfigError, RunConfig, read, validate_as
from toyformer.induction.config import InductionConfig
from toyformer.standard.config import StandardConfig
from toyformer.task import Task
from toyformer.text.config import AnalysisConfig
from toyformer.topic.config import TopicConfig
from toyformer.topic.stages import DISTANCE_CURVES

TASKS: dict[str, Task] = {
    "topic": Task(
        TopicConfig,
        experiment="toyformer.topic.experiment:TopicExperiment",
        optimizer="toyformer.topic.experiment:optimizer",
        views="toyformer.topic.views:page",
        stacked="toyformer.topic.stacked:TopicStep",
        group_panels=(("distance from initialisation", DISTANCE_CURVES),),
        stack_keys=(
            "data.alpha",
            "data.tau",
            "masking.select_prob",
            "masking.mask_prob",
            "masking.random_prob",
            "masking.keep_prob",
            "model.init_scale",
        ),
    ),
    "induction": Task(
        InductionConfig,
        experiment="toyformer.induction.experiment:InductionExperiment",
        optimizer="toyformer.induction.experiment:optimizer",
        views="toyformer.induction.views:page",
        stacked="toyformer.induction.stacked:InductionStep",
        stack_keys=("data.parents", "data.alpha", "model.c_init", "model.a_init", "model.w_plus", "model.w_minus"),
        cpu_stacks_cells=False,
    ),
    "standard": Task(
        StandardConfig,
        experiment="toyformer.standard.experiment:StandardExperiment",
        optimizer="toyformer.standard.experiment:optimizer",
        views="toyformer.standard.views:page",
        stacked="toyformer.standard.stacked:StandardStep",
        stack_keys=("data.parents", "data.alpha", "model.init_std"),
    ),
    "analyze": Task(AnalysisConfig),  # `toyformer analyze`: measures a pretrained model, trains nothing
}
DEFAULT_TASK = "topic"  # a config without a task key


def validate(raw: dict[str, Any]) -> RunConfig:
    """The config of its task, chosen by the top-level ``task`` key."""
    name = raw.get("task", DEFAULT_TASK)
    if not isinstance(name, str) or name not in TASKS:
        raise ConfigError(f"task: must be one of {sorted(TASKS)}, got {name!r}")
    return validate_as(TASKS[name].config, raw)


def load(ref: str, overrides: list[str] | None = None, seed: int | None = None) -> RunConfig:
    """A recipe name or TOML file, with ``--set`` overrides and the seed, validated."""
    return validate(read(ref, overrides, seed))


def task_of(cfg: RunConfig) -> Task:
    return TASKS[cfg.task]


def build(cfg: RunConfig) -> Any:
    """The solo experiment of a config (``toyformer.train.loop.Experiment``), ready for ``train``."""
    return task_of(cfg).build(cfg)


def run_config(run) -> RunConfig:
    """The validated config of a run directory (``toyformer.runs.Run``)."""
    return validate(run.raw_config())
