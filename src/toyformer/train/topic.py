"""The topic experiment (paper 1, spec §1–7): recipe config → data stream + model → loop → run directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from toyformer.claims import summarize
from toyformer.config import ConfigError, ExperimentConfig, num_ids
from toyformer.data.lda import id_topics, topic_block_matrix
from toyformer.data.stream import TopicStream
from toyformer.models.topic import TopicTransformer
from toyformer.probes.stages import STAGE_GROUPS, onsets
from toyformer.probes.topic import AttentionClasses, CircuitStructure, DevLoss, Norms, OptimumDistance
from toyformer.random import generator
from toyformer.runs import Run
from toyformer.theory.topic import pair_classes, predictions
from toyformer.train.loop import log_schedule, train
from toyformer.train.losses import l2_penalty, model_loss


def build_model(cfg: ExperimentConfig, device: str | torch.device = "cpu") -> TopicTransformer:
    model = TopicTransformer(cfg.model, num_ids(cfg.data), generator(cfg.seed, "init"), topic_block_matrix(cfg.data))
    return model.to(device)


def build_optimizer(cfg: ExperimentConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("model.freeze leaves nothing to train: remove a group from model.freeze")
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda: no CUDA device is visible here; use --device cpu")
    return torch.device(name)


class TopicExperiment:
    """Everything a topic run needs, built from its config alone (so a resumed run rebuilds the same objects)."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.stream = TopicStream(cfg, self.device)
        self.model = build_model(cfg, self.device)
        self.optimizer = build_optimizer(cfg, self.model)
        self.trained = [p for p in self.model.parameters() if p.requires_grad]
        self.theory, optimum = predictions(cfg)
        classes = pair_classes(cfg.data)
        self.init_state = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        self.probes = [
            CircuitStructure({k: m.to(self.device) for k, m in classes.items()}),
            AttentionClasses(self.stream.probe_documents(), id_topics(cfg.data)),
            Norms(self.init_state),
            DevLoss(self.stream.dev, cfg.train.loss),
            OptimumDistance(optimum, classes),
        ]

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        return model_loss(model, batch, self.cfg.train.loss) + l2_penalty(self.trained, self.cfg.train.l2)

    def probe(self, step: int, loss_train: float) -> dict:
        record = {"step": step, "loss_train": loss_train}
        for p in self.probes:
            record |= p.measure(self.model)
        return record

    def batch(self, step: int):
        return self.stream.batch(step)

    def schedule(self) -> tuple[int, list[int], list[int]]:
        t = self.cfg.train
        return t.steps, log_schedule(t.steps, t.probes), log_schedule(t.steps, t.checkpoints)[1:]

    def write_figures(self, run: Run) -> list[str]:
        from toyformer.report.topic import write_figures

        return write_figures(run, self)

    def summary(self, run: Run) -> dict:
        records = run.metrics()
        final = {k: v for k, v in records[-1].items() if k != "step"}
        final |= onsets(records, STAGE_GROUPS, self.cfg.probes.onset_fraction)
        return summarize(self.cfg, final, self.theory)


def run_topic(
    cfg: ExperimentConfig,
    out: Path | None = None,
    on_step: Callable | None = None,
    resume: Run | None = None,
    figures: bool = True,
) -> Run:
    return train(TopicExperiment(cfg), out, on_step, resume, figures)  # validated and built before a directory exists
