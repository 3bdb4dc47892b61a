"""A standard transformer on in-context n-gram chains (docs/standard-transformers.md): the chains of paper 2, ordinary
next-token training, and role probes over training held against the theory of paper 2 (S* and the GIH at (S*, a*)),
computed without the trained model."""

from __future__ import annotations

import itertools
import json

import torch
import torch.nn.functional as F

from toyformer.claims import summarize
from toyformer.induction.experiment import Chainsets
from toyformer.induction.predictors import best_gih_a, gih_predict, reference_predictions
from toyformer.induction.probes import NO_SUBSET, gap_share, reference_table
from toyformer.induction.theory import predict_subset
from toyformer.random import generator
from toyformer.runs import Run
from toyformer.standard.config import StandardConfig
from toyformer.standard.model import StandardTransformer
from toyformer.standard.roles import (
    copier_offsets,
    distances,
    induction_scores,
    offset_profile,
    phase_steps,
    used_subset,
)
from toyformer.standard.views import page
from toyformer.train.loop import log_schedule, resolve_device

SHOWN_CHAINS = 2  # validation chains whose attention the report page shows
SHOWN_POSITIONS = 32  # the last positions of a chain whose full attention pattern it shows


def optimizer(cfg: StandardConfig, module: torch.nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.AdamW(module.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(module.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def candidates(cfg: StandardConfig) -> list[tuple[int, ...]]:
    """Candidate parent subsets: nonempty subsets of the offsets 1..window with at most ``probes.degree`` offsets."""
    offsets = range(1, cfg.window + 1)
    return [s for r in range(1, min(cfg.probes.degree, cfg.window) + 1) for s in itertools.combinations(offsets, r)]


_THEORY: dict[str, dict] = {}  # shared by the members of a group: the prediction does not read the seed


def prediction(cfg: StandardConfig) -> dict:
    """S* among the candidate subsets by the modified χ² mutual information (docs/induction-heads.md §5)."""
    key = json.dumps([cfg.data.model_dump(mode="json"), cfg.window, cfg.probes.degree, cfg.theory.kernels])
    if key not in _THEORY:
        window, d = cfg.window, cfg.data
        degree = min(cfg.probes.degree, window)
        pred = predict_subset(d.d, tuple(d.parents), d.alpha, window, degree, "paper", window, cfg.theory.kernels)
        _THEORY[key] = pred.summary() | {"selection_by": "nll", "window": window}
    return dict(_THEORY[key])


def _names(layers: int, heads: int) -> list[str]:
    return [f"L{layer}H{h}" for layer in range(layers) for h in range(heads)]


class StandardExperiment:
    def __init__(self, cfg: StandardConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        d = cfg.data
        self.model = StandardTransformer(cfg.model, d.d, d.length, generator(cfg.seed, "init")).to(self.device)
        self.data = Chainsets(cfg, self.device)
        self.optimizer = optimizer(cfg, self.model)
        self.theory = prediction(cfg)
        self.predicted = tuple(int(o) for o in self.theory["predicted_subset"].split(","))
        self.subsets = candidates(cfg)
        self.phases: dict = {}  # the phase steps, once the summary has found them (the figures mark them)
        tokens = self.data.val.tokens.cpu()
        inputs = tokens[:, :-1]
        self.references = reference_table(self.data.val, cfg, self.predicted)
        single = [best_gih_a(tokens, (s,), d.d)[1] for s in range(1, cfg.window + 1)]
        self.references |= {"loss_ref_gih_single": min(single), "gih_single_offset": 1 + single.index(min(single))}
        fixed = reference_predictions(inputs, self.data.val.kernels.cpu(), tuple(d.parents), d.d, d.alpha)
        self.reference_y = {  # the predictions the model's distances are measured to
            "gih_theory": gih_predict(inputs, self.predicted, d.d, self.references["gih_theory_a"]),
            "bayes": fixed["bayes"],
            "unigram": fixed["unigram"],
        }

    # -- training ----------------------------------------------------------------------------------------------------
    def batch(self, step: int) -> torch.Tensor:
        return self.data.tokens(step)

    def loss(self, model: StandardTransformer, tokens: torch.Tensor) -> torch.Tensor:
        return sequence_loss(model, tokens, self.cfg.data.targets)

    def schedule(self) -> tuple[int, list[int], list[int]]:
        t = self.cfg.train
        return t.steps, log_schedule(t.steps, t.probes), log_schedule(t.steps, t.checkpoints)[1:]

    # -- probes -------------------------------------------------------------------------------------------------------
    def probe(self, step: int, loss_train: float) -> dict:
        with torch.no_grad():
            return {"step": step, "loss_train": loss_train} | self.roles(self.model)

    def matrices(self) -> dict:
        """Every head's attention on a validation chain, among its last ``SHOWN_POSITIONS`` positions (copiers show
        as diagonals), and the attention of the last query (the one that predicts x_{L+1}) over every key of
        ``SHOWN_CHAINS`` chains, with the chains' tokens to name the keys."""
        layers = self.cfg.model.layers
        names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(layers)]
        tokens = self.data.val.tokens[:SHOWN_CHAINS, :-1]
        with torch.no_grad():
            _, cache = self.model.run_with_cache(tokens, names=names)
        pattern = torch.cat([cache[n] for n in names], dim=1)  # (B, layers·H, L, L), heads layer-major
        n = min(SHOWN_POSITIONS, tokens.shape[1])
        return {
            "attention": pattern[0, :, -n:, -n:],
            "positions": torch.arange(tokens.shape[1] - n, tokens.shape[1]) + 1,
            "last_query": pattern[:, :, -1].transpose(0, 1),  # (layers·H, B, L)
            "chains": tokens,
        }

    def views(self, summary: dict, records: list[dict]) -> dict:
        return page(self.cfg, summary, records)

    def roles(self, model: StandardTransformer) -> dict:
        """Losses, predictive distances and every head's role on the validation chains."""
        cfg, tokens = self.cfg, self.data.val.tokens
        names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(cfg.model.layers)]
        logits, cache = model.run_with_cache(tokens[:, :-1], names=names)  # (B, L, d): every position
        last = float(F.cross_entropy(logits[:, -1].double(), tokens[:, -1]))
        record = {"loss_val": last}
        if cfg.data.targets == "all":
            record = {"loss_val": float(F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:])), "loss_val_last": last}
        record["gap_share"] = gap_share(last, self.references)
        heads = cfg.model.heads
        profiles = [offset_profile(cache[n], cfg.window).cpu() for n in names]
        copy = [o for p in profiles for o in copier_offsets(p, cfg.probes.copier_threshold)]
        inputs = tokens[:, :-1]
        scores = induction_scores(cache[names[-1]][:, :, -1], inputs, self.subsets, cfg.data.d).cpu()
        used, head = used_subset(scores, self.subsets, cfg.probes.score_threshold)
        early = {o for o in copy[: heads * (cfg.model.layers - 1)] if o is not None}  # copiers before the last layer
        subset_names = [",".join(map(str, s)) for s in self.subsets]
        labels = _names(cfg.model.layers, heads)
        last_layer = labels[heads * (cfg.model.layers - 1) :]
        y = torch.softmax(logits[:, -1].double(), dim=-1).cpu()
        record |= {
            "used_subset": ",".join(map(str, used)) or NO_SUBSET,
            "used_head": last_layer[head] if head >= 0 else NO_SUBSET,
            "used_score": float(scores.max()),
            "predicted_score": float(scores[:, self.subsets.index(self.predicted)].max()),  # S* is a candidate
            "copier_offsets": ",".join(map(str, sorted(early))) or NO_SUBSET,
            "copiers_cover_predicted": float(set(self.predicted) <= early),
            "copy_offset": {n: (o if o is not None else NO_SUBSET) for n, o in zip(labels, copy, strict=True)},
            "offset_profile": {n: row for n, row in zip(labels, torch.cat(profiles).tolist(), strict=True)},
            "induction_score": {
                name: dict(zip(subset_names, row, strict=True))
                for name, row in zip(last_layer, scores.tolist(), strict=True)
            },
        } | distances(y, self.reference_y)
        return record

    def ablation(self, model: StandardTransformer) -> dict[str, float]:
        """The validation loss at x_{L+1} with each head mean-ablated (its hook_z replaced by its mean over chains and
        positions), against the unablated loss."""
        tokens = self.data.val.tokens
        inputs = tokens[:, :-1]
        out = {}
        with torch.no_grad():
            for layer in range(self.cfg.model.layers):
                for h in range(self.cfg.model.heads):

                    def ablate(z: torch.Tensor, name: str, h: int = h) -> torch.Tensor:
                        z = z.clone()
                        z[:, :, h] = z[:, :, h].mean((0, 1))
                        return z

                    logits = model.run_with_hooks(inputs, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)])
                    out[f"L{layer}H{h}"] = float(F.cross_entropy(logits[:, -1], tokens[:, -1]))
        return out

    def summary(self, run: Run) -> dict:
        records = run.metrics()
        final = {k: v for k, v in records[-1].items() if k != "step"}
        key = "loss_val_last" if self.cfg.data.targets == "all" else "loss_val"
        levels = {
            "unigram": self.references["loss_ref_unigram"],
            "partial": self.references["loss_ref_gih_single"],
            "full": self.references["loss_ref_gih_theory"],
        }
        phases = phase_steps(
            [r["step"] for r in records], [r[key] for r in records], levels, self.cfg.probes.phase_tolerance
        )
        self.phases = phases["phase_steps"]
        self.model.eval()
        ablated = self.ablation(self.model)
        final |= phases | self.references
        final["ablation_loss"] = ablated
        final["ablation_increase"] = {k: v - final[key] for k, v in ablated.items()}
        return summarize(self.cfg, final, self.theory)

    def write_figures(self, run: Run) -> list[str]:
        from toyformer.standard.report import write_figures  # matplotlib, only once figures are drawn

        return write_figures(run, self)


def _labels(tokens: torch.Tensor, targets: str) -> torch.Tensor:
    return tokens[:, -1:] if targets == "last" else tokens[:, 1:]


def sequence_loss(model: StandardTransformer, tokens: torch.Tensor, targets: str) -> torch.Tensor:
    """Mean cross-entropy of the next token: at the last position only, or at every position."""
    logits = model(tokens[:, :-1], last=targets == "last")  # (B, 1 or L, d)
    return F.cross_entropy(logits.transpose(1, 2), _labels(tokens, targets))
