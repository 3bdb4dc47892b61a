"""Topics of a real corpus, docs/topic-structure.md §8: gensim LDA over the content-word vocabulary, the word → topics
rules, topics per document, and the corpus's own category labels as a second, independent ground truth.

Everything streams over the corpus (a vocabulary pass, the LDA passes, one pass for document topics and label
counts), so memory is set by the vocabulary and the number of topics, not by the number of documents. A fit is
cached under ``$TOYFORMER_CACHE`` (default ``~/.cache/toyformer``), keyed by the corpus, vocabulary and topic
settings, so a second analysis does not refit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toyformer.config import ConfigError
from toyformer.text.config import CorpusConfig, TopicsConfig, VocabConfig
from toyformer.text.corpus import Advance, Vocabulary, build_vocabulary, check_source, documents

FORMAT = 1
# progress(description, total) → the advance function of a new progress bar (total None: unknown)
Progress = Callable[[str, int | None], Advance]


def _no_progress(description: str, total: int | None) -> Advance:
    return lambda n: None


def cache_root() -> Path:
    return Path(os.environ.get("TOYFORMER_CACHE", "~/.cache/toyformer")).expanduser()


def cache_key(corpus: CorpusConfig, vocab: VocabConfig, topics: TopicsConfig) -> str:
    """Settings that change the fit; the word → topic rules are applied on load, so they are not part of it."""
    fit = topics.model_dump(exclude={"rule", "top_fraction", "posterior_threshold", "label_threshold"})
    blob = json.dumps([FORMAT, corpus.model_dump(), vocab.model_dump(), fit], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Topics:
    """A fitted corpus: its vocabulary, LDA topics and label statistics.

    word_topic:     (T, V) p(w | t) of each topic over the vocabulary.
    topic_share:    (T,) mean topic weight over the corpus's documents (the prior of the posterior rule).
    label_counts:   (C, V) occurrences of each word in the documents of each category label.
    topic_label:    (T, C) documents whose largest topic is t and whose label is c.
    topics_per_doc: mean number of topics of weight >= doc_topic_min per document.
    """

    cfg: TopicsConfig
    vocab: Vocabulary
    word_topic: np.ndarray
    topic_share: np.ndarray
    labels: list[str]
    label_counts: np.ndarray
    topic_label: np.ndarray
    topics_per_doc: float
    min_count: int

    def assignment(self, cfg: TopicsConfig | None = None) -> np.ndarray:
        """(V, T) bool: each word's topics. Rule 'top': the topics whose top ``top_fraction`` of the vocabulary
        (by p(w|t)) holds the word. Rule 'posterior': the topics with p(t|w) ∝ p(w|t)·share(t) at least the
        threshold; a word none reaches is unassigned."""
        cfg = cfg or self.cfg
        phi = self.word_topic
        n_topics, n_words = phi.shape
        if cfg.rule == "top":
            keep = max(1, math.ceil(cfg.top_fraction * n_words - 1e-9))  # 1/3 of 36 is 12, not 13
            top = np.argpartition(-phi, keep - 1, axis=1)[:, :keep]  # (T, keep)
            out = np.zeros((n_words, n_topics), dtype=bool)
            out[top, np.arange(n_topics)[:, None]] = True
            return out
        joint = phi.T * self.topic_share[None, :]
        posterior = joint / joint.sum(1, keepdims=True)
        return posterior >= cfg.posterior_threshold

    def label_assignment(self, cfg: TopicsConfig | None = None) -> np.ndarray:
        """(V, C) bool: the labels with p(label | w) at least the threshold, under a flat prior over labels
        (p(w | label) normalised over labels); words seen fewer than min_count times in labelled documents: none."""
        cfg = cfg or self.cfg
        counts = self.label_counts.astype(np.float64)
        if counts.size == 0:
            return np.zeros((len(self.vocab), 0), dtype=bool)
        rate = counts / np.maximum(counts.sum(1, keepdims=True), 1.0)  # p(w | c)
        posterior = rate.T / np.maximum(rate.T.sum(1, keepdims=True), 1e-300)
        return (posterior >= cfg.label_threshold) & (counts.sum(0) >= self.min_count)[:, None]

    def top_words(self, topic: int, n: int = 8) -> list[str]:
        return [self.vocab.words[i] for i in np.argsort(-self.word_topic[topic])[:n]]

    def topic_label_nmi(self) -> float | None:
        """Normalised mutual information between a document's largest topic and its label (0: independent,
        1: one determines the other); None without labelled documents."""
        joint = self.topic_label.astype(np.float64)
        total = joint.sum()
        if total == 0 or joint.shape[1] < 2:
            return None
        p = joint / total
        pt, pc = p.sum(1), p.sum(0)
        nz = p > 0
        mi = float((p[nz] * np.log(p[nz] / np.outer(pt, pc)[nz])).sum())

        def entropy(q):
            return -float((q[q > 0] * np.log(q[q > 0])).sum())

        return 2 * mi / (entropy(pt) + entropy(pc))

    def save(self, path: Path) -> None:
        """Written to a temporary folder and renamed, so an interrupted save leaves no half-written cache."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
        try:
            (tmp / "vocab.json").write_text(json.dumps(self.vocab.to_json()))
            np.savez_compressed(
                tmp / "topics.npz",
                word_topic=self.word_topic,
                topic_share=self.topic_share,
                label_counts=self.label_counts,
                topic_label=self.topic_label,
            )
            meta = {
                "format": FORMAT,
                "topics": self.cfg.model_dump(),
                "labels": self.labels,
                "topics_per_doc": self.topics_per_doc,
                "min_count": self.min_count,
                "top_words": [self.top_words(t) for t in range(len(self.word_topic))],
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, path: Path, cfg: TopicsConfig | None = None) -> Topics:
        meta = json.loads((path / "meta.json").read_text())
        arrays = np.load(path / "topics.npz")
        vocab = Vocabulary.from_json(json.loads((path / "vocab.json").read_text()))
        return cls(
            cfg or TopicsConfig(**meta["topics"]),
            vocab,
            arrays["word_topic"],
            arrays["topic_share"],
            meta["labels"],
            arrays["label_counts"],
            arrays["topic_label"],
            meta["topics_per_doc"],
            meta["min_count"],
        )


