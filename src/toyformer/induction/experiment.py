"""The induction-head experiment (paper 2, docs/induction-heads.md §1–6): recipe config → n-gram chains + TF(M, H, d, D)
→ staged training → run directory, with the theory's S* and reference losses beside the learned model."""

from __future__ import annotations

from pathlib import Path

import torch

from toyformer.claims import summarize
from toyformer.config import ConfigError, apply_overrides, validate_as
from toyformer.induction.chains import Chains, sample_batch
from toyformer.induction.config import InductionConfig, Stage
from toyformer.induction.losses import prediction_loss
from toyformer.induction.model import GIHTransformer
from toyformer.induction.plan import Plan, describe_plan, make_plan
from toyformer.induction.probes import InductionProbe, reference_table, snapshot
from toyformer.induction.theory import predicted_offsets, prediction
from toyformer.induction.views import page
from toyformer.random import generator
from toyformer.runs import Run
from toyformer.train.loop import log_schedule, resolve_device

SHOWN_CHAINS = 3  # validation chains whose copy weights the report page shows


class StagedOptimizer:
    """Stages run one after another (docs/induction-heads.md §4): stage k's optimizer updates only its groups, for its
    steps."""

    def __init__(self, model: GIHTransformer, stages: list[Stage]):
        self.optimizers = [_optimizer(model.group_params(s.groups), s) for s in stages]
        self.ends = [sum(s.steps for s in stages[: k + 1]) for k in range(len(stages))]
        self.done = 0  # updates applied so far

    def stage(self, step: int) -> int:
        return next((k for k, end in enumerate(self.ends) if step < end), len(self.ends) - 1)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.optimizers[self.stage(self.done)].step()
        self.done += 1

    def state_dict(self) -> dict:
        return {"done": self.done, "optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        self.done = state["done"]
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)


def optimizer(cfg: InductionConfig, module: torch.nn.Module) -> StagedOptimizer:
    """The staged optimizer of a run, on ``module`` (the model, or a stacked ensemble of models)."""
    return StagedOptimizer(module, cfg.train.stages)


def _optimizer(params: list[torch.nn.Parameter], stage: Stage) -> torch.optim.Optimizer:
    if stage.optimizer == "adam":
        return torch.optim.Adam(params, lr=stage.lr)
    return torch.optim.SGD(params, lr=stage.lr, momentum=stage.momentum)


class Chainsets:
    """The training chains (a fixed set, full-batch or mini-batch, or a fresh stream) and the validation chains,
    as functions of (seed, step). Any model of the chains reads them (TF(M, H, d, D), standard transformers)."""

    def __init__(self, cfg, device: torch.device):
        self.cfg, self.device = cfg, device
        data = cfg.data
        if data.split == "fixed":
            chains = self._sample(data.sequences, generator(cfg.seed, "chains", device=device))
            n = data.train_sequences
            self.train = Chains(chains.tokens[:n], chains.kernels[:n])
            self.val = Chains(chains.tokens[n:], chains.kernels[n:])
            self.full = data.batch_size is None or data.batch_size >= n
        else:
            self.val = self._sample(data.val_sequences, generator(cfg.seed, "val-chains", device=device))
            self.full = False

    def _sample(self, n: int, gen: torch.Generator) -> Chains:
        d = self.cfg.data
        return sample_batch(
            n, d.d, tuple(d.parents), d.alpha, d.length, gen, d.start, self.device, redraw_last=d.first_order
        )

    def tokens(self, step: int) -> torch.Tensor:
        """The chains (B, L+1) of step ``step``."""
        if self.full:
            return self.train.tokens
        gen = generator(self.cfg.seed, "batch", step, self.device)
        size = self.cfg.data.batch_size
        if self.cfg.data.split == "stream":
            return self._sample(size, gen).tokens
        rows = torch.randint(len(self.train.tokens), (size,), generator=gen, device=self.device)
        return self.train.tokens[rows]


class ChainData(Chainsets):
    """The chains and the plans TF(M, H, d, D) reads of them (the training set's once when it is one full batch)."""

    def __init__(self, cfg: InductionConfig, band: torch.Tensor, device: torch.device):
        super().__init__(cfg, device)
        self.band = band
        # the training plan is read at every step: on the CPU it carries the groups' sparse sum
        self.train_plan = self._plan(self.train.tokens, device.type == "cpu") if self.full else None
        self.val_plan = self._plan(self.val.tokens)

    def _plan(self, tokens: torch.Tensor, sums: bool = False) -> Plan:
        d = self.cfg
        band, m = self.band.to(tokens.device), d.model
        return make_plan(tokens, band, d.data.d, d.data.targets, m.plan_path, sums=sums, patterns=m.equality_kernel)

    def batch(self, step: int) -> Plan:
        return self.train_plan if self.full else self._plan(self.tokens(step))


