"""Typed, validated experiment configs: TOML in and out, dotted ``--set`` overrides, recipe inheritance.

Every parameter is declared once here and validated once, at the boundary. A bad value raises ``ConfigError`` whose
one-line message names the key, the allowed values and the value received; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import ast
import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A bad experiment config or command-line value; its message is one line that says what to do."""


MAX_SEEDS = 4096  # members of one group: more is a typo (0-100000000), not an experiment
MEMORY_SHARE = 0.5  # the data a config asks for may take at most this share of the machine's memory


def machine_memory() -> int:
    """Bytes of physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(key: str, value: int, need: float, what: str) -> None:
    """One rule for sizes: the estimate ``need`` (bytes) of what ``key`` = ``value`` asks for must fit."""
    have = machine_memory()
    if need > MEMORY_SHARE * have:
        raise ValueError(
            f"{key} = {value:,} needs about {need / 2**30:,.1f} GiB for {what}, more than half of this machine's "
            f"{have / 2**30:,.0f} GiB: lower {key}"
        )


def no_effect(key: str, value: Any, default: Any, idle: bool, why: str) -> None:
    """One rule for keys that would be silently ignored: set away from its default where it does nothing."""
    if idle and value != default:
        raise ValueError(f"{key} = {value!r} does nothing here: it {why}")


def _takes_bool(annotation: Any) -> bool:
    return annotation is bool or annotation is Any or any(_takes_bool(a) for a in get_args(annotation))


class Strict(BaseModel):
    """Every config section: unknown keys, non-finite numbers and true/false where a number is meant are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for name, value in values.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and not _takes_bool(field.annotation):
                    raise ValueError(f"{name} takes a number or a name, not {str(value).lower()}")
        return values


Probability = Field(ge=0.0, le=1.0)


class DataConfig(Strict):
    """Synthetic topic-model (LDA) documents, spec §1, in the official token layout."""

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
        per_doc = (self.doc_len_max + 2) * 8 * 3  # ids, corrupted inputs and targets, int64, START/END included
        for key in ("train_docs", "dev_docs"):
            check_memory(f"data.{key}", getattr(self, key), getattr(self, key) * per_doc, "its documents")
        return self

    @property
    def sizes(self) -> list[int]:
        return list(self.topic_sizes) if self.topic_sizes else [self.words_per_topic] * self.num_topics

    @property
    def num_words(self) -> int:
        return self.vocab_size if self.vocab_size is not None else sum(self.sizes)


class MaskingConfig(Strict):
    """MLM corruption, spec §2."""

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

# Regimes of spec §4 as presets: a preset fills the model fields the user did not set.
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
    """The one-layer attention model with switches, spec §4. Regimes A–D are presets."""

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


GRAD_CLIP = "clip the gradient's global norm to this (per member in an ensemble)"
STOP_LOSS = "stop at the first probe step whose mean train loss is at or below this (per member in an ensemble)"


