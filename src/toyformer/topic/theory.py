"""Closed forms of the topic experiments, docs/topic-structure.md §5 (derived, not statements of the paper). Pure
functions, float64.

With uniform attention and no residual, every query of a document sees the same mixture c (the mean one-hot input
over its keys), so the model's logits are a linear map of c: c·W^V + b in regime B (W^V over ids), c·EEᵀ in regime A
with a tied decoder. Under the squared loss the optimum of that map is a (ridge) least-squares regression of the
target one-hots on c, which is computed here for the exact pipeline (finite N, masking, dropped keys, START/END), and
in the population limit is B/a: 1/(a·v) on same-topic pairs, 0 across topics, a = the attention share of real words.

Only contrasts are identified when the map has a trained bias (adding u to every row of W and −u to b changes no
output, since c sums to one), so compare learned and predicted values by contrasts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from toyformer.random import generator
from toyformer.text.pairs import pair_classes
from toyformer.topic.config import NUM_SPECIALS, DataConfig, TopicConfig, num_ids
from toyformer.topic.lda import id_topics, sample_documents, sample_mixtures
from toyformer.topic.masking import corrupt, population_batch


@dataclass
class Regression:
    """Sufficient statistics of the regression of targets on uniform-attention mixtures, summed over positions."""

    xx: torch.Tensor  # (V+1, V+1) Σ n_d x_d x_dᵀ, x = [c, 1]
    xy: torch.Tensor  # (V+1, V)   Σ x_d (target counts of d)ᵀ
    count: float  # number of target positions (sum of weights)
    word_share: float  # a: mean attention mass on real words


def pipeline_statistics(cfg: TopicConfig, docs: int, seed: int, chunk: int = 2000) -> Regression:
    """Simulate ``docs`` documents through the configured pipeline and accumulate the regression statistics."""
    v = num_ids(cfg.data)
    xx = torch.zeros(v + 1, v + 1, dtype=torch.float64)
    xy = torch.zeros(v + 1, v, dtype=torch.float64)
    count, share = 0.0, 0.0
    for k, start in enumerate(range(0, docs, chunk)):
        n = min(chunk, docs - start)
        gen = generator(seed, "theory", k)
        if cfg.data.population:
            batch = population_batch(sample_mixtures(cfg.data, n, gen), cfg.data, cfg.masking)
            targets = batch.soft.double().sum(1)  # (n, V): every query shares the document's mixture
        else:
            ids = sample_documents(cfg.data, n, gen).ids
            batch = corrupt(ids, cfg.masking, v, gen)
            targets = torch.zeros(n, v, dtype=torch.float64).scatter_add_(1, ids, batch.weight.double())
        weights = torch.softmax(batch.key_bias.double(), dim=-1)  # uniform attention over the keys
        c = torch.zeros(n, v, dtype=torch.float64).scatter_add_(1, batch.ids, weights)
        x = torch.cat([c, torch.ones(n, 1, dtype=torch.float64)], dim=1)
        per_doc = targets.sum(1)
        xx += x.T @ (per_doc[:, None] * x)
        xy += x.T @ targets
        count += float(per_doc.sum())
        share += float(c[:, NUM_SPECIALS:].sum())
    return Regression(xx, xy, count, share / docs)


def least_squares_optimum(stats: Regression, l2: float = 0.0, intercept: bool = True) -> torch.Tensor:
    """The squared-loss optimum W (V×V) of logits = c·W + b for the loss ‖cW + b − e_y‖²/V averaged over positions,
    plus λ‖(W, b)‖². Minimum-norm when λ = 0 (what gradient descent from zero reaches)."""
    v = stats.xy.shape[1]
    keep = slice(None) if intercept else slice(0, v)
    xx, xy = stats.xx[keep, keep] / (stats.count * v), stats.xy[keep] / (stats.count * v)
    if l2 > 0:
        theta = torch.linalg.solve(xx + l2 * torch.eye(xx.shape[0], dtype=xx.dtype), xy)
    else:
        theta = torch.linalg.pinv(xx, hermitian=True) @ xy
    return theta[:v]


def lda_pair_classes(data: DataConfig) -> dict[str, torch.Tensor]:
    """The word-pair classes of synthetic LDA topics."""
    return word_pair_classes(id_topics(data))


def word_pair_classes(z: torch.Tensor) -> dict[str, torch.Tensor]:
    """Boolean (V, V) masks over word-id pairs from the (V, T) topic sets of the ids (``toyformer.text.pairs``), words
    only; ``unassigned`` only when some word has no topic."""
    is_word = torch.zeros(len(z), dtype=torch.bool)
    is_word[NUM_SPECIALS:] = True
    words = is_word[:, None] & is_word[None, :]
    out = {name: words & mask for name, mask in pair_classes(z, z, torch.eye(len(z), dtype=torch.bool)).items()}
    if z[NUM_SPECIALS:].any(1).all():
        del out["unassigned"]
    return out


class PairStats:
    """Word-pair classes (disjoint masks, as ``word_pair_classes`` gives them) held as one label per pair, so that a
    matrix's count, mean and unbiased variance in every class take two passes over it in float64 (a V × V matrix at
    V = 4,000 has 16·10⁶ entries), not two per class. Empty classes are left out."""

    def __init__(self, classes: dict[str, torch.Tensor]):
        self.names = [name for name, mask in classes.items() if mask.any()]
        first = next(iter(classes.values()))
        labels = torch.full(first.shape, len(self.names), dtype=torch.long, device=first.device)
        for k, name in enumerate(self.names):
            mask = classes[name].to(first.device)
            if (labels[mask] != len(self.names)).any():
                raise ValueError(f"pair class {name!r} overlaps an earlier class: the classes must be disjoint")
            labels[mask] = k
        self.labels = labels.flatten()
        self.counts = torch.bincount(self.labels, minlength=len(self.names) + 1).double()

    def __call__(self, matrix: torch.Tensor) -> dict[str, tuple[float, float, int]]:
        """Class → (mean, unbiased variance, count) of ``matrix``'s entries."""
        k, labels = len(self.names), self.labels.to(matrix.device)
        flat = matrix.detach().flatten().double()
        counts = self.counts.to(flat.device)
        means = torch.bincount(labels, weights=flat, minlength=k + 1) / counts.clamp_min(1)
        squares = torch.bincount(labels, weights=(flat - means[labels]).square_(), minlength=k + 1)
        var = squares / (counts - 1).clamp_min(1)
        return {name: (float(means[i]), float(var[i]), int(counts[i])) for i, name in enumerate(self.names)}


