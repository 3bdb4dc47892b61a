"""The shared training loop: batches as a function of the step, probes on a log-spaced schedule, checkpoints
(model, optimizer, RNG state and the running loss) at log-spaced steps and at the end, exact resume.

Step s of the loop computes the gradient of batch s on the model after s updates; a probe at step s reads that
model (and that gradient), then the update is applied. A checkpoint "at step s" holds the state after s updates, so
resuming from it recomputes step s exactly as the uninterrupted run did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from toyformer.config import ConfigError
from toyformer.report.page import write_run_page
from toyformer.runs import Run
from toyformer.train.memory import release_freed_memory, reuse_freed_memory


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda: no CUDA device is visible here; use --device cpu")
    return torch.device(name)


def log_schedule(total: int, count: int) -> list[int]:
    """0, ``count`` roughly log-spaced steps in [1, total], and ``total``; sorted, without repeats."""
    steps = np.unique(np.round(np.geomspace(1, max(total, 1), count)).astype(int))
    return sorted({0, total, *(int(s) for s in steps if s <= total)})


@dataclass
class Loop:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batch: Callable[[int], object]
    loss: Callable[[torch.nn.Module, object], torch.Tensor]
    probe: Callable[[int, float], dict]  # (step, mean train loss since the last probe) → metrics record
    matrices: Callable[[], dict]  # the matrices the report page shows, read at probe steps only
    steps: int
    probe_steps: list[int]
    checkpoint_steps: list[int]
    run: Run
    on_step: Callable[[int, dict | None], None] = lambda step, record: None
    grad_clip: float | None = None
    stop_loss: float | None = None
    running: list[float] = field(default_factory=lambda: [0.0, 0.0])  # train-loss sum and count since last probe

    def state(self, step: int) -> dict:
        return {
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "running": list(self.running),
        }

    def restore(self, state: dict) -> int:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.running = list(state["running"])
        self.run.truncate_probes(state["step"])
        return state["step"]

    def __call__(self, start: int = 0) -> int | None:
        """Train from ``start``; returns the step it stopped at early (``stop_loss`` reached), else None."""
        probe_at, checkpoint_at = set(self.probe_steps), set(self.checkpoint_steps)
        if start == 0:
            self.run.save_checkpoint(0, self.state(0))
        device = next(self.model.parameters()).device
        loss_sum = torch.full((), self.running[0], dtype=torch.float64, device=device)  # no host sync per step
        for step in range(start, self.steps + 1):
            self.model.train()
            batch = self.batch(step)
            loss = self.loss(self.model, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss_sum += loss.detach().double()
            self.running[1] += 1
            record = None
            if step in probe_at:
                mean_loss = float(loss_sum) / self.running[1]
                self.model.eval()
                record = self.probe(step, mean_loss)
                self.run.append_metrics(record)
                self.run.add_matrices(step, self.matrices())
                release_freed_memory()  # log-spaced: the holes reuse leaves do not pile up over a run
                loss_sum.zero_()
                self.running[1] = 0
                if self.stop_loss is not None and mean_loss <= self.stop_loss:
                    self.on_step(step, record)
                    return step
            if step < self.steps:
                if self.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                self.optimizer.step()
                if step + 1 in checkpoint_at:
                    self.running[0] = float(loss_sum)
                    self.run.save_checkpoint(step + 1, self.state(step + 1))
            self.on_step(step, record)
        return None


class Experiment(Protocol):
    """What ``train`` needs of a task: everything built from the config alone, so a resumed run rebuilds it."""

    cfg: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def batch(self, step: int) -> object: ...
    def loss(self, model: torch.nn.Module, batch: object) -> torch.Tensor: ...
    def probe(self, step: int, loss_train: float) -> dict: ...
    def matrices(self) -> dict: ...  # name → array of the model as it is now, for the report page (a few, small)
    def views(self, summary: dict, records: list[dict]) -> dict: ...  # what the report page shows (report.page)
    def schedule(self) -> tuple[int, list[int], list[int]]: ...  # steps, probe steps, checkpoint steps
    def summary(self, run: Run) -> dict: ...
    def write_figures(self, run: Run) -> list[str]: ...


def describe(computer: object) -> dict:
    """What an experiment (or a stacked step) chose for itself that the config does not say (a family's computation
    path, say), for meta.json: its ``describe()`` where it has one."""
    method = getattr(computer, "describe", None)
    return method() if method is not None else {}


def train(
    experiment: Experiment,
    out: Path | None = None,
    on_step: Callable | None = None,
    resume: Run | None = None,
    figures: bool = True,
) -> Run:
    """Train an experiment into a new run directory (or continue ``resume``), then write its figures, its report
    page and its summary."""
    reuse_freed_memory()
    run = resume or Run.create(experiment.cfg, out)
    if resume is None:
        run.update_meta(**describe(experiment))
    steps, probe_steps, checkpoint_steps = experiment.schedule()
    loop = Loop(
        model=experiment.model,
        optimizer=experiment.optimizer,
        batch=experiment.batch,
        loss=experiment.loss,
        probe=experiment.probe,
        matrices=experiment.matrices,
        steps=steps,
        probe_steps=probe_steps,
        checkpoint_steps=checkpoint_steps,
        run=run,
        on_step=on_step or (lambda step, record: None),
        grad_clip=experiment.cfg.train.grad_clip,
        stop_loss=experiment.cfg.train.stop_loss,
    )
    start = 0
    if resume is not None:
        state = run.load_checkpoint()
        if state is None:  # killed before its step-0 checkpoint: nothing was trained, so start over in place
            run.truncate_probes(0)
        else:
            start = loop.restore(state)
    stopped = loop(start)
    release_freed_memory()
    summary = experiment.summary(run)
    if stopped is not None:
        summary["stopped_at_step"] = stopped
    if figures:
        experiment.write_figures(run)
    write_run_page(run, experiment.views, summary)  # before summary.json: a complete run has its page
    run.write_summary(summary)
    return run
