"""Seed ensembles (landscape feature 6): many seeds of one recipe trained in one process, their parameters stacked
along a leading member axis, so that one optimizer step moves every member.

Each member is the solo experiment of its seed: its own init, data, probes and run directory under the group. Only
the training step is shared. Topic models run one forward for all members through ``torch.func.vmap``; the
induction model computes each member's pair kernel on one plan of all members' windows and then its classifier over
every member's key groups at once. The loss is the sum of the members' losses, so each member's gradient is its own,
and the optimizers act elementwise (SGD, Adam), so each member moves as it would alone.

Per member: gradient clipping (``train.grad_clip``, on the member's own norm), early stopping (``train.stop_loss``,
checked at probe steps, as a solo run does), and a guard: a member whose loss or gradient is not finite is frozen
at its last finite parameters from that step on and its run ends there; the others go on untouched. Nothing is read
back from the device except at probe and checkpoint steps.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, vmap

from toyformer.claims import all_checks
from toyformer.config import ConfigError
from toyformer.data.batch import Batch
from toyformer.models.gih import make_plan
from toyformer.runs import Run, atomic_save, atomic_write, safe_load
from toyformer.train.induction import target_losses
from toyformer.train.losses import l2_penalty, model_loss, target_positions

STATE = "ensemble.pt"  # the group's resumable state: stacked parameters, optimizer, guards, running losses
CHUNK = 16  # steps of documents gathered at once on the fixed-document path


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


class _Method(nn.Module):
    """Calls one method of a module, so ``functional_call`` can run it with other parameters."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args):
        return getattr(self.module, self.method)(*args)


class _Model:
    """A model as ``model_loss`` sees it, running on one member's parameters (inside vmap)."""

    def __init__(self, template: nn.Module, state: dict[str, torch.Tensor]):
        self.template, self.state = template, state
        self.position_independent = template.position_independent

    def __call__(self, *args):
        return functional_call(self.template, self.state, args)


# ---------------------------------------------------------------------------------------------------------------
# The shared step of each model family: stacked batches and per-member losses


class TopicStep:
    """Topic models (paper 1): batches stacked (E, B, ...), losses by vmap over the members."""

    def __init__(self, experiments: list):
        self.template = experiments[0].model
        cfg = experiments[0].cfg
        self.kind, self.l2 = cfg.train.loss, cfg.train.l2
        self.trained = [n for n, p in self.template.named_parameters() if p.requires_grad]
        self.streams = [x.stream for x in experiments]
        static = cfg.masking.static or getattr(cfg.data, "population", False)
        self.stacked = None
        if all(s.train is not None for s in self.streams) and static:
            # Fixed documents with masks drawn once: stack them and pick every member's rows in one gather.
            self.stacked = Batch.stack([s.train for s in self.streams])
            for e, s in enumerate(self.streams):  # members keep views, not copies
                s.train = self.stacked.map(lambda t, e=e: t[e])
            self.order: tuple[int, torch.Tensor | None] = (-1, None)  # the epoch's visiting orders, (E, N)
            self.chunk: tuple[int, Batch | None] = (-1, None)  # the documents of the current CHUNK steps

    def batch(self, step: int) -> Batch:
        if self.stacked is None:
            return Batch.stack([s.batch(step) for s in self.streams])
        b = self.streams[0].batch_size
        epoch, k = divmod(step, self.streams[0].steps_per_epoch)
        if self.order[0] != epoch:  # each member's own seeded order, as its solo stream draws it
            self.order = (epoch, torch.stack([s.epoch_order(epoch) for s in self.streams]))
            self.chunk = (-1, None)
        chunk, j = divmod(k, CHUNK)
        if self.chunk[0] != chunk:  # the next CHUNK steps' documents in one gather; a step's batch is then a slice
            rows = self.order[1][:, chunk * CHUNK * b : (chunk + 1) * CHUNK * b]
            self.chunk = (chunk, self.stacked.map(lambda t: _rows(t, rows)))
        return self.chunk[1].map(lambda t: t[:, j * b : (j + 1) * b])

    def losses(self, stacked: nn.Module, batch: Batch) -> torch.Tensor:
        state = dict(stacked.named_parameters()) | dict(stacked.named_buffers())
        index = None
        if batch.soft is None and not self.template.position_independent:  # one set of positions for all members
            index = target_positions(batch.weight.flatten(0, 1)).view(*batch.weight.shape[:2], -1)
        fields = batch.fields()

        def one(state, fields, index):
            member = Batch(*fields)
            loss = model_loss(_Model(self.template, state), member, self.kind, index)
            return loss + l2_penalty([state[n] for n in self.trained], self.l2)

        dims = tuple(None if f is None else 0 for f in fields)
        return vmap(one, in_dims=(0, dims, None if index is None else 0))(state, fields, index)


