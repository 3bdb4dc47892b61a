"""The topic experiments' config (paper 1): LDA documents or a real corpus, MLM masking, the one-layer model with
its regimes, training, probes and the theory's sample size; and the token layout every topic module shares."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from toyformer.config import LoopConfig, RunConfig, Strict, check_memory, no_effect
from toyformer.text.config import CorpusConfig, TopicsConfig, VocabConfig

# ----------------------------------------------------------------------------------------------------------------
# The token layout of the official code

NUM_SPECIALS = 4
PAD, MASK, START, END = 0, 1, 2, 3


def num_ids(data: DataConfig | TextDataConfig) -> int:
    """Ids of the official layout: PAD=0, MASK=1, START=2, END=3, word k = k + 4."""
    return data.num_words + NUM_SPECIALS


class DataConfig(Strict):
    """Synthetic topic-model (LDA) documents, docs/topic-structure.md §1, in the official token layout."""

    kind: Literal["lda"] = "lda"
    num_topics: int = Field(10, ge=1, description="T")
    words_per_topic: int = Field(10, ge=1, description="v, when topic_sizes is not given")
    topic_sizes: list[int] | None = Field(None, description="unequal topic sizes (overrides words_per_topic)")
    vocab_size: int | None = Field(None, ge=1, description="number of word ids; default: the words the topics use")
    overlap: int = Field(0, ge=0, description="words each topic shares with the next topic (cyclically)")
    word_dist: Literal["uniform", "zipf"] = "uniform"
    zipf_exponent: float = Field(1.0, gt=0.0)
    mixture: Literal["dirichlet", "tau"] = Field("dirichlet", description="θ ~ Dir(α) or τ equally weighted topics")
    alpha: float = Field(0.1, gt=0.0)
    tau: int = Field(2, ge=1)
    doc_len_min: int = Field(100, ge=1)
    doc_len_max: int = Field(150, ge=1)
    start_end: bool = Field(True, description="wrap each document as START words END (official layout)")
    population: bool = Field(False, description="N → ∞: a document is its word distribution; corruption averaged")
    split: Literal["fixed", "stream"] = Field("fixed", description="fixed train set (official) or fresh documents")
    train_docs: int = Field(10_000, ge=1)
    dev_docs: int = Field(1_000, ge=1)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.doc_len_min > self.doc_len_max:
            raise ValueError(f"data.doc_len_min ({self.doc_len_min}) must be <= data.doc_len_max ({self.doc_len_max})")
        if self.mixture == "tau" and self.tau > self.num_topics:
            raise ValueError(f"data.tau must be in 1..num_topics={self.num_topics}, got {self.tau}")
        if self.topic_sizes is not None:
            if len(self.topic_sizes) != self.num_topics:
                raise ValueError(
                    f"data.topic_sizes must list num_topics={self.num_topics} sizes, got {len(self.topic_sizes)}"
                )
            if min(self.topic_sizes) < 1:
                raise ValueError("data.topic_sizes must all be >= 1")
        sizes = self.sizes
        if self.overlap >= min(sizes):
            raise ValueError(f"data.overlap must be < the smallest topic size {min(sizes)}, got {self.overlap}")
        if self.vocab_size is not None and self.vocab_size < sum(sizes):
            raise ValueError(
                f"data.vocab_size ({self.vocab_size}) is smaller than the words the topics need "
                f"(T·v = {sum(sizes)}): raise data.vocab_size or lower num_topics/words_per_topic"
            )
        for key in ("train_docs", "dev_docs"):
            n = getattr(self, key)
            check_memory(f"data.{key}", n, n * self.doc_bytes(), "its documents")
        return self

    def doc_bytes(self) -> float:
        return (self.doc_len_max + 2) * 8 * 3  # ids, corrupted inputs and targets, int64, START/END included

    def data_bytes(self) -> float:
        return (self.train_docs + self.dev_docs) * self.doc_bytes()

    @property
    def sizes(self) -> list[int]:
        return list(self.topic_sizes) if self.topic_sizes else [self.words_per_topic] * self.num_topics

    @property
    def num_words(self) -> int:
        return self.vocab_size if self.vocab_size is not None else sum(self.sizes)


class MaskingConfig(Strict):
    """MLM corruption, docs/topic-structure.md §2."""

    select_prob: float = Field(0.15, gt=0.0, le=1.0, description="p_m: share of word positions selected")
    mask_prob: float = Field(0.8, ge=0.0, le=1.0, description="selected → [MASK]")
    random_prob: float = Field(0.1, ge=0.0, le=1.0, description="p_r: selected → random token")
    keep_prob: float = Field(0.1, ge=0.0, le=1.0, description="p_c: selected → unchanged")
    random_pool: Literal["all", "words"] = Field("all", description="random tokens over all ids (official) or words")
    drop_masked_keys: bool = Field(True, description="no position attends to a selected position (official)")
    static: bool = Field(True, description="masks drawn once per document (official) or fresh every step")

    @model_validator(mode="after")
    def _check(self) -> MaskingConfig:
        total = self.mask_prob + self.random_prob + self.keep_prob
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"masking.mask_prob + random_prob + keep_prob must sum to 1, got {total:g}")
        return self


InitName = Literal["default", "bert", "small", "zero", "identity", "topic_block"]
Group = Literal["embedding", "query", "key", "value", "output", "decoder", "norm", "ffn"]

# Regimes of docs/topic-structure.md §4 as presets: a preset fills the model fields the user did not set.
PRESETS: dict[str, dict[str, Any]] = {
    "A": dict(
        embedding="trained",
        attention="uniform",
        value_init="identity",
        output="identity",
        decoder="tied",
        freeze=["value", "output"],
    ),
    "B": dict(
        embedding="onehot",
        attention="uniform",
        value_init="small",
        output="identity",
        decoder="identity",
        freeze=["embedding", "output", "decoder"],
    ),
    "C": dict(
        embedding="onehot",
        attention="trained",
        qk_init="small",
        value_init="topic_block",
        output="identity",
        decoder="identity",
        freeze=["embedding", "value", "output", "decoder"],
    ),
    "D": dict(
        embedding="onehot",
        attention="trained",
        qk_init="small",
        value_init="small",
        output="identity",
        decoder="identity",
        freeze=["embedding", "output", "decoder"],
    ),
}


class ModelConfig(Strict):
    """The one-layer attention model with switches, docs/topic-structure.md §4. Regimes A–D are presets."""

    preset: Literal["A", "B", "C", "D"] | None = None
    d_model: int | None = Field(None, ge=1, description="width; default (and required for one-hot): number of ids")
    n_layers: int = Field(1, ge=1)
    n_heads: int = Field(1, ge=1)
    d_head: int | None = Field(None, ge=1, description="default d_model / n_heads")
    embedding: Literal["onehot", "trained"] = "onehot"
    attention: Literal["trained", "uniform"] = "trained"
    output: Literal["identity", "trained"] = "identity"
    decoder: Literal["identity", "trained", "tied"] = "identity"
    embedding_init: Literal["default", "bert", "small"] = "default"
    qk_init: Literal["default", "bert", "small", "zero"] = "default"
    value_init: InitName = "default"
    output_init: Literal["default", "bert", "small"] = "default"
    init_scale: float = Field(0.01, gt=0.0, description="scale of the 'small' init")
    init_centered: bool = Field(True, description="'small' init centred (N(0, s²)) or non-negative (|N(0, s²)|)")
    embedding_norm: bool = Field(
        False, description="official-code parity: add a trained token-type vector, then a trained LayerNorm"
    )
    value_bias: bool = True
    decoder_bias: bool = False
    residual: bool = False
    layer_norm: bool = Field(False, description="post-attention (and post-FFN) LayerNorm")
    ffn: bool = False
    d_ffn: int | None = Field(None, ge=1, description="default 4·d_model")
    freeze: list[Group] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("preset"), str) and values["preset"] in PRESETS:
            return {**PRESETS[values["preset"]], **values}
        return values

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        why = "would stay at 0: the decoder group (which holds b_U) is frozen"
        no_effect("model.decoder_bias", self.decoder_bias, False, "decoder" in self.freeze, why)
        return self


class TrainConfig(LoopConfig):
    loss: Literal["ce", "squared"] = "ce"
    l2: float = Field(0.0, ge=0.0, description="λ of the penalty λ‖θ‖² on the trained parameters")
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(0.01, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    batch_size: int = Field(40, ge=1)
    steps: int = Field(5000, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        why = "applies to optimizer = 'sgd' only (Adam keeps its own moments)"
        no_effect("train.momentum", self.momentum, 0.0, self.optimizer != "sgd", why)
        return self


class ProbeConfig(Strict):
    docs: int = Field(64, ge=1, description="dev documents the attention statistics average over")
    onset_fraction: float = Field(
        0.1,
        gt=0.0,
        lt=1.0,
        description="a component starts to move when its distance from init first reaches this share of its maximum",
    )


class TheoryConfig(Strict):
    samples: int = Field(20_000, ge=10, description="simulated documents for the finite-N least-squares optimum")


class TextDataConfig(Strict):
    """Real text for MLM training (docs/topic-structure.md §8): corpus documents as bags of vocabulary words, official
    id layout."""

    kind: Literal["text"] = "text"
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    vocab: VocabConfig = Field(default_factory=lambda: VocabConfig(size=2000))
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    truth: Literal["topics", "labels"] = Field(
        "topics", description="word classes of the probes: LDA topics or the corpus's category labels"
    )
    doc_len_max: int = Field(128, ge=2, description="words kept per document (the first ones)")
    dev_docs: int = Field(500, ge=1, description="documents held out (the last ones read)")
    split: Literal["fixed"] = "fixed"

    @property
    def num_words(self) -> int:
        return self.vocab.size


class TopicConfig(RunConfig):
    """A topic-structure experiment (paper 1)."""

    task: Literal["topic"] = "topic"
    data: Annotated[DataConfig | TextDataConfig, Field(discriminator="kind")] = Field(default_factory=DataConfig)
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    probes: ProbeConfig = Field(default_factory=ProbeConfig)
    theory: TheoryConfig = Field(default_factory=TheoryConfig)

    def data_bytes(self) -> float:
        # real text: its size is the corpus's, not known before it is read
        return self.data.data_bytes() if isinstance(self.data, DataConfig) else 0.0

    @model_validator(mode="before")
    @classmethod
    def _default_kind(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("data"), dict) and "kind" not in values["data"]:
            values = {**values, "data": {**values["data"], "kind": "lda"}}
        return values

    @model_validator(mode="after")
    def _check(self) -> TopicConfig:
        m = self.model
        n_ids = num_ids(self.data)
        d_model = m.d_model or n_ids
        if m.embedding == "onehot" and d_model != n_ids:
            raise ValueError(
                f"model.d_model must equal the number of ids ({n_ids}) with one-hot embeddings, got {d_model}"
            )
        d_head = m.d_head or d_model // m.n_heads
        if m.d_head is None and d_model % m.n_heads:
            raise ValueError(f"model.n_heads ({m.n_heads}) must divide d_model ({d_model}), or set model.d_head")
        if m.value_init in ("identity", "topic_block") and (d_head != d_model or m.n_heads != 1):
            raise ValueError(
                f"model.value_init={m.value_init} needs one head with d_head = d_model, got "
                f"n_heads={m.n_heads}, d_head={d_head}"
            )
        if m.output == "identity" and m.n_heads * d_head != d_model:
            raise ValueError("model.output=identity needs n_heads·d_head = d_model: set output='trained'")
        if m.value_init == "topic_block" and self.data.kind == "text":
            raise ValueError("model.value_init=topic_block needs synthetic topics (data.kind='lda')")
        if m.value_init == "topic_block" and m.embedding != "onehot":
            raise ValueError("model.value_init=topic_block is defined in id space: it needs model.embedding=onehot")
        if m.decoder == "identity" and d_model != n_ids:
            raise ValueError(f"model.decoder=identity needs d_model = number of ids ({n_ids}): use 'trained' or 'tied'")
        return self
