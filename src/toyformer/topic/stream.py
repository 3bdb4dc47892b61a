"""The training stream of the topic experiments: batch = f(seed, step), fixed splits or fresh documents.

Fixed split (official): ``train_docs`` documents drawn once, their masks drawn once (static) or per step; each
epoch visits them in a seeded order. Stream: fresh documents every step. Either way a batch depends only on
(seed, step), so a resumed run sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import torch

from toyformer.config import ConfigError
from toyformer.random import generator
from toyformer.topic.batch import Batch
from toyformer.topic.config import END, NUM_SPECIALS, PAD, START, TopicConfig, num_ids
from toyformer.topic.lda import Documents, sample_documents, sample_mixtures, topic_word_matrix
from toyformer.topic.masking import corrupt, population_batch


class TopicStream:
    def __init__(self, cfg: TopicConfig, device: str | torch.device = "cpu"):
        self.cfg, self.device, self.seed = cfg, torch.device(device), cfg.seed
        self.n_ids = num_ids(cfg.data)
        self.batch_size = cfg.train.batch_size
        self._order: tuple[int, torch.Tensor | None] = (-1, None)  # the current epoch's visiting order
        self.dev, self.train = self._splits()
        if self.train is not None and len(self.train) < self.batch_size:
            raise ConfigError(
                f"the training documents ({len(self.train)}) must be >= train.batch_size ({self.batch_size})"
            )

    def _splits(self) -> tuple[Batch, Batch | None]:
        """The dev split, and the fixed training split (None: fresh documents every step)."""
        self.phi = topic_word_matrix(self.cfg.data).to(self.device)
        dev = self._make("dev", self.cfg.data.dev_docs)
        return dev, self._make("train", self.cfg.data.train_docs) if self.cfg.data.split == "fixed" else None

    def _gen(self, purpose: str, step: int = 0) -> torch.Generator:
        return generator(self.seed, purpose, step, self.device)

    def _make(self, split: str, n: int) -> Batch:
        """A fixed split as a batch: corrupted with masks drawn once (population mode: mixtures only)."""
        data, masking = self.cfg.data, self.cfg.masking
        if data.population:
            return population_batch(sample_mixtures(data, n, self._gen(f"{split}-docs"), self.device), data, masking)
        docs = sample_documents(data, n, self._gen(f"{split}-docs"), self.device)
        return corrupt(docs.ids, masking, self.n_ids, self._gen(f"{split}-mask"))

    def batch(self, step: int) -> Batch:
        data, masking, b = self.cfg.data, self.cfg.masking, self.batch_size
        if self.train is None:
            if data.population:
                theta = sample_mixtures(data, b, self._gen("docs", step), self.device)
                return population_batch(theta, data, masking, self.phi)
            ids = sample_documents(data, b, self._gen("docs", step), self.device, self.phi).ids
            return corrupt(ids, masking, self.n_ids, self._gen("mask", step))
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._order[0] != epoch:
            self._order = (epoch, self.epoch_order(epoch))
        rows = self._order[1][k * b : (k + 1) * b]
        picked = self.train.map(lambda t: t[rows])
        if masking.static or data.population:
            return picked
        return corrupt(picked.labels, masking, self.n_ids, self._gen("mask", step))

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train) // self.batch_size

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The order in which epoch ``epoch`` visits the fixed training documents."""
        return torch.randperm(len(self.train), generator=self._gen("order", epoch), device=self.device)

    def probe_documents(self) -> Documents:
        """Uncorrupted dev documents for the attention statistics and attention maps."""
        n = min(self.cfg.probes.docs, self.cfg.data.dev_docs)
        return sample_documents(self.cfg.data, n, self._gen("dev-docs"), self.device)


def text_documents(encoded: list[list[int]], max_len: int, device: str | torch.device = "cpu") -> Documents:
    """Word-id lists as documents in the official layout: START words END, padded (the first max_len words)."""
    lengths = torch.tensor([min(len(d), max_len) for d in encoded], dtype=torch.long)
    words = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(d[:max_len], dtype=torch.long) for d in encoded], batch_first=True, padding_value=-1
    )
    ids = torch.full((len(encoded), int(lengths.max()) + 2), PAD, dtype=torch.long)
    ids[:, 0] = START
    ids[:, 1 : words.shape[1] + 1] = torch.where(words >= 0, words + NUM_SPECIALS, PAD)
    ids[torch.arange(len(encoded)), lengths + 1] = END
    return Documents(ids.to(device), lengths.to(device), None)


class TextStream(TopicStream):
    """MLM batches of real text (docs/topic-structure.md §8): the corpus's documents as bags of vocabulary words, a
    fixed split (the last ``dev_docs`` documents held out), masks drawn once (static) or per step as configured."""

    def __init__(self, cfg: TopicConfig, encoded: list[list[int]], device: str | torch.device = "cpu"):
        data = cfg.data
        if len(encoded) <= data.dev_docs:
            raise ConfigError(
                f"data.dev_docs ({data.dev_docs}) leaves no training documents out of {len(encoded)}: lower it"
            )
        self.documents = {
            "train": text_documents(encoded[: -data.dev_docs], data.doc_len_max, device),
            "dev": text_documents(encoded[-data.dev_docs :], data.doc_len_max, device),
        }
        super().__init__(cfg, device)

    def _splits(self) -> tuple[Batch, Batch]:
        self.phi = None
        return self._make("dev"), self._make("train")

    def _make(self, split: str, n: int | None = None) -> Batch:
        return corrupt(self.documents[split].ids, self.cfg.masking, self.n_ids, self._gen(f"{split}-mask"))

    def probe_documents(self) -> Documents:
        n = min(self.cfg.probes.docs, self.cfg.data.dev_docs)
        dev = self.documents["dev"]
        return Documents(dev.ids[:n], dev.lengths[:n], None)
