"""Several seeds of one recipe: one member run per seed under a group directory, claims and metrics aggregated.

By default the members train together in one process as a stacked ensemble (``toyformer.train.ensemble``);
``sequential`` runs them one after another instead (any task, one process each in turn). The group's summary.json
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
from pathlib import Path

from toyformer.claims import by_kind
from toyformer.config import ConfigError, ExperimentConfig, validate
from toyformer.runs import Run, atomic_write, default_dir


def build_experiment(cfg):
    """The experiment object of a config's task, fully built (so every error comes before a directory exists)."""
    if cfg.task == "induction":
        from toyformer.train.induction import build

        return build(cfg)
    from toyformer.train.topic import TopicExperiment

    return TopicExperiment(cfg)


def build_optimizer(cfg) -> Callable:
    """The optimizer a task's solo run uses, as a function of the module it will move (the stacked one here)."""
    if cfg.task == "induction":
        from toyformer.train.induction import StagedOptimizer

        return lambda module: StagedOptimizer(module, cfg.train.stages)
    from toyformer.train.topic import build_optimizer

    return lambda module: build_optimizer(cfg, module)


def member_config(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    """The config of one member of a group: the group's, at its own seed."""
    raw = cfg.model_dump(mode="json", exclude_none=True)
    raw.pop("seeds", None)
    return validate(raw | {"seed": seed})


def aggregate(cfg: ExperimentConfig, summaries: list[dict]) -> dict:
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
    cfg: ExperimentConfig,
    seeds: list[int],
    out: Path | None,
    train: Callable,
    sequential: bool = False,
    on_step: Callable | None = None,
    figures: bool = True,
) -> Path:
    """Train every seed and write the group summary; returns the group directory. Stacked by default; with
    ``sequential``, ``train(cfg, out)`` trains one member at a time. ``on_step(step, records)`` follows a stacked run.
    """
    out = Path(out) if out is not None else default_dir(cfg, "seeds")
    raw = cfg.model_dump(mode="json", exclude_none=True) | {"seeds": seeds}
    group = {"seeds": seeds, "config": raw, "stacked": not sequential}
    if sequential:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "group.json", json.dumps(group, indent=2))
        return _finish(out, cfg, seeds, train)
    from toyformer.train.ensemble import Ensemble, Member

    experiments = [build_experiment(member_config(cfg, seed)) for seed in seeds]  # every error before a directory
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: the directory exists and is not empty; pick a new one or --resume it")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "group.json", json.dumps(group, indent=2))
    members = [Member(s, x, Run.create(x.cfg, out / f"seed-{s}")) for s, x in zip(seeds, experiments, strict=True)]
    ensemble = Ensemble(members, out, build_optimizer(cfg))
    ensemble.train(0, on_step)
    return _finish_stacked(out, cfg, ensemble, figures)


def _finish_stacked(out: Path, cfg: ExperimentConfig, ensemble, figures: bool) -> Path:
    summaries = ensemble.finish()
    return _write_group(out, cfg, [m.run for m in ensemble.members], summaries, figures)


def _write_group(out: Path, cfg: ExperimentConfig, runs: list[Run], summaries: list[dict], figures: bool) -> Path:
    """The group's figures (when asked) and its summary.json, written last: it marks the group complete."""
    from toyformer.report.ensemble import write_group_figures

    if figures:
        write_group_figures(out, cfg, runs)
    atomic_write(out / "summary.json", json.dumps(aggregate(cfg, summaries), indent=2))
    return out


def _finish(out: Path, cfg: ExperimentConfig, seeds: list[int], train: Callable) -> Path:
    summaries = []
    for seed in seeds:
        path = out / f"seed-{seed}"
        if not (path / "summary.json").is_file():
            if (path / "config.toml").is_file():
                train(Run.open(path).config(), None, resume=Run.open(path))
            else:
                train(member_config(cfg, seed), path)
        summaries.append(Run(path).summary())
    return _write_group(out, cfg, [Run(out / f"seed-{seed}") for seed in seeds], summaries, figures=True)


def resume_seeds(out: Path, train: Callable, on_step: Callable | None = None) -> Path:
    group = json.loads((out / "group.json").read_text())
    cfg = validate(group["config"])
    if not group.get("stacked"):
        return _finish(out, cfg, group["seeds"], train)
    from toyformer.train.ensemble import STATE, Ensemble, Member

    members = []
    for seed in group["seeds"]:
        run = Run.open(out / f"seed-{seed}")
        members.append(Member(seed, build_experiment(run.config()), run))
    ensemble = Ensemble(members, out, build_optimizer(cfg))
    if (out / STATE).is_file():
        start = ensemble.restore()
    else:  # killed before the group's first state: nothing was trained, so start over in place
        start = 0
        for m in members:
            m.run.truncate_metrics(0)
    ensemble.train(start, on_step)
    return _finish_stacked(out, cfg, ensemble, figures=True)
