"""Trackers users already have: ``toyformer run --log tensorboard`` and ``--log wandb`` copy a finished run (or every
member of a group, and the group's own figures) into them. The run directory stays what it is; the trackers'
files are added beside it: ``tensorboard/`` (TensorBoard event files: every scalar of metrics.jsonl at its probe step,
nested metrics as ``subset_share/110``, and the figures as images at the last step) and ``wandb/`` (a W&B run per
member, offline unless the environment says otherwise through ``WANDB_MODE``; ``wandb sync`` uploads it later).

They are written when the run ends, from the run directory itself, so a resumed run gives exactly the history of an
uninterrupted one. Each is an optional extra: a missing one is refused before anything trains.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from toyformer.config import ConfigError
from toyformer.report.page import scalars
from toyformer.runs import Run

# tracker → (the module it needs, how to install it)
TRACKERS = {
    "tensorboard": ("tensorboard", "pip install 'toyformer[tensorboard]' (or pip install tensorboard==2.21.0)"),
    "wandb": ("wandb", "pip install 'toyformer[wandb]' (or pip install wandb==0.31.0)"),
}
PROJECT = "toyformer"  # the W&B project unless WANDB_PROJECT names another


def check(names: list[str]) -> list[str]:
    """The trackers asked for, each known and importable; else a one-line ConfigError that says what to install."""
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"--log {name!r}: choose from {', '.join(TRACKERS)}")
        module, install = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--log {name} needs the {module} package, which is not installed: {install}")
    return list(dict.fromkeys(names))


def tag(name: str) -> str:
    """A metric's name as a tracker's tag: nested names with slashes (TensorBoard and W&B group by them)."""
    return name.replace(".", "/")


def _history(run: Run) -> list[tuple[int, dict[str, float]]]:
    return [(int(r["step"]), {k: v for k, v in scalars(r).items() if v is not None}) for r in run.metrics()]


def _figures(path: Path) -> list[Path]:
    return sorted((path / "figures").glob("*.png"))


def _image(path: Path) -> np.ndarray:
    from PIL import Image  # matplotlib's own dependency

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def export(path: Path, names: list[str]) -> list[Path]:
    """Write the trackers' files of a finished run or group directory; returns the folders written."""
    path = Path(path)
    members = sorted(p.parent for p in path.glob("seed-*/config.toml"))
    group = bool(members) and (path / "group.json").is_file()
    runs = [(m.name, Run(m)) for m in members] if group else [(path.name, Run(path))]
    out = []
    for name in names:
        writer = _tensorboard if name == "tensorboard" else _wandb
        out.append(writer(path, runs, _figures(path) if group else []))
    return out


def _tensorboard(path: Path, runs: list[tuple[str, Run]], group_figures: list[Path]) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    root = path / "tensorboard"
    shutil.rmtree(root, ignore_errors=True)  # it is rebuilt whole from the run directory: no duplicate steps
    single = len(runs) == 1 and not group_figures
    last = 0
    for label, run in runs:
        writer = SummaryWriter(log_dir=str(root if single else root / label))
        history = _history(run)
        for step, values in history:
            for key, value in values.items():
                writer.add_scalar(tag(key), value, step)
        last = max(last, history[-1][0] if history else 0)
        for figure in _figures(run.path):
            writer.add_image(
                f"figures/{figure.stem}", _image(figure), history[-1][0] if history else 0, dataformats="HWC"
            )
        writer.close()
    if group_figures:
        writer = SummaryWriter(log_dir=str(root / "group"))
        for figure in group_figures:
            writer.add_image(f"figures/{figure.stem}", _image(figure), last, dataformats="HWC")
        writer.close()
    return root


def _wandb(path: Path, runs: list[tuple[str, Run]], group_figures: list[Path]) -> Path:
    import wandb

    mode = os.environ.get("WANDB_MODE", "offline")
    project = os.environ.get("WANDB_PROJECT", PROJECT)
    group = path.name if len(runs) > 1 or group_figures else None
    for label, run in runs:
        config: dict[str, Any] = run.raw_config()
        session = wandb.init(
            project=project,
            dir=str(path),
            mode=mode,
            name=label if group else path.name,
            group=group,
            config=config,
            settings=_quiet(wandb),
        )
        history = _history(run)
        for step, values in history:
            session.log({tag(k): v for k, v in values.items()}, step=step)
        images = {f"figures/{f.stem}": wandb.Image(str(f)) for f in _figures(run.path)}
        if images:
            session.log(images, step=history[-1][0] if history else 0)
        if run.complete:
            summary = run.summary()
            session.summary.update({f"claims/{c['name']}": bool(c["ok"]) for c in summary.get("checks", [])})
        session.finish()
    if group_figures:
        session = wandb.init(
            project=project,
            dir=str(path),
            mode=mode,
            name="group",
            group=group,
            job_type="group",
            settings=_quiet(wandb),
        )
        session.log({f"figures/{f.stem}": wandb.Image(str(f)) for f in group_figures})
        session.finish()
    return path / "wandb"


def _quiet(wandb: Any) -> Any:
    # toyformer prints its own progress; W&B would also capture the console into the run
    return wandb.Settings(silent=True, console="off")
