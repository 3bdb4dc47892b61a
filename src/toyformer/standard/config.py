"""The config of standard transformers on the n-gram tasks (docs/standard-transformers.md): the chains of paper 2
(``toyformer.induction.config.ChainConfig``), the model's shape, ordinary training, the role probes' thresholds and
the window of parent subsets the theory and the probes consider."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from toyformer.config import LoopConfig, RunConfig, Strict, check_memory, no_effect
from toyformer.induction.config import MAX_STATES, ChainConfig, InductionTheoryConfig


class StandardModelConfig(Strict):
    layers: int = Field(2, ge=1, le=12)
    heads: int = Field(2, ge=1, le=64, description="attention heads per layer")
    d_model: int = Field(32, ge=2)
    d_head: int | None = Field(None, ge=1, description="default d_model / heads")
    mlp: bool = Field(False, description="an MLP after each attention layer (false: attention-only)")
    d_mlp: int | None = Field(None, ge=1, description="default 4·d_model")
    layernorm: bool = Field(False, description="pre-LayerNorm before each sublayer and the unembedding")
    positions: Literal["absolute", "relative", "rotary"] = Field(
        "absolute", description="learned absolute W_pos, a learned bias per head and offset, or rotary"
    )
    rotary_base: float = Field(10_000.0, gt=1.0)
    tied: bool = Field(False, description="unembedding W_U = W_Eᵀ")
    init_std: float = Field(0.02, gt=0.0, description="std of the normal init of every matrix (biases start at 0)")
    fused: bool = Field(True, description="fused attention (scaled_dot_product_attention) unless a hook reads it")

    @model_validator(mode="after")
    def _check(self) -> StandardModelConfig:
        if self.d_head is None and self.d_model % self.heads:
            raise ValueError(f"model.d_model = {self.d_model} is not a multiple of heads = {self.heads}: set d_head")
        no_effect("model.d_mlp", self.d_mlp, None, not self.mlp, "sizes the MLP, and model.mlp is false")
        no_effect("model.rotary_base", self.rotary_base, 10_000.0, self.positions != "rotary", "is for rotary")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"model.positions = 'rotary' needs an even d_head, got {self.head_dim}")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.heads

    @property
    def mlp_dim(self) -> int:
        return self.d_mlp or 4 * self.d_model


class StandardTrainConfig(LoopConfig):
    loss: Literal["nll"] = Field("nll", description="cross-entropy of the softmax of the logits")
    steps: int = Field(3000, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0.0, description="decoupled (AdamW) for adam, L2 for sgd")
    momentum: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self) -> StandardTrainConfig:
        no_effect("train.momentum", self.momentum, 0.0, self.optimizer != "sgd", "applies to optimizer = 'sgd' only")
        return self


class RoleConfig(Strict):
    """The role probes (docs/standard-transformers.md, "Role probes")."""

    window: int | None = Field(None, ge=1, description="offsets 1..window are the candidate parents (default: pa+1)")
    degree: int = Field(3, ge=1, description="candidate subsets have at most this many offsets")
    copier_threshold: float = Field(0.5, gt=0.0, le=1.0, description="attention mass on one offset of a copier")
    score_threshold: float = Field(
        0.2, gt=0.0, le=1.0, description="the least induction score (excess mass on S-matches) of a used subset"
    )
    phase_tolerance: float = Field(
        0.05, gt=0.0, lt=1.0, description="a loss level is passed within this share of the unigram–GIH gap"
    )


class StandardConfig(RunConfig):
    """A standard transformer trained on in-context n-gram chains."""

    task: Literal["standard"]
    data: ChainConfig = Field(default_factory=ChainConfig)
    model: StandardModelConfig = Field(default_factory=StandardModelConfig)
    train: StandardTrainConfig = Field(default_factory=StandardTrainConfig)
    probes: RoleConfig = Field(default_factory=RoleConfig)
    theory: InductionTheoryConfig = Field(default_factory=InductionTheoryConfig)

    def data_bytes(self) -> float:
        return self.data.data_bytes()

    @property
    def window(self) -> int:
        """The largest candidate parent offset of the theory and the role probes."""
        return self.probes.window or max(self.data.parents) + 1

    @model_validator(mode="after")
    def _check(self) -> StandardConfig:
        data, window = self.data, self.window
        if window >= data.length:
            raise ValueError(f"probes.window = {window} must be below data.length = {data.length}")
        if data.d ** max(window, *data.parents) > MAX_STATES:
            raise ValueError(
                f"data.d ** {max(window, *data.parents)} windows exceed the theory's {MAX_STATES}: lower probes.window"
            )
        rows = data.batch_size or (data.train_sequences if data.split == "fixed" else data.val_sequences)
        m = self.model
        per_row = data.length**2 * m.heads * m.layers * 4 * 4 + data.length * m.d_model * m.layers * 4 * 16
        check_memory("data.batch_size", rows, rows * per_row, "a step's attention patterns and activations")
        return self
