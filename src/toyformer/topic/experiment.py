"""The topic experiment (paper 1, docs/topic-structure.md §1–7): recipe config → data stream + model → loop → run
directory."""

from __future__ import annotations

import torch

from toyformer.claims import summarize
from toyformer.config import ConfigError
from toyformer.random import generator
from toyformer.runs import Run
from toyformer.text.corpus import documents
from toyformer.text.topics import corpus_topics
from toyformer.topic.config import NUM_SPECIALS, TopicConfig, num_ids
from toyformer.topic.lda import id_topics, topic_block_matrix
from toyformer.topic.losses import l2_penalty, model_loss
from toyformer.topic.model import TopicTransformer
from toyformer.topic.probes import AttentionClasses, CircuitStructure, DevLoss, Norms, OptimumDistance, Snapshot
from toyformer.topic.stages import CONTRAST_REACHES, STAGE_GROUPS, contrast_reaches, onsets
from toyformer.topic.stream import TextStream, TopicStream
from toyformer.topic.theory import predictions, word_pair_classes
from toyformer.topic.views import page
from toyformer.train.loop import log_schedule, resolve_device


def build_model(cfg: TopicConfig, device: str | torch.device = "cpu") -> TopicTransformer:
    block = topic_block_matrix(cfg.data) if cfg.model.value_init == "topic_block" else None
    model = TopicTransformer(cfg.model, num_ids(cfg.data), generator(cfg.seed, "init"), block)
    return model.to(device)


def optimizer(cfg: TopicConfig, module: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer of a run, on ``module`` (the model, or a stacked ensemble of models)."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("model.freeze leaves nothing to train: remove a group from model.freeze")
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)


class SyntheticSource:
    """LDA documents (docs/topic-structure.md §1) and the theory's predictions for them."""

    def __init__(self, cfg: TopicConfig, device: torch.device):
        self.stream = TopicStream(cfg, device)
        self.id_topics = id_topics(cfg.data)
        self.theory, self.optimum = predictions(cfg)
        self.extras: dict = {}


class TextSource:
    """A real corpus (docs/topic-structure.md §8) as bags of vocabulary words; word topics from its cached LDA fit or
    its labels. There is no closed-form optimum here, so no theory block."""

    def __init__(self, cfg: TopicConfig, device: torch.device):
        data = cfg.data
        topics, _, _ = corpus_topics(data.corpus, data.vocab, data.topics)
        truth = topics.assignment() if data.truth == "topics" else topics.label_assignment()
        self.id_topics = torch.zeros(num_ids(data), truth.shape[1], dtype=torch.bool)
        self.id_topics[NUM_SPECIALS : NUM_SPECIALS + len(truth)] = torch.from_numpy(truth)
        encoded = [ids for ids in map(topics.vocab.encode, (d.text for d in documents(data.corpus))) if len(ids) > 1]
        self.stream = TextStream(cfg, encoded, device)
        self.theory, self.optimum = {}, None
        self.extras = {
            "topics_per_doc": topics.topics_per_doc,
            "words_with_topics": float(truth.any(1).mean()),
            "documents": len(encoded),
        }


SOURCES = {"lda": SyntheticSource, "text": TextSource}


class TopicExperiment:
    """Everything a topic run needs, built from its config alone (so a resumed run rebuilds the same objects)."""

    def __init__(self, cfg: TopicConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.source = SOURCES[cfg.data.kind](cfg, self.device)
        self.stream, self.id_topics, self.theory = self.source.stream, self.source.id_topics, self.source.theory
        self.model = build_model(cfg, self.device)
        self.optimizer = optimizer(cfg, self.model)
        self.trained = [p for p in self.model.parameters() if p.requires_grad]
        classes = word_pair_classes(self.id_topics)
        self.init_state = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        self.attention = AttentionClasses(self.stream.probe_documents(), self.id_topics)
        self.probes = [
            CircuitStructure({k: m.to(self.device) for k, m in classes.items()}),
            self.attention,
            Norms(self.init_state),
            DevLoss(self.stream.dev, cfg.train.loss),
        ]
        if self.source.optimum is not None:
            self.probes.append(OptimumDistance(self.source.optimum, classes))
        self.snapshot = Snapshot(self.attention, self.id_topics, cfg.model.embedding == "trained")

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        return model_loss(model, batch, self.cfg.train.loss) + l2_penalty(self.trained, self.cfg.train.l2)

    def probe(self, step: int, loss_train: float) -> dict:
        record = {"step": step, "loss_train": loss_train}
        with self.model.unchanged():
            for p in self.probes:
                record |= p.measure(self.model)
        return record

    def matrices(self) -> dict:
        return self.snapshot.measure(self.model)

    def views(self, summary: dict, records: list[dict]) -> dict:
        return page(self.cfg, summary, records)

    def batch(self, step: int):
        return self.stream.batch(step)

    def schedule(self) -> tuple[int, list[int], list[int]]:
        t = self.cfg.train
        return t.steps, log_schedule(t.steps, t.probes), log_schedule(t.steps, t.checkpoints)[1:]

    def write_figures(self, run: Run) -> list[str]:
        from toyformer.topic.report import write_figures  # matplotlib, only once figures are drawn

        return write_figures(run, self)

    def summary(self, run: Run) -> dict:
        records = run.metrics()
        final = {k: v for k, v in records[-1].items() if k != "step"}
        final |= onsets(records, STAGE_GROUPS, self.cfg.probes.onset_fraction)
        final |= contrast_reaches(records, CONTRAST_REACHES)  # the order of the two stages (W^V, then attention)
        final["loss_dev_initial"] = records[0]["loss_dev"]  # so that a claim can say the model learned at all
        final |= self.source.extras | {"attn_head_gap": self.attention.head_gap(self.model)}
        return summarize(self.cfg, final, self.theory)
