"""Several seeds of one recipe: one member run per seed under a group directory, claims and metrics aggregated.

By default the members train together in one process as a stacked ensemble (``toyformer.train.ensemble``);
``sequential`` runs them one after another instead (any task, in this process, one at a time). The family comes in
as a ``Task`` (``toyformer.task``), looked up in the registry by the caller. The group's summary.json
reports each claim as the share of seeds for which it held (it holds for the group when the share reaches the
claim's ``min_share``), each numeric final metric as mean, standard deviation, range and a 95% interval of the mean
(over the members that did not diverge), and each text one (the selected subset) as counts per value; figures/
draws every claim's metrics over training as the members' mean with a 95% band. A group is complete exactly when
its summary.json exists; resuming continues what is missing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toyformer.claims import by_kind
from toyformer.config import ConfigError, RunConfig, check_members, validate_as
from toyformer.report.page import write_group_page
from toyformer.runs import Run, atomic_write, default_dir
from toyformer.task import Task
from toyformer.train.ensemble import STATE, Ensemble, Member
from toyformer.train.figures import write_group_figures
from toyformer.train.loop import train

GROUP = "group.json"  # the group's seeds, its config and whether it is stacked; written before any member

# (member config) → a context that yields the member's on_step(step, record) (a progress bar), or None
MemberProgress = Callable[[RunConfig], AbstractContextManager[Callable | None]]


def _no_progress(cfg: RunConfig) -> AbstractContextManager[None]:
    return nullcontext()


@dataclass
class Group:
    """A group directory's group.json, read once."""

    seeds: list[int]
    config: dict[str, Any]  # the group's config as written (its task picks the class)
    stacked: bool

    @classmethod
    def read(cls, out: Path) -> Group:
        path = Path(out) / GROUP
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            seeds, config = [int(s) for s in raw["seeds"]], dict(raw["config"])
            return cls(seeds=seeds, config=config, stacked=bool(raw.get("stacked", False)))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: unreadable ({type(e).__name__}: {e}); the group directory is damaged") from None

    def write(self, out: Path) -> None:
        payload = {"seeds": self.seeds, "config": self.config, "stacked": self.stacked}
        atomic_write(Path(out) / GROUP, json.dumps(payload, indent=2))


def member_config(cfg: RunConfig, seed: int) -> RunConfig:
    """The config of one member of a group: the group's, at its own seed."""
    raw = cfg.model_dump(mode="json", exclude_none=True)
    raw.pop("seeds", None)
    return validate_as(type(cfg), raw | {"seed": seed})


def aggregate(cfg: RunConfig, summaries: list[dict]) -> dict:
    final: dict[str, dict] = {}
    diverged = [s["seed"] for s in summaries if "diverged_at_step" in s]
    kept = [s for s in summaries if "diverged_at_step" not in s] or summaries
    keys = [k for k in kept[0]["final"] if all(isinstance(s["final"].get(k), int | float) for s in kept)]
    for key in keys:
        xs = [float(s["final"][key]) for s in kept]
        n = len(xs)
        mean = sum(xs) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
        half = 1.96 * std / math.sqrt(n)
        final[key] = {"mean": mean, "std": std, "min": min(xs), "max": max(xs), "ci95": [mean - half, mean + half]}
    for key in [k for k in summaries[0]["final"] if all(isinstance(s["final"].get(k), str) for s in summaries)]:
        values = [s["final"][key] for s in summaries]  # e.g. the selected subset: how often each one
        final[key] = {"counts": {v: values.count(v) for v in sorted(set(values))}}
    checks = {}
    for key, claims in by_kind(cfg.claims).items():
        checks[key] = []
        for i, claim in enumerate(claims):
            held = [s[key][i]["ok"] for s in summaries]
            share = sum(held) / len(held)
            checks[key].append(
                {
                    "name": claim.name,
                    "kind": claim.kind,
                    "ok": share >= claim.min_share,
                    "share": share,
                    "min_share": claim.min_share,
                    "measured": [s[key][i]["measured"] for s in summaries],
                    "expected": f"{summaries[0][key][i]['expected']} in >= {claim.min_share:.0%} of seeds",
                }
            )
    return {
        "name": cfg.name,
        "seeds": [s["seed"] for s in summaries],
        "members": len(summaries),
        "diverged": diverged,
        "stopped": [s["seed"] for s in summaries if "stopped_at_step" in s],
        "final": final,
        "theory": summaries[0]["theory"],
        **checks,
    }


