"""The core of every config: strict sections, the rules shared by every family, claims, the fields every run has, and
the loader (recipes, TOML files, ``extends``, dotted ``--set`` overrides). Each family declares its own sections in
its ``config`` module; ``toyformer.tasks`` picks the class of a config by its ``task`` key.

Every parameter is declared once and validated once, at the boundary. A bad value raises ``ConfigError`` whose
one-line message names the key, the allowed values and the value received; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import ast
import os
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A bad experiment config or command-line value; its message is one line that says what to do."""


MAX_SEEDS = 4096  # members of one group: more is a typo (0-100000000), not an experiment
MEMORY_SHARE = 0.5  # the data a config asks for may take at most this share of the machine's memory


def machine_memory() -> int:
    """Bytes of physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(key: str, value: int, need: float, what: str) -> None:
    """One rule for sizes: the estimate ``need`` (bytes) of what ``key`` = ``value`` asks for must fit."""
    have = machine_memory()
    if need > MEMORY_SHARE * have:
        raise ValueError(
            f"{key} = {value:,} needs about {need / 2**30:,.1f} GiB for {what}, more than half of this machine's "
            f"{have / 2**30:,.0f} GiB: lower {key}"
        )


def no_effect(key: str, value: Any, default: Any, idle: bool, why: str) -> None:
    """One rule for keys that would be silently ignored: set away from its default where it does nothing."""
    if idle and value != default:
        raise ValueError(f"{key} = {value!r} does nothing here: it {why}")


def _takes_bool(annotation: Any) -> bool:
    return annotation is bool or annotation is Any or any(_takes_bool(a) for a in get_args(annotation))


class Strict(BaseModel):
    """Every config section: unknown keys, non-finite numbers and true/false where a number is meant are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for name, value in values.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and not _takes_bool(field.annotation):
                    raise ValueError(f"{name} takes a number or a name, not {str(value).lower()}")
        return values


class LoopConfig(Strict):
    """What the shared loop reads of every family's train section (each family adds its own fields)."""

    probes: int = Field(60, ge=2, description="number of log-spaced probe steps (plus 0 and the last)")
    checkpoints: int = Field(8, ge=1, description="number of log-spaced checkpoints (plus the last)")
    grad_clip: float | None = Field(
        None, gt=0.0, description="clip the gradient's global norm to this (per member in an ensemble)"
    )
    stop_loss: float | None = Field(
        None,
        description="stop at the first probe step whose mean train loss is at or below this (per member in an "
        "ensemble)",
    )


_TOKEN = re.compile(r"\s*([+-])?\s*([A-Za-z_][\w.]*|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)")


def parse_terms(text: str) -> list[tuple[float, str]]:
    """A claim's side: 'a - b + 2' → [(1, 'a'), (-1, 'b'), (1, '2')]; raises ValueError on anything else."""
    terms, pos = [], 0
    while pos < len(text.rstrip()):
        m = _TOKEN.match(text, pos)
        if m is None or (terms and m.group(1) is None):
            raise ValueError(f"cannot read {text!r}: write names and numbers joined by + and -")
        terms.append((-1.0 if m.group(1) == "-" else 1.0, m.group(2)))
        pos = m.end()
    return terms


class Claim(Strict):
    """A result the recipe expects. ``left``/``right`` are sums and differences of metric names and numbers;
    a bare name reads ``final``, ``theory.x`` reads the theory's prediction."""

    name: str
    left: str
    op: Literal[">", ">=", "<", "<=", "close", "=="]
    right: str
    factor: float = Field(1.0, description="compare left op factor·right")
    rel: float = Field(0.1, gt=0.0, description="for op='close': |left − right| <= rel·|scale|")
    scale: str | None = Field(None, description="for op='close': the tolerance's scale (default: right)")
    min_share: float = Field(1.0, ge=0.0, le=1.0, description="over several seeds: share of seeds it must hold for")
    kind: Literal["result", "null", "sanity"] = Field(
        "result",
        description="result: a reproduced finding, which must fail on an untrained or wrongly structured model; "
        "null: a prediction that a structure does not form (it holds at initialisation too, so its recipe pairs it "
        "with a result showing the model did learn); sanity: a bound meant to hold at initialisation too, "
        "reported apart and never counted as a result",
    )

    @model_validator(mode="after")
    def _check(self) -> Claim:
        for side in (self.left, self.right, self.scale or "0"):
            parse_terms(side)
        if self.factor != 1.0 and self.op in ("close", "=="):
            raise ValueError(f"factor applies to >, >=, < and <=, not to {self.op!r}: write it into the sides")
        return self


def check_members(key: str, value: int, configs: list[RunConfig]) -> None:
    """Members trained as one stacked ensemble hold their data together: it must fit as one member's does."""
    check_memory(key, value, sum(c.data_bytes() for c in configs), f"the data of {len(configs)} stacked members")


