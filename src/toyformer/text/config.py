"""The text family's config: a corpus, its vocabulary and topic fit, and the analysis of a pretrained encoder."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from toyformer.config import Claim, RunConfig, Strict


class CorpusConfig(Strict):
    """A text corpus, docs/topic-structure.md §8, read as a stream of documents (text and an optional category
    label)."""

    source: str = Field(
        "wiki-vital",
        description="'wiki-vital' (bundled Wikipedia sample), a folder of .txt files, a .jsonl file, a folder saved "
        "by `datasets`, or 'hf:NAME' / 'hf:NAME/CONFIG' (HuggingFace datasets, streamed)",
    )
    lang: Literal["en", "fr", "es"] = Field("en", description="language of wiki-vital and of the stop-word list")
    text_field: str = Field("text", description="JSONL / datasets field holding the text")
    label_field: str | None = Field("label", description="JSONL / datasets field holding a category label")
    split: str = Field("train", description="split of a `datasets` corpus")
    max_docs: int | None = Field(None, ge=1, description="read at most this many documents")
    repeat: int = Field(1, ge=1, description="read the corpus this many times over (scale tests)")


class VocabConfig(Strict):
    """The word vocabulary: content words by frequency (stop words and rare or ubiquitous words out)."""

    size: int = Field(10_000, ge=1, description="keep at most this many words, most frequent first")
    min_count: int = Field(5, ge=1, description="drop words seen fewer times")
    max_doc_share: float = Field(0.5, gt=0.0, le=1.0, description="drop words in more than this share of documents")
    min_length: int = Field(2, ge=1, description="drop shorter words")


class TopicsConfig(Strict):
    """LDA topics over a corpus and the word → topics rules of docs/topic-structure.md §8.

    The paper fits 100 topics in one pass over TF-IDF weights of all of Wikipedia. On a corpus of ~10,000 short
    documents (wiki-vital) that setting gives near-identical topics (5 updates in all), so the defaults here are
    50 topics, 10 passes over counts; the paper's setting is ``num_topics=100 passes=1 weighting='tfidf'``.
    """

    num_topics: int = Field(50, ge=2)
    passes: int = Field(10, ge=1)
    weighting: Literal["tfidf", "counts"] = Field("counts", description="LDA input: counts, or TF-IDF (paper)")
    rule: Literal["top", "posterior"] = Field(
        "top", description="word → topics: in the topic's top fraction (paper), or posterior above a threshold"
    )
    top_fraction: float = Field(0.01, gt=0.0, le=1.0, description="share of the vocabulary each topic keeps")
    posterior_threshold: float = Field(
        0.5, gt=0.0, le=1.0, description="rule 'posterior': topics with p(t|w) at least this (none: unassigned)"
    )
    label_threshold: float = Field(
        0.5, gt=0.0, le=1.0, description="word → categories: labels with p(label|w) (flat prior) at least this"
    )
    doc_topic_min: float = Field(0.1, gt=0.0, lt=1.0, description="a document has the topics of weight >= this")
    chunksize: int = Field(2000, ge=1, description="documents per LDA update")
    seed: int = Field(0, ge=0)


class TopicsFit(Strict):
    """What `toyformer corpus topics` fits: a corpus, its vocabulary, its topics."""

    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    vocab: VocabConfig = Field(default_factory=VocabConfig)
    topics: TopicsConfig = Field(default_factory=TopicsConfig)


def _default_analysis_claims() -> list[Claim]:
    return [
        Claim(name="embeddings: same topic > different topic", left="emb_same_topic", op=">", right="emb_diff_topic"),
        Claim(name="attention: same topic > different topic", left="attn_same_topic", op=">", right="attn_diff_topic"),
    ]


class AnalysisConfig(TopicsFit, RunConfig):
    """Topic structure of a pretrained BERT-family encoder on a corpus (docs/topic-structure.md §8): `toyformer
    analyze`."""

    task: Literal["analyze"] = "analyze"
    name: str = "analyze"
    model_dir: str = Field(description="a local HuggingFace model folder (config.json, weights, tokenizer)")
    docs: int = Field(1000, ge=1, description="documents whose attention is measured (the corpus's first ones)")
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(256, ge=8, description="word pieces per document (longer ones are cut)")
    claims: list[Claim] = Field(default_factory=_default_analysis_claims)
