"""The induction-head experiments' config (paper 2): in-context n-gram chains, TF(M, H, d, D), staged training and
the theory's number of prior kernels."""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import Field, field_validator, model_validator

from toyformer.config import LoopConfig, RunConfig, Strict, check_memory, no_effect

MAX_STATES = 4096  # d^m windows of the theory's stationary chain (m: the largest offset it reads)


def head_offsets(layout: str, heads: int, window: int | None = None) -> list[int]:
    """Offsets the heads can copy: code layout, head h copies offset h (its window is h..h+H−1, RPE peak at h);
    paper layout, any offset of the window 1..M."""
    if layout == "code":
        return list(range(1, heads + 1))
    return list(range(1, (window or heads) + 1))


def candidate_subsets(layout: str, heads: int, degree: int, window: int | None = None) -> list[tuple[int, ...]]:
    """Offset subsets the selector can keep: nonempty, at most D of them (and at most H: one head copies one)."""
    offsets = head_offsets(layout, heads, window)
    size = min(degree, heads)
    return [s for r in range(1, size + 1) for s in itertools.combinations(offsets, r)]


class ChainConfig(Strict):
    """In-context n-gram chains, docs/induction-heads.md §1: every sequence draws its own kernel, rows
    Dirichlet(α·1_d)."""

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
        n, key = (self.sequences, "sequences") if self.split == "fixed" else (self.val_sequences, "val_sequences")
        check_memory(f"data.{key}", n, self.data_bytes(), "its chains and their kernels")
        return self

    def data_bytes(self) -> float:
        per_chain = (self.length + 1) * 8 + self.d ** len(self.parents) * self.d * 4  # tokens and its kernel
        return (self.sequences if self.split == "fixed" else self.val_sequences) * per_chain

    @property
    def train_sequences(self) -> int:
        return self.sequences - max(1, round(self.sequences * self.val_fraction))


class GIHModelConfig(Strict):
    """TF(M, H, d, D), docs/induction-heads.md §2: RPE copier, polynomial-kernel selector over |S| <= D, classifier
    a."""

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
    fast: bool = Field(True, description="share the data's distinct windows (false: model.path = 'positions')")
    path: Literal["auto", "grouped", "table", "windows", "positions"] = Field(
        "auto", description="the exact path the model is computed by: auto takes the cheapest (induction/plan.py)"
    )

    @property
    def plan_path(self) -> str:
        return self.path if self.fast else "positions"

    @model_validator(mode="after")
    def _check(self) -> GIHModelConfig:
        if not self.fast and self.path != "auto":
            raise ValueError("model.fast = false is model.path = 'positions': set one of them, not both")
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

    @property
    def equality_kernel(self) -> bool:
        """Whether a head's inner product of two windows depends only on which of their tokens are equal (the
        simplified variant's L2-normalised copies of one-hot tokens), not on the tokens themselves."""
        return self.variant == "simplified" and self.head_norm == "l2"

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


class InductionTrainConfig(LoopConfig):
    loss: Literal["nll", "code-ce"] = Field("nll", description="nll of y (paper) or CE on y as logits (code)")
    stages: list[Stage] = Field(default_factory=lambda: [Stage(groups=["c", "w", "a"], steps=50_000)], min_length=1)

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self.stages)


class InductionTheoryConfig(Strict):
    kernels: int = Field(2000, ge=2, description="prior kernels averaged for E_π Ĩ(S) and S*")


class InductionConfig(RunConfig):
    """An induction-head experiment (paper 2)."""

    task: Literal["induction"]
    data: ChainConfig = Field(default_factory=ChainConfig)
    model: GIHModelConfig = Field(default_factory=GIHModelConfig)
    train: InductionTrainConfig = Field(default_factory=InductionTrainConfig)
    theory: InductionTheoryConfig = Field(default_factory=InductionTheoryConfig)

    def data_bytes(self) -> float:
        return self.data.data_bytes()

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
        largest = max(*data.parents, *head_offsets(m.layout, m.heads, m.window))
        if data.d**largest > MAX_STATES:
            raise ValueError(
                f"data.d ** {largest} (the largest offset the theory reads) is {data.d**largest:,} windows, more than "
                f"{MAX_STATES}: lower data.d, the parents or the heads' window"
            )
        states = data.d ** max(data.parents)  # the theory's (kernels, states, states) transition matrices
        check_memory("theory.kernels", self.theory.kernels, self.theory.kernels * states**2 * 8, "stationary laws")
        if m.path == "grouped" and data.targets != "last":
            raise ValueError("model.path = 'grouped' needs data.targets = 'last': use auto, table or windows")
        if data.targets == "all" and data.split == "fixed" and data.batch_size is None:
            n, length = data.train_sequences, data.length
            if n * length * length > 50_000_000:
                raise ValueError(
                    f"data.targets = 'all' with a full batch of {n} chains of length {length} needs "
                    f"{n * length * length:,} kernel entries per step: set data.batch_size (e.g. 256)"
                )
        allowed = {"c", "w", "a"} | ({"qk", "ov", "norm"} if m.variant == "full" else set())
        for i, stage in enumerate(self.train.stages):
            bad = sorted(set(stage.groups) - allowed)
            if bad:
                raise ValueError(f"train.stages[{i}].groups: {bad} not in the {m.variant} model {sorted(allowed)}")
        return self
