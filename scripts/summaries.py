"""Every recipe at a short length, its own fixed seed, through the CLI: a check that a change meant to keep behaviour
kept it. Solo runs, and the recipes that list seeds as stacked groups; each run's summary.json, its members'
summaries and metrics.jsonl are gathered into OUT/all.json.

    python scripts/summaries.py run OUT [--steps 30] [--recipe NAME ...]
    python scripts/summaries.py compare BEFORE/all.json AFTER/all.json

``compare`` prints every value that differs and exits 1 when any does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

QUICK_THEORY = {"topic": ["theory.samples=2000"], "induction": ["theory.kernels=200"]}


def _cli(*args: str) -> str:
    env = os.environ | {"COLUMNS": "10000"}  # no wrapped lines in the tables and TOML the CLI prints
    return subprocess.run(["toyformer", *args], capture_output=True, text=True, check=True, env=env).stdout


def recipes() -> list[str]:
    rows = [line.split("│") for line in _cli("recipes").splitlines() if line.startswith("│")]
    return [row[1].strip() for row in rows if "/" in row[1]]


def overrides(name: str, steps: int) -> list[str]:
    raw = tomllib.loads(_cli("recipes", "--show", name))
    task = raw.get("task", "topic")
    stages = raw.get("train", {}).get("stages")
    if task == "induction":
        lengths = [f"train.stages.{i}.steps={max(1, steps // len(stages))}" for i in range(len(stages))]
    else:
        lengths = [f"train.steps={steps}"]
    return lengths + QUICK_THEORY.get(task, [])


def run(out: Path, steps: int, names: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in names or recipes():
        target = out / name.replace("/", "-")
        sets = [a for o in overrides(name, steps) for a in ("--set", o)]
        done = subprocess.run(["toyformer", "run", name, "--out", str(target), *sets], capture_output=True, text=True)
        if done.returncode != 0:
            results[name] = {"error": done.stderr.strip().splitlines()[-1:]}
        else:
            metrics = target / "metrics.jsonl"
            members = sorted(target.glob("seed-*"))
            results[name] = {
                "summary": json.loads((target / "summary.json").read_text()),
                "members": {m.name: json.loads((m / "summary.json").read_text()) for m in members},
                "metrics": [json.loads(line) for line in metrics.read_text().splitlines()]
                if metrics.exists()
                else None,
            }
        print(name, "error" if "error" in results[name] else "ok", flush=True)
    (out / "all.json").write_text(json.dumps(results, indent=1, sort_keys=True))


def differences(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only on one side" for k in sorted(set(a) ^ set(b))]
        return out + [d for k in sorted(set(a) & set(b)) for d in differences(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")]
    nan = isinstance(a, float) and isinstance(b, float) and a != a and b != b
    return [] if a == b or nan else [f"{path}: {str(a)[:60]} → {str(b)[:60]}"]


def compare(before: Path, after: Path) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    differing = 0
    for name in sorted(set(a) | set(b)):
        found = differences(a.get(name), b.get(name), name)
        if found:
            differing += 1
            print(f"{name}: {len(found)} differences", *found[:8], sep="\n    ")
    print(f"{len(set(a) | set(b)) - differing} recipes identical, {differing} differ")
    return 1 if differing else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("--steps", type=int, default=30)
    r.add_argument("--recipe", action="append", dest="recipes", default=[], help="only these (repeatable)")
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = ap.parse_args()
    if args.command == "run":
        run(args.out, args.steps, args.recipes)
    else:
        sys.exit(compare(args.before, args.after))


if __name__ == "__main__":
    main()