def _rows(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """t (E, N, ...) at rows (E, B) → (E, B, ...): whole rows copied by one index_select."""
    flat = rows + torch.arange(len(rows), device=rows.device)[:, None] * t.shape[1]
    return t.flatten(0, 1).index_select(0, flat.flatten()).view(*rows.shape, *t.shape[2:])


class InductionStep:
    """Induction models (paper 2): one plan over all members' sequences (their windows shared), each member's pair
    kernel by vmap, then the classifier over all members' groups with each group's own a."""

    def __init__(self, experiments: list):
        self.template = experiments[0].model
        self.cfg = experiments[0].cfg
        self.datas = [x.data for x in experiments]
        self.pair_kernel = _Method(self.template, "pair_kernel")
        self.fixed = None
        if all(data.full for data in self.datas):
            self.fixed = self._plan(torch.cat([data.train.tokens for data in self.datas]))

    def _plan(self, tokens: torch.Tensor):
        d, model = self.cfg.data, self.template
        plan = make_plan(tokens, model.band, d.d, d.targets, self.cfg.model.fast)
        if plan.groups is None:
            raise ConfigError(
                "a stacked ensemble of induction models needs the grouped fast path (data.targets = 'last', "
                "model.fast = true): run the seeds one after another with --sequential"
            )
        # Each member computes its kernel only on its own distinct pairs (a quarter of the union's for E5), padded to
        # the largest member's count. Groups are ordered by (member, pair), so the gather of each group's entry has
        # as gradient a sum over runs of equal entries (segment sums) instead of contended atomic adds.
        g, members = plan.groups, len(self.datas)
        pairs = int(g.pair.max()) + 1
        member = g.seq // (len(tokens) // members)
        code, order = torch.sort(member * pairs + g.pair, stable=True)
        plan.groups = replace(g, seq=g.seq[order], slot=g.slot[order], log_count=g.log_count[order], pair=g.pair[order])
        runs, lengths = torch.unique_consecutive(code, return_counts=True)  # each member's pairs, in order
        run_member = runs // pairs
        per_member = torch.bincount(run_member, minlength=members)
        width = int(per_member.max())
        rank = torch.arange(len(runs), device=runs.device) - (torch.cumsum(per_member, 0) - per_member)[run_member]
        padded = torch.zeros(members * width, dtype=torch.long, device=runs.device)
        padded[run_member * width + rank] = runs % pairs  # member e's k-th pair (pair 0 in the padding)
        head_pair = [hp.index_select(0, padded).view(members, width) for hp in g.head_pair]
        slots = run_member * width + rank  # each run's entry in the (members, width) kernel
        entry = slots.repeat_interleave(lengths)
        member = run_member.repeat_interleave(lengths)
        return plan, (head_pair, entry, slots, lengths, (member, *torch.unique_consecutive(member, return_counts=True)))

    def batch(self, step: int):
        if self.fixed is not None:
            return self.fixed
        return self._plan(torch.cat([data.tokens(step) for data in self.datas]))

    def losses(self, stacked: nn.Module, batch) -> torch.Tensor:
        plan, (head_pair, entry, slots, lengths, member) = batch
        state = {
            f"module.{k}": v for k, v in (dict(stacked.named_parameters()) | dict(stacked.named_buffers())).items()
        }
        kernel = vmap(lambda s, hp: functional_call(self.pair_kernel, s, (plan, hp)))(state, head_pair)  # (E, width)
        k = SortedGather.apply(kernel.reshape(-1), entry, slots, lengths)
        a = SortedGather.apply(stacked.a, *member)  # each group's member's a
        y = self.template.classify(plan.groups, k, a, len(plan.labels))
        return target_losses(y, plan.labels, self.cfg.train.loss).view(len(self.datas), -1).mean(1)


class SortedGather(torch.autograd.Function):
    """source[index] for a sorted index; the gradient sums each run of equal indices (``runs`` with ``lengths``) as
    differences of one float64 prefix sum, where index_select's own backward adds with atomics that collide on
    repeated indices (70% of an E5 step of 256 members on an H100), and torch.segment_reduce spends a thread block
    on each of millions of short runs."""

    @staticmethod
    def forward(ctx, source: torch.Tensor, index: torch.Tensor, runs: torch.Tensor, lengths: torch.Tensor):
        ctx.save_for_backward(runs, lengths)
        ctx.size = len(source)
        return source.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        runs, lengths = ctx.saved_tensors
        total = torch.cumsum(grad, 0, dtype=torch.float64)[torch.cumsum(lengths, 0) - 1]
        out = grad.new_zeros(ctx.size)
        out[runs] = torch.diff(total, prepend=total.new_zeros(1)).to(grad.dtype)
        return out, None, None, None


# ---------------------------------------------------------------------------------------------------------------
# The ensemble


@dataclass
class Member:
    seed: int
    experiment: object
    run: Run


class Ensemble:
    """Members (one solo experiment per seed, each with its run directory) trained together."""

    def __init__(self, members: list[Member], out: Path, optimizer: Callable[[nn.Module], object]):
        self.members, self.out = members, Path(out)
        experiments = [m.experiment for m in members]
        first = experiments[0]
        self.cfg = first.cfg
        self.steps, self.probe_steps, self.checkpoint_steps = first.schedule()
        self.stacked = stack_modules([x.model for x in experiments])
        self.family = InductionStep(experiments) if self.cfg.task == "induction" else TopicStep(experiments)
        self.optimizer = optimizer(self.stacked)
        self.trained = [p for p in self.stacked.parameters() if p.requires_grad]
        device = self.trained[0].device
        n = len(members)
        self.loss_sum = torch.zeros(n, dtype=torch.float64, device=device)
        self.count = 0
        self.active = torch.ones(n, dtype=torch.bool, device=device)  # neither diverged nor stopped
        self.diverged_at = torch.full((n,), -1, dtype=torch.long, device=device)
        self.ended = [None] * n  # the step a member's run ended at (diverged or stopped), once known on the host
        self.stopped = [False] * n

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
            m.run.truncate_metrics(state["step"])
        return state["step"]

    # -- training ------------------------------------------------------------------------------------------------
    def train(self, start: int = 0, on_step: Callable[[int, list[dict]], None] | None = None) -> None:
        probe_at, checkpoint_at = set(self.probe_steps), set(self.checkpoint_steps)
        if start == 0:
            self.save(0)
        for step in range(start, self.steps + 1):
            grads = self.gradients(step)
            records = self._probe(step) if step in probe_at else []
            if step < self.steps:
                self.update(grads)
                if step + 1 in checkpoint_at:
                    self.save(step + 1)
            if on_step is not None:
                on_step(step, records)

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
        """Every member's summary (and figures when asked), written to its run directory."""
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
            m.run.write_summary(summary)
            summaries.append(summary)
        return summaries


def write_group(out: Path, payload: dict) -> None:
    atomic_write(Path(out) / "group.json", json.dumps(payload, indent=2))
