"""A sweep: a base recipe, fixed overrides, axes (config keys → values, crossed; ``zip`` axes vary together), the
seeds of every cell, the claims over the whole grid and the phase diagrams to draw. A cell is one point of the grid:
the base recipe with the cell's overrides, trained as a seed group. Every cell's config is validated before
anything is written, so a bad axis value is a one-line error naming the cell."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from toyformer.config import (
    MAX_SEEDS,
    ConfigError,
    RunConfig,
    Strict,
    no_effect,
    packaged_names,
    read_toml,
    validate_as,
)
from toyformer.tasks import load

TIE_SE = 2.0  # a theory margin within this many Monte-Carlo standard errors of 0 is a tie, not a prediction


class GridClaim(Strict):
    """A claim over the grid, of one of two kinds.

    A share claim (``claim``): in every cell selected, the cell claim ``claim`` (a claim of the base recipe) holds
    for a share of the seeds between ``min_share`` and ``max_share``; ``max_share = 0`` says it fails for every
    seed, which is how a grid states a null (the base recipe's effect must be absent in those cells).

    A trend claim (``metric``): the cells' mean of a final metric, regressed on the axis ``along`` (on
    log10 of its values when ``log``), has a slope of sign ``slope`` and R² >= ``r2_min``, separately for each
    combination of the other axes' values.

    Cells are selected by ``only`` (axis → the values kept) and, for share claims, ``where``: ``"clear"`` keeps
    the cells whose theory margin (``theory.mi_margin``) is at least ``margin_min`` and not a tie; near-ties are
    reported, not claimed."""

    name: str
    claim: str | None = Field(None, description="a share claim: the name of a claim of the base recipe")
    min_share: float = Field(1.0, ge=0.0, le=1.0)
    max_share: float = Field(1.0, ge=0.0, le=1.0)
    where: Literal["all", "clear"] = "all"
    margin_min: float = Field(0.0, ge=0.0, description="where = 'clear': the smallest relative margin claimed")
    only: dict[str, list[Any]] = Field(default_factory=dict, description="axis → the values of the cells claimed")
    metric: str | None = Field(None, description="a trend claim: a final metric of the members")
    along: str | None = Field(None, description="a trend claim: the axis the metric is regressed on")
    log: bool = Field(False, description="a trend claim: regress on log10 of the axis values")
    slope: Literal["positive", "negative"] = "positive"
    r2_min: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _kind(self) -> GridClaim:
        if (self.claim is None) == (self.metric is None):
            raise ValueError(f"claims {self.name!r}: give either claim (a share claim) or metric (a trend claim)")
        if self.min_share > self.max_share:
            raise ValueError(f"claims {self.name!r}: min_share > max_share")
        # keys away from their defaults (a resolved sweep.json spells every key out)
        fields = {
            k
            for k, f in type(self).model_fields.items()
            if getattr(self, k) != f.get_default(call_default_factory=True)
        }
        if self.claim is not None:
            extra = fields & {"along", "log", "slope", "r2_min"}
            if extra:
                raise ValueError(f"claims {self.name!r}: {sorted(extra)} would do nothing in a share claim")
        else:
            if self.along is None:
                raise ValueError(f"claims {self.name!r}: a trend claim needs the axis it runs along (along)")
            extra = fields & {"min_share", "max_share", "where", "margin_min"}
            if extra:
                raise ValueError(f"claims {self.name!r}: {sorted(extra)} would do nothing in a trend claim")
        no_effect("margin_min", self.margin_min, 0.0, self.where != "clear", "selects cells with where = 'clear'")
        return self


class Plot(Strict):
    """A phase diagram: ``value`` (a final metric, or ``claim:NAME`` for the share of seeds a claim held for) over
    the axes ``x`` and ``y``; a third axis, when the sweep has one, gives small multiples."""

    value: str
    x: str
    y: str | None = None


class SweepConfig(Strict):
    name: str = "custom"
    description: str = ""
    recipe: str = Field(description="the base recipe: a name from `toyformer recipes` or a TOML file")
    set: list[str] = Field(default_factory=list, description="--set overrides of every cell")
    seeds: list[int] = Field(min_length=1, max_length=MAX_SEEDS, description="the seeds of every cell")
    axes: dict[str, list[Any]] = Field(description="config key → values; the axes are crossed")
    zip: dict[str, list[Any]] = Field(default_factory=dict, description="config key → values, varied together")
    sequential: bool = Field(False, description="train each cell's seeds one after another instead of stacked")
    stack_members: int | None = Field(
        None,
        ge=1,
        description="at most this many members (cells × seeds) in one stacked ensemble of cells; default 64, "
        "or one cell's seeds on the CPU for a family whose step gains nothing from more (induction)",
    )
    claims: list[GridClaim] = Field(default_factory=list)
    plots: list[Plot] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        if not self.axes or any(not values for values in self.axes.values()):
            raise ValueError("axes: give at least one config key with at least one value")
        lengths = {len(v) for v in self.zip.values()}
        if len(lengths) > 1 or 0 in lengths:
            raise ValueError(f"zip: every key needs the same number of values, got {sorted(lengths)}")
        both = set(self.axes) & set(self.zip)
        if both:
            raise ValueError(f"{sorted(both)}: a key is either an axis or zipped, not both")
        no_effect("stack_members", self.stack_members, None, self.sequential, "stacks cells, which sequential does not")
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError("seeds: distinct seeds >= 0")
        keys = {*self.axes, *self.zip}
        fixed = {item.split("=", 1)[0].strip() for item in self.set}
        if fixed & keys:
            raise ValueError(f"set: {sorted(fixed & keys)} would do nothing: an axis sets it in every cell")
        for plot in self.plots:
            for axis in (plot.x, plot.y):
                if axis is not None and axis not in keys:
                    raise ValueError(f"plots: {axis!r} is not an axis of the sweep ({sorted(keys)})")
        for claim in self.claims:
            for axis in [*claim.only, *([claim.along] if claim.along else [])]:
                if axis not in keys:
                    raise ValueError(f"claims {claim.name!r}: {axis!r} is not an axis of the sweep ({sorted(keys)})")
        return self


@dataclass
class Cell:
    index: int
    values: dict[str, Any]  # axis (and zipped) key → this cell's value
    config: RunConfig  # the base recipe at this cell, seeds included

    @property
    def name(self) -> str:
        return f"cell-{self.index:03d}"


def literal(value: Any) -> str:
    """A value as --set reads it, on one line: [1, 2], 0.1, "code", true (JSON's spelling is TOML's here)."""
    return json.dumps(value)


def cells(spec: SweepConfig) -> list[Cell]:
    """The grid's cells, axes crossed in the order given, the zipped keys as one more axis (last)."""
    keys = list(spec.axes)
    combos = list(itertools.product(*spec.axes.values()))
    if spec.zip:
        zipped = list(zip(*spec.zip.values(), strict=True))
        keys += list(spec.zip)
        combos = [(*c, *z) for c in combos for z in zipped]
    out = []
    for index, combo in enumerate(combos):
        values = dict(zip(keys, combo, strict=True))
        overrides = [*spec.set, *(f"{k}={literal(v)}" for k, v in values.items())]
        try:
            cfg = load(spec.recipe, overrides)
        except ConfigError as e:
            label = ", ".join(f"{k}={literal(v)}" for k, v in values.items())
            raise ConfigError(f"sweep cell {index} ({label}): {e}") from None
        raw = cfg.model_dump(mode="json", exclude_none=True) | {"seeds": spec.seeds}
        out.append(Cell(index, values, validate_as(type(cfg), raw)))
    return out


def sweep_names() -> list[str]:
    return packaged_names("sweep")


def load_sweep(ref: str, overrides: list[str] | None = None) -> SweepConfig:
    """A shipped sweep's name or a sweep TOML file; ``overrides`` are added to its ``set`` list."""
    raw = read_toml(ref, "sweep")
    if isinstance(raw.get("set", []), list):
        raw["set"] = [*raw.get("set", []), *(overrides or [])]
    return validate_as(SweepConfig, raw)
