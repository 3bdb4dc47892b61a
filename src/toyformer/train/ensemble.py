"""Seed ensembles: many seeds of one recipe trained in one process, their parameters stacked
along a leading member axis, so that one optimizer step moves every member.

Each member is the solo experiment of its seed: its own init, data, probes and run directory under the group. Only
the training step is shared, and each family writes its own (``Task.stacked``: ``toyformer.topic.stacked``,
``toyformer.induction.stacked``): one batch of all members' data and every member's loss from the stacked
parameters in one pass. The loss is the sum of the members' losses, so each member's gradient is its own,
and the optimizers act elementwise (SGD, Adam), so each member moves as it would alone.

Per member: gradient clipping (``train.grad_clip``, on the member's own norm), early stopping (``train.stop_loss``,
checked at probe steps, as a solo run does), and a guard: a member whose loss or gradient is not finite is frozen
at its last finite parameters from that step on and its run ends there; the others go on untouched. Nothing is read
back from the device except at probe and checkpoint steps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from toyformer.claims import all_checks
from toyformer.report.page import write_run_page
from toyformer.runs import Run, atomic_save, safe_load
from toyformer.task import Task
from toyformer.train.loop import describe
from toyformer.train.memory import release_freed_memory, reuse_freed_memory

STATE = "ensemble.pt"  # the group's resumable state: stacked parameters, optimizer, guards, running losses


def stack_modules(models: list[nn.Module]) -> nn.Module:
    """A copy of ``models[0]`` whose every parameter and buffer is the members' stacked along a new axis 0."""
    stacked = copy.deepcopy(models[0])
    for name, p in models[0].named_parameters():
        owner, attr = _owner(stacked, name)
        value = torch.stack([m.get_parameter(name).detach() for m in models])
        owner._parameters[attr] = nn.Parameter(value, requires_grad=p.requires_grad)
    for name, _ in models[0].named_buffers():
        owner, attr = _owner(stacked, name)
        owner._buffers[attr] = torch.stack([m.get_buffer(name) for m in models])
    return stacked


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    prefix, _, attr = name.rpartition(".")
    return module.get_submodule(prefix), attr


def member_state(stacked: nn.Module, e: int) -> dict[str, torch.Tensor]:
    return {k: v[e].clone() for k, v in stacked.state_dict().items()}