class InductionExperiment:
    """Everything an induction run needs, built from its config alone."""

    def __init__(self, cfg: InductionConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.model = GIHTransformer(cfg.model, cfg.data.d).to(self.device)
        self.data = ChainData(cfg, self.model.band, self.device)
        self.optimizer = optimizer(cfg, self.model)
        self.theory = prediction(cfg)
        predicted = predicted_offsets(self.theory)
        self.references = reference_table(self.data.val, cfg, predicted)
        self.probe_fn = InductionProbe(self.data.val, self.data.val_plan, cfg, self.references, predicted)

    def batch(self, step: int) -> Plan:
        return self.data.batch(step)

    def describe(self) -> dict:
        """The path the model is computed by (the training plan's; a streamed run's first batch's), for meta.json."""
        return {"plan": describe_plan(self.data.batch(0))}

    def loss(self, model: GIHTransformer, plan: Plan) -> torch.Tensor:
        return prediction_loss(model(plan), plan.labels, self.cfg.train.loss)

    def schedule(self) -> tuple[int, list[int], list[int]]:
        t = self.cfg.train
        boundaries = self.optimizer.ends  # a checkpoint at every stage boundary shows what each stage moved
        checkpoints = sorted(set(log_schedule(t.steps, t.checkpoints)[1:]) | set(boundaries))
        probes = sorted(set(log_schedule(t.steps, t.probes)) | set(boundaries[:-1]))
        return t.steps, probes, checkpoints

    def probe(self, step: int, loss_train: float) -> dict:
        record = {"step": step, "stage": self.optimizer.stage(step), "loss_train": loss_train}
        with torch.no_grad():
            record |= self.probe_fn(self.model, self.prediction_loss)
        return record

    def matrices(self) -> dict:
        with torch.no_grad():
            return snapshot(self.model, self.data.val.tokens[:SHOWN_CHAINS])

    def views(self, summary: dict, records: list[dict]) -> dict:
        return page(self.cfg, summary, records)

    def prediction_loss(self, y: torch.Tensor, labels: torch.Tensor) -> float:
        return float(prediction_loss(y, labels, self.cfg.train.loss))

    def stage_moves(self, run: Run) -> tuple[list[dict], bool]:
        """For each stage, how far each parameter group moved during it (from the boundary checkpoints), and
        whether exactly the stage's own groups moved in every stage."""
        states = {int(p.stem.split("-")[1]): p for p in run.checkpoints()}
        out, in_order, start = [], True, 0
        before = self._params(run, states.get(0))
        for stage, end in zip(self.cfg.train.stages, self.optimizer.ends, strict=True):
            after = self._params(run, states.get(end))
            if before is None or after is None:
                return [], False
            moved = {
                g: float(sum((after[n] - before[n]).norm() ** 2 for n in after if _group(n) == g) ** 0.5)
                for g in sorted({_group(n) for n in after})
            }
            ok = all((moved[g] > 0) == (g in stage.groups) for g in moved)
            in_order &= ok
            out.append({"groups": stage.groups, "steps": [start, end], "moved": moved, "only_own_groups": ok})
            before, start = after, end
        return out, in_order

    def _params(self, run: Run, path: Path | None) -> dict | None:
        if path is None:
            return None
        return run.load_checkpoint(path)["model"]

    def summary(self, run: Run) -> dict:
        records = run.metrics()
        final = {k: v for k, v in records[-1].items() if k not in ("step", "stage")}
        final |= self.probe_fn.final_extras(self.model)
        stages, in_order = self.stage_moves(run)
        final["stages_in_order"] = float(in_order)
        return summarize(self.cfg, final, self.theory, stages=stages)

    def write_figures(self, run: Run) -> list[str]:
        from toyformer.induction.report import write_figures  # matplotlib, only once figures are drawn

        return write_figures(run, self)


def _group(name: str) -> str:
    return GIHTransformer.GROUP_OF[name]


def evaluate(
    run: Run, base: InductionConfig, overrides: list[str], sequences: int = 2000, seed: int | None = None
) -> dict:
    """A trained model under shift (docs/induction-heads.md §6): fresh validation chains at other data settings (L, α,
    d, start, …), the model's loss beside the reference predictors' and the GIH at its own learned S and a. ``base`` is
    the run's config."""
    bad = [o for o in overrides if not o.strip().startswith("data.")]
    if bad:
        raise ConfigError(f"--set {bad[0]!r}: eval changes only the data (data.length, data.alpha, data.d, ...)")
    state = run.load_checkpoint()
    if state is None:
        raise ConfigError(f"{run.path}: no checkpoint to evaluate")
    raw = apply_overrides(base.model_dump(mode="json", exclude_none=True), overrides)
    raw["data"] |= {"split": "stream", "val_sequences": sequences, "batch_size": 1}
    cfg = validate_as(InductionConfig, raw | {"seed": base.seed if seed is None else seed})
    if cfg.model.variant == "full" and cfg.data.d != base.data.d:
        raise ConfigError("the full variant's Q, K and OV are d × d: evaluate it at its training d")
    model = GIHTransformer(cfg.model, cfg.data.d)
    model.load_state_dict(state["model"])
    model.eval()
    data = ChainData(cfg, model.band, torch.device("cpu"))
    predicted = predicted_offsets(prediction(cfg))
    probe = InductionProbe(data.val, data.val_plan, cfg, reference_table(data.val, cfg, predicted), predicted)
    with torch.no_grad():
        record = probe(model, lambda y, labels: float(prediction_loss(y, labels, cfg.train.loss)))
    keep = ("loss_val", "gap_share", "loss_ref_gih", "tv_to_gih", "selected_subset", "a")
    return {
        "run": str(run.path),
        "data": cfg.data.model_dump(mode="json", exclude={"split", "batch_size", "val_sequences", "sequences"}),
        "sequences": sequences,
        "loss": cfg.train.loss,
        **{k: record[k] for k in keep},
        **probe.references,
    }
