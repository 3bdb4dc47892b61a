"""Several seeds of one recipe: one member run per seed under a group directory, claims and metrics aggregated.

The group's summary.json reports each claim as the share of seeds for which it held (it holds for the group when
the share reaches the claim's ``min_share``), each numeric final metric as mean, standard deviation, range and a 95%
interval of the mean, and each text one (the selected subset) as counts per value. A group is complete exactly when
its summary.json exists; resuming runs what is missing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from toyformer.config import ExperimentConfig, validate
from toyformer.runs import Run, atomic_write, default_dir


def _member(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    raw = cfg.model_dump(mode="json", exclude_none=True)
    raw.pop("seeds", None)
    return validate(raw | {"seed": seed})


def aggregate(cfg: ExperimentConfig, summaries: list[dict]) -> dict:
    final: dict[str, dict] = {}
    keys = [k for k in summaries[0]["final"] if all(isinstance(s["final"].get(k), int | float) for s in summaries)]
    for key in keys:
        xs = [float(s["final"][key]) for s in summaries]
        n = len(xs)
        mean = sum(xs) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
        half = 1.96 * std / math.sqrt(n)
        final[key] = {"mean": mean, "std": std, "min": min(xs), "max": max(xs), "ci95": [mean - half, mean + half]}
    for key in [k for k in summaries[0]["final"] if all(isinstance(s["final"].get(k), str) for s in summaries)]:
        values = [s["final"][key] for s in summaries]  # e.g. the selected subset: how often each one
        final[key] = {"counts": {v: values.count(v) for v in sorted(set(values))}}
    checks = []
    for i, claim in enumerate(cfg.claims):
        held = [s["checks"][i]["ok"] for s in summaries]
        share = sum(held) / len(held)
        checks.append(
            {
                "name": claim.name,
                "ok": share >= claim.min_share,
                "share": share,
                "min_share": claim.min_share,
                "measured": [s["checks"][i]["measured"] for s in summaries],
                "expected": f"{summaries[0]['checks'][i]['expected']} in >= {claim.min_share:.0%} of seeds",
            }
        )
    return {
        "name": cfg.name,
        "seeds": [s["seed"] for s in summaries],
        "final": final,
        "theory": summaries[0]["theory"],
        "checks": checks,
    }


def run_seeds(cfg: ExperimentConfig, seeds: list[int], out: Path | None, train: Callable) -> Path:
    """Run every seed (``train(cfg, out)`` trains one) and write the group summary; returns the group directory."""
    out = Path(out) if out is not None else default_dir(cfg, "seeds")
    out.mkdir(parents=True, exist_ok=True)
    raw = cfg.model_dump(mode="json", exclude_none=True) | {"seeds": seeds}
    atomic_write(out / "group.json", json.dumps({"seeds": seeds, "config": raw}, indent=2))
    return _finish(out, cfg, seeds, train)


def _finish(out: Path, cfg: ExperimentConfig, seeds: list[int], train: Callable) -> Path:
    summaries = []
    for seed in seeds:
        path = out / f"seed-{seed}"
        if not (path / "summary.json").is_file():
            if (path / "config.toml").is_file():
                train(Run.open(path).config(), None, resume=Run.open(path))
            else:
                train(_member(cfg, seed), path)
        summaries.append(Run(path).summary())
    atomic_write(out / "summary.json", json.dumps(aggregate(cfg, summaries), indent=2))
    return out


def resume_seeds(out: Path, train: Callable) -> Path:
    group = json.loads((out / "group.json").read_text())
    cfg = validate(group["config"])
    return _finish(out, cfg, group["seeds"], train)
