"""The stacked step of TF(M, H, d, D) in a seed ensemble (``toyformer.train.ensemble``): one plan over all members'
chains (their windows shared), each member's pair kernel by ``torch.func.vmap`` on its own distinct pairs, then the
classifier over every member's key groups at once, each member's pair table scaled by its own a."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.func import functional_call, vmap

from toyformer.config import ConfigError
from toyformer.induction.losses import target_losses
from toyformer.induction.plan import GroupSum, Plan, describe_plan, make_plan
from toyformer.train.ensemble import Method


@dataclass
class StackedPlan:
    """A plan over every member's chains, and where each member's kernel entries sit. A kernel entry is read by a
    run of consecutive groups; ``SortedGather`` sums the gradient of each run."""

    plan: Plan
    head_pair: (
        torch.Tensor
    )  # (members, width, H): the table entries of member e's k-th distinct pair (pair 0 in the padding)
    entry: torch.Tensor  # (groups,) each group's entry of the flattened (members, width) kernel
    slots: torch.Tensor  # (runs,) the entry each run of equal entries reads
    lengths: torch.Tensor  # (runs,) the length of each run


class InductionStep:
    """Induction models (paper 2): one plan over all members' sequences (their windows shared), each member's pair
    kernel by vmap, then the classifier over all members' groups, each member's pairs scaled by its own a."""

    def __init__(self, experiments: list):
        self.template = experiments[0].model
        self.cfg = experiments[0].cfg
        self.datas = [x.data for x in experiments]
        self.pair_kernel = Method(self.template, "pair_kernel")
        self.fixed = None
        if all(data.full for data in self.datas):
            tokens = torch.cat([data.train.tokens for data in self.datas])
            self.fixed = self._plan(tokens, sums=tokens.device.type == "cpu")

    def _plan(self, tokens: torch.Tensor, sums: bool = False) -> StackedPlan:
        """``sums``: with the groups' sparse sum (built once: the fixed plan, on the CPU)."""
        d, model = self.cfg.data, self.template
        if d.targets != "last" or self.cfg.model.plan_path not in ("auto", "grouped"):
            raise ConfigError(
                "a stacked ensemble of induction models needs the grouped path (data.targets = 'last', "
                "model.path auto or grouped): run the seeds one after another with --sequential"
            )
        # the members share the plan, and its choices
        plan = make_plan(tokens, model.band, d.d, d.targets, "grouped", patterns=self.cfg.model.equality_kernel)
        # Each member computes its kernel only on its own distinct pairs (a quarter of the union's for E5), padded to
        # the largest member's count. Groups are ordered by (member, pair), so the gather of each group's entry has
        # as gradient a sum over runs of equal entries (segment sums) instead of contended atomic adds.
        g, members = plan.groups, len(self.datas)
        pairs = int(g.pair.max()) + 1
        member = g.seq // (len(tokens) // members)
        code, order = torch.sort(member * pairs + g.pair, stable=True)
        plan.groups = replace(g, **{f: getattr(g, f)[order] for f in ("seq", "slot", "count", "log_count", "pair")})
        runs, lengths = torch.unique_consecutive(code, return_counts=True)  # each member's pairs, in order
        run_member = runs // pairs
        per_member = torch.bincount(run_member, minlength=members)
        width = int(per_member.max())
        rank = torch.arange(len(runs), device=runs.device) - (torch.cumsum(per_member, 0) - per_member)[run_member]
        padded = torch.zeros(members * width, dtype=torch.long, device=runs.device)
        padded[run_member * width + rank] = runs % pairs  # member e's k-th pair (pair 0 in the padding)
        head_pair = g.head_pair.index_select(1, padded).view(-1, members, width).transpose(0, 1).contiguous()
        slots = run_member * width + rank  # each run's entry in the (members, width) kernel
        entry = slots.repeat_interleave(lengths)
        if sums:
            plan.groups.sum = GroupSum(plan.groups.slot, entry, plan.groups.count, len(tokens) * d.d, members * width)
        return StackedPlan(plan, head_pair, entry, slots, lengths)

    def describe(self) -> dict:
        """The shared plan's path (the fixed plan's; streamed chains: the first batch's), for the members' meta."""
        return {"plan": describe_plan(self.batch(0).plan) | {"shared_by_members": len(self.datas)}}

    def batch(self, step: int) -> StackedPlan:
        if self.fixed is not None:
            return self.fixed
        return self._plan(torch.cat([data.tokens(step) for data in self.datas]))

    def losses(self, stacked: nn.Module, batch: StackedPlan) -> torch.Tensor:
        plan = batch.plan
        state = {
            f"module.{k}": v for k, v in (dict(stacked.named_parameters()) | dict(stacked.named_buffers())).items()
        }
        kernel = vmap(lambda s, hp: functional_call(self.pair_kernel, s, (plan, hp)))(state, batch.head_pair)  # (E, W)
        y = self.template.classify(
            plan.groups,
            kernel,
            stacked.a[:, None],
            len(plan.labels),
            lambda t: SortedGather.apply(t.reshape(-1), batch.entry, batch.slots, batch.lengths),
            plan.groups.sum,
        )
        return target_losses(y, plan.labels, self.cfg.train.loss).view(len(self.datas), -1).mean(1)


class SortedGather(torch.autograd.Function):
    """source[index] for a sorted index. On CUDA the gradient sums each run of equal indices (``runs`` with
    ``lengths``) as differences of one float64 prefix sum, where index_select's own backward adds with atomics that
    collide on repeated indices (70% of an E5 step of 256 members on an H100), and torch.segment_reduce spends a
    thread block on each of millions of short runs. On the CPU, where adds do not collide, a plain scatter_add is
    several times faster than the prefix sum (and 1.4x faster than index_add)."""

    @staticmethod
    def forward(ctx, source: torch.Tensor, index: torch.Tensor, runs: torch.Tensor, lengths: torch.Tensor):
        ctx.save_for_backward(index, runs, lengths)
        ctx.size = len(source)
        return source.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        index, runs, lengths = ctx.saved_tensors
        return run_sums(grad, index, runs, lengths, ctx.size, prefix=grad.is_cuda), None, None, None


def run_sums(
    grad: torch.Tensor, index: torch.Tensor, runs: torch.Tensor, lengths: torch.Tensor, size: int, prefix: bool
) -> torch.Tensor:
    """(size,) the sum of ``grad`` over each run of equal entries of the sorted ``index``: by a float64 prefix sum
    (``prefix``) or by scatter_add."""
    out = grad.new_zeros(size)
    if not prefix:
        return out.scatter_add_(0, index, grad)
    total = torch.cumsum(grad, 0, dtype=torch.float64)[torch.cumsum(lengths, 0) - 1]
    out[runs] = torch.diff(total, prepend=total.new_zeros(1)).to(grad.dtype)
    return out