def run_seeds(
    cfg: RunConfig,
    task: Task,
    seeds: list[int],
    out: Path | None,
    sequential: bool = False,
    on_step: Callable | None = None,
    progress: MemberProgress = _no_progress,
    figures: bool = True,
) -> Path:
    """Train every seed and write the group summary; returns the group directory. Stacked by default
    (``on_step(step, records)`` follows the ensemble); with ``sequential``, one member after another (``progress``
    gives each its own progress)."""
    out = Path(out) if out is not None else default_dir(cfg, "seeds")
    group = Group(seeds, cfg.model_dump(mode="json", exclude_none=True) | {"seeds": seeds}, stacked=not sequential)
    if sequential:
        out.mkdir(parents=True, exist_ok=True)
        group.write(out)
        return _finish_sequential(out, cfg, task, seeds, progress)
    configs = [member_config(cfg, seed) for seed in seeds]
    try:
        check_members("seeds", len(seeds), configs)
    except ValueError as e:
        raise ConfigError(f"{e}, or train them one after another (--sequential)") from None
    experiments = [task.build(c) for c in configs]  # every error before a directory
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: the directory exists and is not empty; pick a new one or --resume it")
    out.mkdir(parents=True, exist_ok=True)
    group.write(out)
    members = [Member(s, x, Run.create(x.cfg, out / f"seed-{s}")) for s, x in zip(seeds, experiments, strict=True)]
    ensemble = Ensemble(members, out, task)
    ensemble.record_choices()
    ensemble.train(0, on_step)
    return _finish_stacked(out, cfg, task, ensemble, figures)


def resume_seeds(
    out: Path,
    group: Group,
    cfg: RunConfig,
    task: Task,
    on_step: Callable | None = None,
    progress: MemberProgress = _no_progress,
) -> Path:
    """Finish a group that was interrupted: the members that have no summary yet (sequential), or the ensemble from
    its last state (stacked). ``cfg`` is ``group.config`` validated by the caller's registry."""
    if not group.stacked:
        return _finish_sequential(out, cfg, task, group.seeds, progress)
    members = []
    for seed in group.seeds:
        run = Run.open(out / f"seed-{seed}")
        members.append(Member(seed, task.build(validate_as(type(cfg), run.raw_config())), run))
    ensemble = Ensemble(members, out, task)
    if (out / STATE).is_file():
        start = ensemble.restore()
    else:  # killed before the group's first state: nothing was trained, so start over in place
        start = 0
        for m in members:
            m.run.truncate_probes(0)
    ensemble.train(start, on_step)
    return _finish_stacked(out, cfg, task, ensemble, figures=True)


def _finish_stacked(out: Path, cfg: RunConfig, task: Task, ensemble: Ensemble, figures: bool) -> Path:
    summaries = ensemble.finish()
    return write_group(out, cfg, task, [m.run for m in ensemble.members], summaries, figures)


def _finish_sequential(out: Path, cfg: RunConfig, task: Task, seeds: list[int], progress: MemberProgress) -> Path:
    summaries = []
    for seed in seeds:
        path = out / f"seed-{seed}"
        if not (path / "summary.json").is_file():
            resume = Run.open(path) if (path / "config.toml").is_file() else None
            member = member_config(cfg, seed) if resume is None else validate_as(type(cfg), resume.raw_config())
            experiment = task.build(member)  # every error before its progress bar
            with progress(member) as on_step:
                train(experiment, path, on_step, resume)
        summaries.append(Run(path).summary())
    return write_group(out, cfg, task, [Run(out / f"seed-{seed}") for seed in seeds], summaries, figures=True)


def write_group(out: Path, cfg: RunConfig, task: Task, runs: list[Run], summaries: list[dict], figures: bool) -> Path:
    """The group's figures (when asked), its report page and its summary.json, written last: it marks the group
    complete."""
    if figures:
        write_group_figures(out, cfg, runs, task.group_panels)
    summary = aggregate(cfg, summaries)
    write_group_page(out, summary, runs, task.page_views(cfg))
    atomic_write(out / "summary.json", json.dumps(summary, indent=2))
    return out
