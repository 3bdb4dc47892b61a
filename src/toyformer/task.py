"""What the core needs of a model family, as one record per task: the config class, and where the family's training
pieces live. The core (the loop, stacked ensembles, seed groups) is handed a ``Task`` and never imports a family;
``toyformer.tasks`` is the registry that lists them.

A family that trains provides, in its own modules:

- ``experiment``: ``build(cfg)`` → the solo experiment of a config (``toyformer.train.loop.Experiment``), fully
  built, so that every error comes before a run directory exists;
- ``optimizer``: ``optimizer(cfg, module)`` → the optimizer of a solo run, applied to any module with the model's
  parameters (a stacked ensemble passes its stacked module);
- ``views``: ``views(cfg, summary, records)`` → what its report page shows (``toyformer.report.page``): curve
  panels, marks and the matrix views under the step slider; a pure function, so a group's page builds no experiment;
- ``stacked``: a class built from the members' experiments with ``batch(step)`` and ``losses(stacked, batch)`` →
  (members,) losses, each reaching only its own member's slice of the stacked parameters
  (``toyformer.train.ensemble``).

They are named as "module:attribute" and imported on first use, so that listing recipes or validating a config
does not import torch and every model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from toyformer.config import RunConfig


@dataclass(frozen=True)
class Task:
    config: type[RunConfig]
    experiment: str | None = None  # None: the task trains nothing (the analysis of a pretrained model)
    optimizer: str | None = None
    stacked: str | None = None
    views: str | None = None  # None: the report page shows the curves alone
    group_panels: tuple[tuple[str, tuple[str, ...]], ...] = ()  # extra (title, metrics) panels of group figures
    # config keys in which members of one stacked ensemble may differ, besides the seed: they change a member's data
    # or initial values, never the model's shapes, the optimizer or the shared step (sweeps stack such cells)
    stack_keys: tuple[str, ...] = ()
    # whether a sweep on the CPU stacks several cells in one block by default: a step bound by per-op overhead gains
    # from more members (topic), one bound by memory traffic does not (induction at the papers' data sizes)
    cpu_stacks_cells: bool = True

    @property
    def trains(self) -> bool:
        return self.experiment is not None

    def build(self, cfg: RunConfig) -> Any:
        return _resolve(self.experiment)(cfg)

    def make_optimizer(self, cfg: RunConfig):
        """(module) → the optimizer a solo run of ``cfg`` uses, on that module's parameters."""
        make = _resolve(self.optimizer)
        return lambda module: make(cfg, module)

    def page_views(self, cfg: RunConfig) -> Callable[[dict, list[dict]], dict]:
        """(summary, records) → the family's view spec for runs of ``cfg``."""
        if self.views is None:
            return lambda summary, records: {}
        views = _resolve(self.views)
        return lambda summary, records: views(cfg, summary, records)

    def stacked_step(self, experiments: list) -> Any:
        return _resolve(self.stacked)(experiments)


def _resolve(name: str | None) -> Any:
    if name is None:
        raise TypeError("this task trains nothing")
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)