def _pair_stats(classes: dict[str, torch.Tensor] | PairStats) -> PairStats:
    return classes if isinstance(classes, PairStats) else PairStats(classes)


def class_means(matrix: torch.Tensor, classes: dict[str, torch.Tensor] | PairStats, prefix: str) -> dict[str, float]:
    return {f"{prefix}_{name}": s[0] for name, s in _pair_stats(classes)(matrix).items()}


def block_effect(matrix: torch.Tensor, classes: dict[str, torch.Tensor] | PairStats, prefix: str) -> dict[str, float]:
    """``<prefix>_block_effect``: the same-topic minus different-topic mean of a word-pair matrix, in units of the
    pooled within-class standard deviation of its entries (Cohen's d). Scale-free, so one threshold reads any
    circuit at any width or init scale: a random matrix gives |d| of a few hundredths, a topic-block one d ≫ 1."""
    return block_effect_of(_pair_stats(classes)(matrix), prefix)


def block_effect_of(stats: dict[str, tuple[float, float, int]], prefix: str) -> dict[str, float]:
    """``block_effect`` from a matrix's class statistics (``PairStats``)."""
    if "same_topic" not in stats or "diff_topic" not in stats:
        return {}
    (same, v_same, n_same), (diff, v_diff, n_diff) = stats["same_topic"], stats["diff_topic"]
    if n_same < 2 or n_diff < 2:
        return {}
    pooled = ((v_same * (n_same - 1) + v_diff * (n_diff - 1)) / (n_same + n_diff - 2)) ** 0.5
    return {f"{prefix}_block_effect": (same - diff) / max(pooled, 1e-300)}  # an exact block matrix: huge


def population_value_optimum(data: DataConfig, word_share: float) -> torch.Tensor | None:
    """B/a over ids (docs/topic-structure.md §5.1): 1/(a·|topic|) on same-topic word pairs. Defined for disjoint uniform
    topics."""
    if data.overlap or data.word_dist != "uniform":
        return None
    v = num_ids(data)
    out = torch.zeros(v, v, dtype=torch.float64)
    start = NUM_SPECIALS
    for size in data.sizes:
        out[start : start + size, start : start + size] = 1.0 / (word_share * size)
        start += size
    return out


def predictions(cfg: TopicConfig, stats: Regression | None = None) -> tuple[dict[str, float], torch.Tensor]:
    """The theory block of a run summary, and the finite-N optimum of the id→logit map it was computed from."""
    stats = stats or pipeline_statistics(cfg, cfg.theory.samples, seed=cfg.seed)
    intercept = cfg.model.value_bias or cfg.model.decoder_bias
    optimum = least_squares_optimum(stats, cfg.train.l2, intercept)
    classes = lda_pair_classes(cfg.data)
    out = {"attention_word_share": stats.word_share}
    out |= class_means(optimum, classes, "wv")
    if cfg.model.decoder == "tied":
        out |= class_means(optimum, classes, "emb")
    population = population_value_optimum(cfg.data, stats.word_share)
    if population is not None:
        out |= {f"{k}_population": x for k, x in class_means(population, classes, "wv").items()}
    return out, optimum