class BagsOfWords:
    """The corpus as gensim bags of words [(word id, weight), …], re-read from the source on every pass."""

    def __init__(self, corpus: CorpusConfig, vocab: Vocabulary, weighting: str, advance: Advance | None = None):
        self.corpus, self.vocab, self.advance = corpus, vocab, advance
        df = np.asarray(vocab.doc_counts, dtype=np.float64)
        self.idf = np.log2(vocab.docs / df) if weighting == "tfidf" else None

    def counted(self) -> Iterator[tuple[np.ndarray, np.ndarray, str | None]]:
        """(word ids, counts, label) of every document."""
        for doc in documents(self.corpus):
            ids, counts = np.unique(np.asarray(self.vocab.encode(doc.text), dtype=np.int64), return_counts=True)
            if self.advance is not None:
                self.advance(1)
            yield ids, counts, doc.label

    def __len__(self) -> int:  # known from the vocabulary pass; spares gensim a pass to count documents
        return self.vocab.docs

    def bag(self, ids: np.ndarray, counts: np.ndarray) -> list[tuple[int, float]]:
        weights = counts.astype(np.float64)
        if self.idf is not None:  # TF-IDF, unit length (gensim's TfidfModel convention)
            weights = weights * self.idf[ids]
            norm = np.linalg.norm(weights)
            weights = weights / norm if norm > 0 else weights
        return list(zip(ids.tolist(), weights.tolist(), strict=True))

    def __iter__(self):
        for ids, counts, _ in self.counted():
            yield self.bag(ids, counts)


def fit_topics(
    corpus: CorpusConfig, vocab_cfg: VocabConfig, cfg: TopicsConfig, progress: Progress | None = None
) -> Topics:
    try:
        from gensim.models import LdaModel  # optional: the wiki extra
    except ImportError:
        raise ConfigError("fitting topics needs gensim: pip install 'toyformer[wiki]'") from None
    progress = progress or _no_progress
    vocab = build_vocabulary(corpus, vocab_cfg, progress("vocabulary", None))
    n = vocab.docs
    bows = BagsOfWords(corpus, vocab, cfg.weighting, progress(f"LDA, {cfg.passes} pass(es)", n * cfg.passes))
    lda = LdaModel(
        corpus=bows,
        id2word=dict(enumerate(vocab.words)),
        num_topics=cfg.num_topics,
        passes=cfg.passes,
        chunksize=cfg.chunksize,
        random_state=cfg.seed,
        eval_every=None,
    )
    # One more pass: document topics (batched inference), topic shares, label statistics.
    final = BagsOfWords(corpus, vocab, cfg.weighting, progress("document topics", n))
    labels: dict[str, int] = {}
    label_counts: dict[int, np.ndarray] = {}
    topic_label: dict[int, np.ndarray] = {}
    share = np.zeros(cfg.num_topics)
    n_topics = 0
    chunk: list[tuple[list, str | None]] = []

    def infer(chunk):
        nonlocal share, n_topics
        gamma, _ = lda.inference([bow for bow, _ in chunk])
        theta = gamma / gamma.sum(1, keepdims=True)
        share += theta.sum(0)
        n_topics += int((theta >= cfg.doc_topic_min).sum())
        for (_, label), top in zip(chunk, theta.argmax(1), strict=True):
            if label is not None:
                topic_label.setdefault(labels[label], np.zeros(cfg.num_topics, dtype=np.int64))[top] += 1

    for ids, counts, label in final.counted():
        if label is not None:
            c = labels.setdefault(label, len(labels))
            label_counts.setdefault(c, np.zeros(len(vocab), dtype=np.int64))[ids] += counts
        chunk.append((final.bag(ids, counts), label))
        if len(chunk) == cfg.chunksize:
            infer(chunk)
            chunk = []
    if chunk:
        infer(chunk)
    names = sorted(labels, key=labels.get)
    stack = [label_counts[labels[name]] for name in names]
    per_topic = [topic_label.get(labels[name], np.zeros(cfg.num_topics, dtype=np.int64)) for name in names]
    return Topics(
        cfg,
        vocab,
        lda.get_topics().astype(np.float32),
        share / n,
        names,
        np.stack(stack) if stack else np.zeros((0, len(vocab)), dtype=np.int64),
        np.stack(per_topic, axis=1) if per_topic else np.zeros((cfg.num_topics, 0), dtype=np.int64),
        n_topics / n,
        vocab_cfg.min_count,
    )


def corpus_topics(
    corpus: CorpusConfig,
    vocab: VocabConfig,
    cfg: TopicsConfig,
    progress: Progress | None = None,
    refit: bool = False,
) -> tuple[Topics, Path, bool]:
    """The topics of a corpus from the cache, or fitted and cached: (topics, cache folder, whether it was cached)."""
    check_source(corpus)  # before any progress bar
    path = cache_root() / "topics" / cache_key(corpus, vocab, cfg)
    if (path / "meta.json").exists() and not refit:
        return Topics.load(path, cfg), path, True
    topics = fit_topics(corpus, vocab, cfg, progress)
    topics.save(path)
    return topics, path, False