class Method(nn.Module):
    """Calls one method of a module, so ``functional_call`` can run it with other parameters."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args):
        return getattr(self.module, self.method)(*args)


# ---------------------------------------------------------------------------------------------------------------
# The ensemble


@dataclass
class Member:
    seed: int
    experiment: object
    run: Run


class Ensemble:
    """Members (one solo experiment per seed, each with its run directory) trained together."""

    def __init__(self, members: list[Member], out: Path, task: Task):
        self.members, self.out = members, Path(out)
        experiments = [m.experiment for m in members]
        first = experiments[0]
        self.cfg = first.cfg
        self.steps, self.probe_steps, self.checkpoint_steps = first.schedule()
        self.stacked = stack_modules([x.model for x in experiments])
        self.family = task.stacked_step(experiments)
        self.optimizer = task.make_optimizer(self.cfg)(self.stacked)
        self.trained = [p for p in self.stacked.parameters() if p.requires_grad]
        device = self.trained[0].device
        n = len(members)
        self.loss_sum = torch.zeros(n, dtype=torch.float64, device=device)
        self.count = 0
        self.active = torch.ones(n, dtype=torch.bool, device=device)  # neither diverged nor stopped
        self.diverged_at = torch.full((n,), -1, dtype=torch.long, device=device)
        self.ended = [None] * n  # the step a member's run ended at (diverged or stopped), once known on the host
        self.stopped = [False] * n

    def record_choices(self) -> None:
        """Write what the stacked step chose (an induction plan's path, say), which every member shares, into each
        member's meta.json."""
        choices = describe(self.family)
        for member in self.members:
            member.run.update_meta(**choices)

    # -- state ---------------------------------------------------------------------------------------------------
    def state(self, step: int) -> dict:
        return {
            "step": step,
            "module": self.stacked.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loss_sum": self.loss_sum,
            "count": self.count,
            "active": self.active,
            "diverged_at": self.diverged_at,
            "ended": self.ended,
            "stopped": self.stopped,
            "torch_rng": torch.get_rng_state(),
        }

    def save(self, step: int) -> None:
        for e, m in enumerate(self.members):  # what a member's own tools read (stage moves, eval, reports)
            m.run.save_checkpoint(step, {"step": step, "model": member_state(self.stacked, e)})
        atomic_save(self.out / STATE, self.state(step))

    def restore(self) -> int:
        state = safe_load(self.out / STATE, map_location=self.trained[0].device)
        self.stacked.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loss_sum, self.count = state["loss_sum"], state["count"]
        self.active, self.diverged_at = state["active"], state["diverged_at"]
        self.ended, self.stopped = state["ended"], state["stopped"]
        torch.set_rng_state(state["torch_rng"])
        for m in self.members:
            m.run.truncate_probes(state["step"])
        return state["step"]

    # -- training ------------------------------------------------------------------------------------------------
    def train(self, start: int = 0, on_step: Callable[[int, list[dict]], None] | None = None) -> None:
        reuse_freed_memory()
        probe_at, checkpoint_at = set(self.probe_steps), set(self.checkpoint_steps)
        if start == 0:
            self.save(0)
        for step in range(start, self.steps + 1):
            grads = self.gradients(step)
            records = []
            if step in probe_at:
                records = self._probe(step)
                release_freed_memory()  # log-spaced: the holes reuse leaves do not pile up over a run
            if step < self.steps:
                self.update(grads)
                if step + 1 in checkpoint_at:
                    self.save(step + 1)
            if on_step is not None:
                on_step(step, records)
        release_freed_memory()

    def gradients(self, step: int) -> list[torch.Tensor]:
        """Every member's loss on its batch of ``step`` and its gradient; marks members whose loss or gradient is
        not finite as diverged (on the device: no host sync)."""
        self.stacked.train()
        losses = self.family.losses(self.stacked, self.family.batch(step))
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # member e's loss reaches only member e's parameters
        grads = [p.grad for p in self.trained if p.grad is not None]
        # a NaN or inf anywhere in a member's loss or gradient makes this sum non-finite
        finite = torch.isfinite(torch.stack([losses.detach()] + [g.reshape(len(g), -1).sum(1) for g in grads]).sum(0))
        self.diverged_at = torch.where(self.active & ~finite, step, self.diverged_at)
        self.active &= finite
        self.loss_sum += losses.detach().double()
        self.count += 1
        return grads

    def update(self, grads: list[torch.Tensor]) -> None:
        """One optimizer step for the running members; the others keep their parameters."""
        clip = self.cfg.train.grad_clip
        if clip is not None:  # as clip_grad_norm_, on each member's own norm
            norm = torch.stack([g.double().pow(2).reshape(len(g), -1).sum(1) for g in grads]).sum(0).sqrt()
            scale = (clip / (norm + 1e-6)).clamp(max=1.0).float()
            for g in grads:
                g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))
        # A frozen member's gradient may hold NaN: optimizers act elementwise, so it stays in that member's slice of
        # the optimizer state, which is never read again (a frozen member never runs again).
        before = [p.detach().clone() for p in self.trained]
        self.optimizer.step()
        with torch.no_grad():
            for p, old in zip(self.trained, before, strict=True):
                p.copy_(torch.where(self.active.view(-1, *[1] * (p.dim() - 1)), p, old))

    def _probe(self, step: int) -> list[dict]:
        """Each running member's probe record, measured on its own model with its slice of the stacked state."""
        mean = (self.loss_sum / self.count).tolist()
        self.loss_sum.zero_()
        self.count = 0
        diverged = self.diverged_at.tolist()
        stop = self.cfg.train.stop_loss
        records = []
        for e, m in enumerate(self.members):
            if self.ended[e] is not None:
                continue
            if diverged[e] >= 0:  # its run ends at the step it diverged; its last record says so
                self.ended[e] = diverged[e]
            self._load(e, m.experiment.model, grad=True)
            record = m.experiment.probe(step, mean[e])
            m.run.append_metrics(record)
            m.run.add_matrices(step, m.experiment.matrices())
            records.append(record)
            if self.ended[e] is None and stop is not None and mean[e] <= stop:
                self.ended[e], self.stopped[e] = step, True
                self.active[e] = False
        return records

    def _load(self, e: int, model: nn.Module, grad: bool = False) -> None:
        """Member e's slice of the stacked state into its own model (and of this step's gradient: probes read it)."""
        model.load_state_dict(member_state(self.stacked, e))
        model.eval()
        if grad:
            stacked = dict(self.stacked.named_parameters())
            for name, p in model.named_parameters():
                g = stacked[name].grad
                p.grad = None if g is None else g[e].clone()

    # -- the end ---------------------------------------------------------------------------------------------------
    def finish(self, figures: bool = False) -> list[dict]:
        """Every member's summary and report page (and figures when asked), written to its run directory."""
        summaries = []
        diverged = self.diverged_at.tolist()
        for e, m in enumerate(self.members):
            self._load(e, m.experiment.model)
            summary = m.experiment.summary(m.run)
            if diverged[e] >= 0:
                summary["diverged_at_step"] = diverged[e]
                for c in all_checks(summary):  # a diverged member holds no claim
                    c["ok"] = False
            if self.stopped[e]:
                summary["stopped_at_step"] = self.ended[e]
            if figures:
                m.experiment.write_figures(m.run)
            write_run_page(m.run, m.experiment.views, summary)
            m.run.write_summary(summary)
            summaries.append(summary)
        return summaries