class RunConfig(Strict):
    """What every experiment has, whatever its task: a name, seeds, a device, and the claims it expects."""

    name: str = "custom"
    description: str = ""
    seed: int = Field(0, ge=0)
    seeds: list[int] | None = Field(
        None, min_length=1, max_length=MAX_SEEDS, description="run once per seed and aggregate the claims"
    )
    device: Literal["cpu", "cuda"] = "cpu"
    claims: list[Claim] = Field(default_factory=list)

    def dump(self) -> str:
        return tomli_w.dumps(self.model_dump(mode="json", exclude_none=True))

    def data_bytes(self) -> float:
        """About how many bytes of data one member of this config holds (its family says; 0 when it holds none)."""
        return 0.0


# --------------------------------------------------------------------------------------------------------------
# Loading: recipes, files, overrides


def packaged_names(kind: str) -> list[str]:
    """The shipped TOML files of a kind ("recipe", "sweep"), as "family/name", from the package folder kind + "s"."""
    root = resources.files("toyformer") / f"{kind}s"
    names = []
    for family in sorted(p for p in root.iterdir() if p.is_dir()):
        names += [f"{family.name}/{f.name[:-5]}" for f in sorted(family.iterdir()) if f.name.endswith(".toml")]
    return names


def recipe_names() -> list[str]:
    return packaged_names("recipe")


def read_toml(ref: str, kind: str) -> dict[str, Any]:
    """A shipped TOML of ``kind`` by name, or a TOML file by path, parsed; errors as one-line ConfigErrors."""
    path = Path(ref)
    if ref.endswith(".toml") and path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{ref}: cannot read it as a TOML file ({type(e).__name__}: {e})") from None
    else:
        if ref not in packaged_names(kind):
            raise ConfigError(
                f"unknown {kind} {ref!r}: give a name from `toyformer {kind}s` or the path of a TOML file"
            )
        family, name = ref.split("/", 1)
        text = (resources.files("toyformer") / f"{kind}s" / family / f"{name}.toml").read_text()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{ref}: not valid TOML ({e})") from None


def _read_toml(ref: str) -> dict[str, Any]:
    raw = read_toml(ref, "recipe")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"{ref}: extends must name a recipe or a TOML file, got {parent!r}")
    return deep_merge(_read_toml(parent), raw)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML/Python literal (number, bool, list, quoted string) or else a bare string."""
    lowered = text.strip()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = deep_merge({}, raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write key=value, e.g. --set train.steps=200")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            node = _child(node, part, key)
            if not isinstance(node, dict | list):
                raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
        if isinstance(node, list):
            _child(node, parts[-1], key)  # checks the index
            node[int(parts[-1])] = parse_value(value)
        else:
            node[parts[-1]] = parse_value(value)
    return raw


def _child(node: dict | list, part: str, key: str) -> Any:
    """A section of a --set path: a table by name, or an entry of an array of tables by index (stages.0)."""
    if isinstance(node, dict):
        return node.setdefault(part, {})
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {key}: {part!r} is not an index of a list of {len(node)} entries")
    return node[int(part)]


def validate_as(cls: type[BaseModel], raw: dict[str, Any]) -> Any:
    """A config of a given class from a raw dict; errors as one-line ConfigErrors."""
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_one_line(e, section_tags(cls))) from None


def section_tags(cls: type[BaseModel]) -> set[str]:
    """The tags of the discriminated sections under ``cls`` (data.kind = "lda" | "text"), which pydantic puts in an
    error's location (data.lda.alpha) where the user wrote none."""
    tags: set[str] = set()
    for field in cls.model_fields.values():
        options = _classes(field.annotation)
        for option in options:
            kind = option.model_fields.get("kind")
            if kind is not None and len(options) > 1:
                tags |= {str(t) for t in get_args(kind.annotation)}
            tags |= section_tags(option)
    return tags


def _classes(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [c for arg in get_args(annotation) for c in _classes(arg)]


def _one_line(e: ValidationError, tags: set[str]) -> str:
    err = e.errors()[0]
    parts = [str(p) for p in err["loc"]]
    msg = err["msg"].removeprefix("Value error, ")
    received = err.get("input")
    if err["type"] == "value_error" and isinstance(received, dict):  # a section's own rule: no dump of the section
        parts = [p for p in parts if p not in tags]
        first = msg.split(" ", 1)[0]
        return msg if "." in first or not parts else f"{'.'.join(parts)}.{msg}"
    key = ".".join(p for p in parts if p not in tags)
    if err["type"] == "missing":
        return f"{key}: required, with no default"
    if err["type"] == "extra_forbidden":
        return f"unknown key {key!r}: check the spelling against `toyformer recipes --show NAME`"
    if err["type"] == "literal_error":
        return f"{key}: {msg}, got {received!r}"
    if not key:
        return msg
    return f"{key}: {msg}, got {received!r}"


def read(ref: str, overrides: list[str] | None = None, seed: int | None = None) -> dict[str, Any]:
    """The raw config of a recipe name or TOML file, with its ``extends`` chain merged, the overrides applied and the
    seed set; ``toyformer.tasks.load`` validates it as its task's class."""
    raw = apply_overrides(_read_toml(ref), overrides or [])
    if seed is not None:
        raw["seed"] = seed
    return raw