class TrainConfig(Strict):
    loss: Literal["ce", "squared"] = "ce"
    l2: float = Field(0.0, ge=0.0, description="λ of the penalty λ‖θ‖² on the trained parameters")
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(0.01, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    batch_size: int = Field(40, ge=1)
    steps: int = Field(5000, ge=1)
    probes: int = Field(60, ge=2, description="number of log-spaced probe steps (plus 0 and the last)")
    checkpoints: int = Field(8, ge=1, description="number of log-spaced checkpoints (plus the last)")
    grad_clip: float | None = Field(None, gt=0.0, description=GRAD_CLIP)
    stop_loss: float | None = Field(None, description=STOP_LOSS)

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


class Claim(Strict):
    """A result the recipe expects. ``left``/``right`` are sums and differences of metric names and numbers;
    a bare name reads ``final``, ``theory.x`` reads the theory's prediction."""

    name: str
    left: str
    op: Literal[">", ">=", "<", "<=", "close", "=="]
    right: str
    factor: float = Field(1.0, description="compare left op factor·right")
    rel: float = Field(0.1, gt=0.0, description="for op='close': |left − right| <= rel·|scale|")
    scale: str | None = Field(None, description="for op='close': the tolerance's scale (default: right)")
    min_share: float = Field(1.0, ge=0.0, le=1.0, description="over several seeds: share of seeds it must hold for")
    kind: Literal["result", "null", "sanity"] = Field(
        "result",
        description="result: a reproduced finding, which must fail on an untrained or wrongly structured model; "
        "null: a prediction that a structure does not form (it holds at initialisation too, so its recipe pairs it "
        "with a result showing the model did learn); sanity: a bound meant to hold at initialisation too, "
        "reported apart and never counted as a result",
    )

    @model_validator(mode="after")
    def _check(self) -> Claim:
        from toyformer.claims import parse_terms

        for side in (self.left, self.right, self.scale or "0"):
            parse_terms(side)
        if self.factor != 1.0 and self.op in ("close", "=="):
            raise ValueError(f"factor applies to >, >=, < and <=, not to {self.op!r}: write it into the sides")
        return self


class Experiment(Strict):
    """What every experiment has, whatever its task: a name, seeds, a device, and the claims it expects."""

    name: str = "custom"
    description: str = ""
    seed: int = Field(0, ge=0)
    seeds: list[int] | None = Field(
        None, min_length=1, max_length=MAX_SEEDS, description="run once per seed and aggregate the claims"
    )
    device: Literal["cpu", "cuda"] = "cpu"
    claims: list[Claim] = Field(default_factory=list)

    def dump(self) -> str:
        return tomli_w.dumps(self.model_dump(mode="json", exclude_none=True))


class CorpusConfig(Strict):
    """A text corpus, spec §8, read as a stream of documents (text and an optional category label)."""

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
    """LDA topics over a corpus and the word → topics rules of spec §8.

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


class TextDataConfig(Strict):
    """Real text for MLM training (spec §8): corpus documents as bags of vocabulary words, official id layout."""

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


class ExperimentConfig(Experiment):
    """A topic-structure experiment (paper 1)."""

    task: Literal["topic"] = "topic"
    data: Annotated[DataConfig | TextDataConfig, Field(discriminator="kind")] = Field(default_factory=DataConfig)
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    probes: ProbeConfig = Field(default_factory=ProbeConfig)
    theory: TheoryConfig = Field(default_factory=TheoryConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_kind(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("data"), dict) and "kind" not in values["data"]:
            values = {**values, "data": {**values["data"], "kind": "lda"}}
        return values

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
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


class AnalysisConfig(TopicsFit, Experiment):
    """Topic structure of a pretrained BERT-family encoder on a corpus (spec §8): `toyformer analyze`."""

    task: Literal["analyze"] = "analyze"
    name: str = "analyze"
    model_dir: str = Field(description="a local HuggingFace model folder (config.json, weights, tokenizer)")
    docs: int = Field(1000, ge=1, description="documents whose attention is measured (the corpus's first ones)")
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(256, ge=8, description="word pieces per document (longer ones are cut)")
    claims: list[Claim] = Field(default_factory=_default_analysis_claims)


# --------------------------------------------------------------------------------------------------------------
# Induction heads (paper 2): in-context n-gram chains, TF(M, H, d, D), staged training


class ChainConfig(Strict):
    """In-context n-gram chains, spec §1: every sequence draws its own kernel, rows Dirichlet(α·1_d)."""

    kind: Literal["ngram"] = "ngram"
    d: int = Field(3, ge=2, description="vocabulary size")
    parents: list[int] = Field(default_factory=lambda: [1, 2], description="parent offsets pa, any set ≥ 1")
    alpha: float = Field(0.1, gt=0.0, description="Dirichlet concentration of each kernel row")
    length: int = Field(100, ge=2, description="L: inputs x_1..x_L, target x_{L+1}")
    start: Literal["uniform", "stationary"] = "uniform"
    targets: Literal["last", "all"] = Field("last", description="score x_{L+1} only (paper) or every position")
    first_order: bool = Field(False, description="official sanity task: x_L redrawn uniform, target ~ π(·|x_L)")
    split: Literal["fixed", "stream"] = Field("fixed", description="fixed finite dataset (paper) or fresh chains")
    sequences: int = Field(10_000, ge=2, description="N of the fixed dataset (train + validation)")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    val_sequences: int = Field(1_000, ge=1, description="validation chains of a stream run")
    batch_size: int | None = Field(None, ge=1, description="default: the whole training set (full batch)")

    @field_validator("parents")
    @classmethod
    def _parents(cls, value: list[int]) -> list[int]:
        if not value or min(value) < 1 or len(set(value)) != len(value):
            raise ValueError("must be distinct offsets >= 1")
        return sorted(value)

    @model_validator(mode="after")
    def _check(self) -> ChainConfig:
        if self.length <= max(self.parents):
            raise ValueError(f"data.length must exceed the largest parent offset {max(self.parents)}")
        if self.d ** len(self.parents) > 4096:
            raise ValueError("data.d ** len(data.parents) must be at most 4096 kernel rows: lower d or the parents")
        if self.first_order and self.parents != [1]:
            raise ValueError("data.first_order needs data.parents = [1]")
        if self.split == "stream" and self.batch_size is None:
            raise ValueError("data.split = 'stream' needs data.batch_size")
        per_chain = (self.length + 1) * 8 + self.d ** len(self.parents) * self.d * 4  # tokens and its kernel
        n, key = (self.sequences, "sequences") if self.split == "fixed" else (self.val_sequences, "val_sequences")
        check_memory(f"data.{key}", n, n * per_chain, "its chains and their kernels")
        return self

    @property
    def train_sequences(self) -> int:
        return self.sequences - max(1, round(self.sequences * self.val_fraction))


class GIHModelConfig(Strict):
    """TF(M, H, d, D), spec §2: RPE copier, polynomial-kernel selector over |S| <= D, classifier a."""

    variant: Literal["simplified", "full"] = "simplified"
    heads: int = Field(3, ge=1, description="H")
    degree: int = Field(2, ge=1, description="D: the selector keeps subsets of at most D heads")
    layout: Literal["code", "paper"] = Field("code", description="code: head h sees h..h+H−1; paper: 1..M")
    window: int | None = Field(None, ge=1, description="M of the paper layout")
    norm: Literal["l2", "layernorm"] | None = Field(None, description="head normalisation; default l2 (full: LN)")
    w_plus: float = Field(3.0, description="RPE init at head h's own offset h")
    w_minus: float = Field(0.1, description="RPE init at the other offsets")
    c_init: float = Field(0.01, description="init of every c_S")
    a_init: float = Field(0.01, description="init of the classifier's a")
    matrix_init: float = Field(0.01, description="full variant: Q, K and OV start at this times the identity")
    fast: bool = Field(True, description="pair-table fast path where it fits (the literal model is the reference)")

    @model_validator(mode="after")
    def _check(self) -> GIHModelConfig:
        if self.degree > self.heads:
            raise ValueError(f"model.degree must be in 1..heads={self.heads}, got {self.degree}")
        why = "is the paper layout's M; the code layout's windows are h..h+H-1"
        no_effect("model.window", self.window, None, self.layout == "code", why)
        if self.layout == "paper":
            if self.window is None:
                raise ValueError("model.layout = 'paper' needs model.window (M: each head sees offsets 1..M)")
            if self.window < self.heads:
                raise ValueError(f"model.window must be >= heads={self.heads} (head h starts at offset h)")
        return self

    @property
    def head_norm(self) -> str:
        return self.norm or ("layernorm" if self.variant == "full" else "l2")

    def offsets(self) -> list[int]:
        """Offsets some head can copy."""
        last = 2 * self.heads - 1 if self.layout == "code" else self.window
        return list(range(1, last + 1))


GIHGroup = Literal["c", "w", "a", "qk", "ov", "norm"]


class Stage(Strict):
    """One stage of training: which parameter groups move, how, and for how many steps."""

    groups: list[GIHGroup]
    steps: int = Field(ge=1)
    lr: float = Field(1.0, gt=0.0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self) -> Stage:
        if not self.groups:
            raise ValueError("a stage must train at least one group (c, w, a; full variant also qk, ov, norm)")
        why = "applies to optimizer = 'sgd' only (Adam keeps its own moments)"
        no_effect("momentum", self.momentum, 0.0, self.optimizer != "sgd", why)
        return self


class InductionTrainConfig(Strict):
    loss: Literal["nll", "code-ce"] = Field("nll", description="nll of y (paper) or CE on y as logits (code)")
    stages: list[Stage] = Field(default_factory=lambda: [Stage(groups=["c", "w", "a"], steps=50_000)], min_length=1)
    probes: int = Field(60, ge=2, description="number of log-spaced probe steps (plus 0 and the last)")
    checkpoints: int = Field(8, ge=1, description="number of log-spaced checkpoints (plus the last)")
    grad_clip: float | None = Field(None, gt=0.0, description=GRAD_CLIP)
    stop_loss: float | None = Field(None, description=STOP_LOSS)

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self.stages)


class InductionTheoryConfig(Strict):
    kernels: int = Field(2000, ge=2, description="prior kernels averaged for E_π Ĩ(S) and S*")


class InductionConfig(Experiment):
    """An induction-head experiment (paper 2)."""

    task: Literal["induction"]
    data: ChainConfig = Field(default_factory=ChainConfig)
    model: GIHModelConfig = Field(default_factory=GIHModelConfig)
    train: InductionTrainConfig = Field(default_factory=InductionTrainConfig)
    theory: InductionTheoryConfig = Field(default_factory=InductionTheoryConfig)

    @model_validator(mode="after")
    def _check(self) -> InductionConfig:
        m, data = self.model, self.data
        reach = m.offsets()
        outside = [p for p in data.parents if p not in reach]
        if outside:
            raise ValueError(
                f"data.parents {outside} lie outside the offsets the heads can copy (1..{reach[-1]}): "
                "raise model.heads (code layout) or model.window (paper layout)"
            )
        if data.length <= reach[-1]:
            raise ValueError(f"data.length must exceed the copier's largest offset {reach[-1]}")
        allowed = {"c", "w", "a"} | ({"qk", "ov", "norm"} if m.variant == "full" else set())
        for i, stage in enumerate(self.train.stages):
            bad = sorted(set(stage.groups) - allowed)
            if bad:
                raise ValueError(f"train.stages[{i}].groups: {bad} not in the {m.variant} model {sorted(allowed)}")
        return self


TASKS: dict[str, type[Experiment]] = {
    "topic": ExperimentConfig,
    "induction": InductionConfig,
    "analyze": AnalysisConfig,
}


def num_ids(data: DataConfig | TextDataConfig) -> int:
    """Ids of the official layout: PAD=0, MASK=1, START=2, END=3, word k = k + 4."""
    return data.num_words + NUM_SPECIALS


NUM_SPECIALS = 4
PAD, MASK, START, END = 0, 1, 2, 3


# --------------------------------------------------------------------------------------------------------------
# Loading: recipes, files, overrides


def recipe_names() -> list[str]:
    root = resources.files("toyformer") / "recipes"
    names = []
    for family in sorted(p for p in root.iterdir() if p.is_dir()):
        names += [f"{family.name}/{f.name[:-5]}" for f in sorted(family.iterdir()) if f.name.endswith(".toml")]
    return names


def _read_toml(ref: str) -> dict[str, Any]:
    path = Path(ref)
    if ref.endswith(".toml") and path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{ref}: cannot read it as a TOML file ({type(e).__name__}: {e})") from None
    else:
        if ref not in recipe_names():
            raise ConfigError(
                f"unknown recipe {ref!r}: give a name from `toyformer recipes` or the path of a TOML file"
            )
        family, name = ref.split("/", 1)
        text = (resources.files("toyformer") / "recipes" / family / f"{name}.toml").read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{ref}: not valid TOML ({e})") from None
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"{ref}: extends must name a recipe or a TOML file, got {parent!r}")
    return deep_merge(_read_toml(parent), raw)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML/Python literal (number, bool, list, quoted string) or else a bare string."""
    lowered = text.strip()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = deep_merge({}, raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write key=value, e.g. --set train.steps=200")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            node = _child(node, part, key)
            if not isinstance(node, dict | list):
                raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
        if isinstance(node, list):
            _child(node, parts[-1], key)  # checks the index
            node[int(parts[-1])] = parse_value(value)
        else:
            node[parts[-1]] = parse_value(value)
    return raw


def _child(node: dict | list, part: str, key: str) -> Any:
    """A section of a --set path: a table by name, or an entry of an array of tables by index (stages.0)."""
    if isinstance(node, dict):
        return node.setdefault(part, {})
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {key}: {part!r} is not an index of a list of {len(node)} entries")
    return node[int(part)]


def validate(raw: dict[str, Any]) -> ExperimentConfig | InductionConfig:
    """The config of either task, chosen by the top-level ``task`` key (default "topic")."""
    task = raw.get("task", "topic")
    if not isinstance(task, str) or task not in TASKS:
        raise ConfigError(f"task: must be one of {sorted(TASKS)}, got {task!r}")
    return validate_as(TASKS[task], raw)


def validate_as(cls: type[BaseModel], raw: dict[str, Any]) -> Any:
    """A config of a given class from a raw dict; errors as one-line ConfigErrors."""
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_one_line(e)) from None


# the tags of discriminated sections (data.kind), which pydantic puts in an error's location (data.lda.alpha)
SECTION_TAGS = {tag for c in (DataConfig, TextDataConfig) for tag in get_args(c.model_fields["kind"].annotation)}


def _one_line(e: ValidationError) -> str:
    err = e.errors()[0]
    parts = [str(p) for p in err["loc"]]
    msg = err["msg"].removeprefix("Value error, ")
    received = err.get("input")
    if err["type"] == "value_error" and isinstance(received, dict):  # a section's own rule: no dump of the section
        parts = [p for p in parts if p not in SECTION_TAGS]
        first = msg.split(" ", 1)[0]
        return msg if "." in first or not parts else f"{'.'.join(parts)}.{msg}"
    key = ".".join(p for p in parts if p not in SECTION_TAGS)
    if err["type"] == "missing":
        return f"{key}: required, with no default"
    if err["type"] == "extra_forbidden":
        return f"unknown key {key!r}: check the spelling against `toyformer recipes --show NAME`"
    if err["type"] == "literal_error":
        return f"{key}: {msg}, got {received!r}"
    if not key:
        return msg
    return f"{key}: {msg}, got {received!r}"


def load(ref: str, overrides: list[str] | None = None, seed: int | None = None) -> ExperimentConfig:
    raw = apply_overrides(_read_toml(ref), overrides or [])
    if seed is not None:
        raw["seed"] = seed
    return validate(raw)
