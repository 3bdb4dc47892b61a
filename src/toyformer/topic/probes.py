"""What is measured on a topic model over training, docs/topic-structure.md §6. Each probe is a small object with one
method, ``measure(model) -> {name: number}``; all are vectorised (no loops over tokens or token pairs).

Matrices are read in id space, whatever the width, with W_E the input vector of each id (``embedding_table``):
the embedding Gram W_E W_Eᵀ; the OV circuit W_E W_V W_O W_U
(in regime B this is W^V itself; in regime A with a tied decoder it is EEᵀ), composed over layers; the QK circuit
W_E W_Q W_Kᵀ W_Eᵀ of layer 0. OV is summed over heads (the layer's total map), QK averaged over heads. Attention
statistics are reported for layer 0 (``attn_*``) and for every later layer (``attn_*_layer1``, …).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from toyformer.text.pairs import CLASSES, pair_classes
from toyformer.topic.batch import Batch
from toyformer.topic.config import NUM_SPECIALS, PAD
from toyformer.topic.lda import Documents
from toyformer.topic.losses import model_loss, weighted_positions
from toyformer.topic.model import TopicTransformer, id_counts, id_ranks, param_group
from toyformer.topic.theory import PairStats, block_effect_of, class_means


def ov_circuit(model: TopicTransformer) -> torch.Tensor:
    """W_E · Π_l (Σ_h W_V W_O)_l · W_U: the id → logit map of the all-attention path (regime B: W^V itself). Identity
    factors (a frozen one-hot W_E, W^O = I, an identity decoder) are not multiplied by: at V = 4,000 each such
    product is 64·10⁹ multiply-adds."""
    ov = None if model.blocks[0].attn.identity_table else model.embedding_table()  # None: the identity so far
    for block in model.blocks:
        a = block.attn
        vo = a.W_V.permute(1, 0, 2).flatten(1) if a.identity_output else torch.einsum("hde,hef->df", a.W_V, a.W_O)
        ov = vo if ov is None else ov @ vo
    return ov if model.decoder == "identity" else ov @ model.unembed()


def qk_circuit(model: TopicTransformer, layer: int = 0) -> torch.Tensor | None:
    attn = model.blocks[layer].attn
    if attn.uniform:
        return None
    table = model.embedding_table()
    if layer == 0:  # the attention's own id-pair table (made once in a probe), summed over heads
        return attn.query_key_table(table).sum(0) * (math.sqrt(attn.d_head) / len(attn.W_Q))
    qk = torch.einsum("hde,hfe->df", attn.W_Q, attn.W_K) / attn.W_Q.shape[0]
    return table @ qk @ table.T


class FrozenRead:
    """A read of a model that depends only on some parameter groups (with buffers), computed again only when one of
    them is trained or differs from the copies it was last read from (compared exactly, at each call). Regime C's
    one-hot W_E and topic-block W^V never change: at V = 4,000 their W^VᵀW^V alone is 64·10⁹ multiply-adds."""

    def __init__(self, groups: tuple[str, ...], compute: Callable[[TopicTransformer], dict[str, float]]):
        self.groups, self.compute = groups, compute
        self.kept: tuple[list[torch.Tensor], dict[str, float]] | None = None

    def __call__(self, model: TopicTransformer) -> dict[str, float]:
        named = [*model.named_parameters(), *model.named_buffers()]
        tensors = [t for name, t in named if param_group(name) in self.groups]
        if any(t.requires_grad for t in tensors):
            return self.compute(model)
        if self.kept is not None and len(self.kept[0]) == len(tensors):
            if all(a.device == b.device and torch.equal(a, b) for a, b in zip(self.kept[0], tensors, strict=True)):
                return self.kept[1]
        result = self.compute(model)
        self.kept = ([t.clone() for t in tensors], result)
        return result


EMBEDDING = ("embedding", "norm")
OV = ("embedding", "norm", "value", "output", "decoder")  # what ov_circuit reads
QK = ("embedding", "norm", "query", "key")


class CircuitStructure:
    """Block contrast of E, W^V (and its column Gram W^VᵀW^V), and W_QᵀW_K: class means over word pairs, and the
    block effect (the contrast in within-class standard deviations) that claims read, whatever the scale."""

    def __init__(self, classes: dict[str, torch.Tensor]):
        self.classes, self.pairs = classes, PairStats(classes)
        self.reads = [
            FrozenRead(EMBEDDING, self._embedding),
            FrozenRead(OV, self._value),
            FrozenRead(QK, lambda m: {} if m.blocks[0].attn.uniform else self._read(qk_circuit(m), "qk")),
        ]

    @torch.no_grad()
    def measure(self, model: TopicTransformer) -> dict[str, float]:
        out = {}
        for read in self.reads:
            out |= read(model)
        return out

    def _embedding(self, model: TopicTransformer) -> dict[str, float]:
        table = model.embedding_table()
        if model.blocks[0].attn.identity_table:  # a frozen one-hot W_E: its Gram and cosines are the identity
            gram = cosine = torch.eye(len(table), device=table.device)
        else:
            unit = table / table.norm(dim=1, keepdim=True).clamp_min(1e-12)
            gram, cosine = table @ table.T, unit @ unit.T
        return self._read(gram, "emb") | class_means(cosine, self.pairs, "emb_cos")

    def _value(self, model: TopicTransformer) -> dict[str, float]:
        ov = ov_circuit(model)
        # W^VᵀW^V over inputs (inputs' value vectors are rows here), after removing what a trained bias absorbs:
        # each output's mean over the input words. Without that, a shared offset swamps every class.
        words = self.classes["same_word"].diagonal()
        centred = ov - ov[words].mean(0, keepdim=True)
        return self._read(ov, "wv") | self._read(centred @ centred.T, "wv_gram")

    def _read(self, matrix: torch.Tensor, prefix: str) -> dict[str, float]:
        """Class means and the scale-free block effect of one word-pair matrix."""
        stats = self.pairs(matrix)
        return {f"{prefix}_{name}": s[0] for name, s in stats.items()} | block_effect_of(stats, prefix)


# the summary keys of these classes (attn_same_token, attn_empty), public before the classes got their shared names
ATTENTION_KEYS = {
    "same_word": "same_token",
    "same_topic": "same_topic",
    "diff_topic": "diff_topic",
    "unassigned": "empty",
}


def id_pair_labels(id_topics: torch.Tensor) -> torch.Tensor:
    """(V, V) uint8: the class of every ordered pair of ids (its index in ``CLASSES``; ``len(CLASSES)`` where either
    is PAD), by ``pair_classes``: a token pair's class depends on its two ids alone."""
    v, none = len(id_topics), len(CLASSES)
    has = id_topics.any(-1)
    same = torch.eye(v, dtype=torch.bool, device=id_topics.device) & has[:, None] & has[None, :]
    labels = torch.full((v, v), none, dtype=torch.uint8, device=id_topics.device)
    for k, mask in enumerate(pair_classes(id_topics, id_topics, same).values()):  # in the order of CLASSES
        labels[mask] = k
    labels[PAD, :] = labels[:, PAD] = none
    return labels


class TokenPairs:
    """The class of every (query, key) token pair of fixed documents, found and counted once, so that a pattern's
    class means are one weighted count over it (in float64, at most ``pairs`` pairs at a time).

    ids: (B, L) with PAD after the end; id_topics: (V, T) bool; query_index: (B, Lq) the query positions (default:
    every position). Classes as in ``toyformer.text.pairs`` (``id_pair_labels``), keys as in ``ATTENTION_KEYS``.
    A document given as its distinct ids (``compressed``) has ``counts`` (B, L), the tokens each id stands for, as
    the weight of its rows and columns; its patterns' columns are then sums over each id's keys."""

    def __init__(
        self,
        ids: torch.Tensor,
        id_topics: torch.Tensor,
        query_index: torch.Tensor | None = None,
        counts: torch.Tensor | None = None,
    ):
        queries = ids if query_index is None else ids.gather(1, query_index)
        table = id_pair_labels(id_topics.to(ids.device))
        self.labels = table.flatten()[queries[:, :, None] * len(table) + ids[:, None, :]]  # (B, Lq, L) uint8
        self.tokens = counts  # (B, L) float64: the tokens each column (and row) stands for (default one)
        weights = None if counts is None else (counts[:, :, None] * counts[:, None, :]).flatten()
        self.counts = torch.bincount(self.labels.flatten(), weights=weights, minlength=len(CLASSES) + 1)
        self.scale = ((ids != PAD).sum(1).double() if counts is None else counts.sum(1)) / 100.0

    def means(self, pattern: torch.Tensor, pairs: int = 2**22) -> dict[str, float]:
        """pattern: (B, Lq, L), or Lq = 1 (every query alike) → ``attn_<class>`` means."""
        b, rows, n = self.labels.shape
        if self.tokens is not None and pattern.shape[-1] == 1 < n:  # one position standing for all, weight one
            pattern = self.tokens[:, None, :]
        pattern = pattern.expand(b, rows, n)
        sums = torch.zeros(len(self.counts), dtype=torch.float64, device=pattern.device)
        step = max(1, pairs // (rows * n))
        for start in range(0, b, step):
            part = slice(start, start + step)
            scale = self.scale[part, None, None]
            if self.tokens is not None:
                scale = scale * self.tokens[part, :, None]
            weight = (pattern[part].double() * scale).flatten()
            sums += torch.bincount(self.labels[part].flatten(), weights=weight, minlength=len(self.counts))
        return {
            f"attn_{ATTENTION_KEYS[name]}": float(sums[k]) / float(self.counts[k])
            for k, name in enumerate(CLASSES)
            if self.counts[k]
        }


def attention_class_means(
    pattern: torch.Tensor, ids: torch.Tensor, id_topics: torch.Tensor, query_index: torch.Tensor | None = None
) -> dict[str, float]:
    """Mean attention per class of ordered token pairs (i, j), i = j included, each value scaled by n/100 (n = the
    document's tokens, all of them keys on the uncorrupted documents this is meant for) so that uniform attention
    reads 0.01.

    pattern: (B, Lq, L), its rows the queries at ``query_index`` (B, Lq) (default: every position, Lq = L), or
    Lq = 1 (every query alike); ids: (B, L) with PAD after the end; id_topics: (V, T) bool. Classes as in
    ``toyformer.text.pairs``, a token with no topic (a special) in no pair of one word with itself; keys as in
    ``ATTENTION_KEYS``.
    """
    return TokenPairs(ids, id_topics, query_index).means(pattern)


def compressed(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each document (B, L) as its distinct ids, padded with PAD, and the tokens each stands for (float64; 0 for the
    padding). The model has no positions: a document's tokens with one id have one attention row, and as keys they
    add one term to every softmax, which the compressed document carries as the log of their count in its key bias."""
    distinct, counts = id_counts(ids.masked_fill(ids == PAD, -1))
    return distinct.masked_fill(distinct < 0, PAD), counts.masked_fill(distinct < 0, 0.0)


class AttentionClasses:
    """Attention class means of layer 0 (averaged over heads) on uncorrupted dev documents, over every (query, key)
    pair of each, computed on the documents compressed to their distinct ids (``compressed``): at 100 ids, documents
    of 500–1,000 words become ~100 rows and columns."""

    def __init__(self, docs: Documents, id_topics: torch.Tensor):
        self.ids = docs.ids
        self.key_bias = torch.zeros(docs.ids.shape, device=docs.ids.device).masked_fill_(docs.ids == PAD, -torch.inf)
        self.distinct, counts = compressed(self.ids)
        self.distinct_bias = counts.log().float()  # log 0 = −∞: the padding is no key
        self.pairs = TokenPairs(self.distinct, id_topics, counts=counts)

    def _patterns(self, model: TopicTransformer) -> list[torch.Tensor]:
        """Each layer's pattern (B, H, K, K) on the compressed documents."""
        return model(self.distinct, self.distinct_bias)[1]

    @torch.no_grad()
    def measure(self, model: TopicTransformer) -> dict[str, float]:
        out = {}
        for layer, pattern in enumerate(self._patterns(model)):
            suffix = f"_layer{layer}" if layer else ""
            heads = pattern[:, 0] if pattern.shape[1] == 1 else pattern.mean(1)  # one head: no copy
            out |= {k + suffix: v for k, v in self.pairs.means(heads).items()}
        return out

    @torch.no_grad()
    def head_gap(self, model: TopicTransformer) -> dict[str, list[float]]:
        """Layer → per-head same-topic minus different-topic attention (the summary's attn_head_gap)."""
        out = {}
        for layer, pattern in enumerate(self._patterns(model)):
            gaps = []
            for head in range(pattern.shape[1]):
                m = self.pairs.means(pattern[:, head])
                gaps.append(m.get("attn_same_topic", float("nan")) - m.get("attn_diff_topic", float("nan")))
            out[str(layer)] = gaps
        return out


class Norms:
    """Per component: norm, distance from initialisation and (when a gradient is present) gradient norm."""

    def __init__(self, init_state: dict[str, torch.Tensor]):
        self.init_state = init_state

    @torch.no_grad()
    def measure(self, model: TopicTransformer) -> dict[str, float]:
        sums: dict[str, float] = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            group = param_group(name)
            parts = {"norm": p, "dist": p - self.init_state[name].to(p.device)}
            if p.grad is not None:
                parts["grad"] = p.grad
            for kind, t in parts.items():
                key = f"{kind}_{group}"
                sums[key] = sums.get(key, 0.0) + float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2
        return {k: v**0.5 for k, v in sums.items()}


def fewer(rows: int, ids: torch.Tensor, least: int) -> int:
    """``rows``, or the most distinct values in a row of ``ids`` (B, L) where that halves even the ``least``."""
    distinct = int(id_ranks(ids)[2][:, -1].max()) + 1
    return distinct if 2 * distinct <= least else rows


class DevLoss:
    """The loss on the fixed, corrupted dev split, a few documents at a time: at most ``pairs`` (query, key) pairs
    and ``width`` elements of gathered key vectors (B·L·V at the one-hot width V) in one forward pass, a document's
    queries and keys counted once per id. Parts that
    stay in cache are faster: at V = 4,000, parts of 4–8 documents took 0.8 s where parts of 132 took 2.1 s. The
    documents are taken in order of length and each part is cut after its longest document (the positions cut are
    padding: no key, no loss), so that short documents do not pay for the longest one's padding."""

    def __init__(self, dev: Batch, loss: str, pairs: int = 2**20, width: int = 2**22):
        self.loss = loss
        used = (dev.ids != PAD) | torch.isfinite(dev.key_bias)
        if dev.weight is not None:
            used |= dev.weight > 0
        positions = torch.arange(1, used.shape[1] + 1, device=used.device)
        lengths = (used * positions).amax(1)  # one past each document's last used position
        order = torch.argsort(lengths, stable=True)
        dev, lengths = dev.map(lambda t: t[order]), lengths[order]
        length, ids = dev.ids.shape[1], int(dev.ids.max()) + 1
        asked = used if dev.weight is None else dev.weight > 0
        queries = max(1, int(asked.sum(1).max()))
        # a document's queries and keys with one id are computed once where that halves them in every part
        # (``Attention``): its rows are then the most distinct ids of a document
        queries = fewer(queries, dev.ids.masked_fill(~asked, -1), int(asked.sum(1).min()))
        keys = fewer(length, dev.ids.masked_fill(~torch.isfinite(dev.key_bias), -1), int(lengths.min()))
        self.chunk = max(1, min(pairs // (queries * keys), width // (keys * ids)))
        self.parts = []  # (documents, the positions the loss reads, their total weight): fixed, so found once
        for start in range(0, len(dev), self.chunk):
            end = int(lengths[start : start + self.chunk].max())
            part = dev.slice(start, start + self.chunk).map(lambda t, end=end: t[:, :end])
            index = None if part.weight is None else weighted_positions(part.weight)
            self.parts.append((part, index, float(part.soft.sum() if part.soft is not None else part.weight.sum())))

    @torch.no_grad()
    def measure(self, model: TopicTransformer) -> dict[str, float]:
        total = sum(float(model_loss(model, part, self.loss, index)) * w for part, index, w in self.parts)
        return {"loss_dev": total / sum(w for _, _, w in self.parts)}


def centred_words(m: torch.Tensor, classes: dict[str, torch.Tensor]) -> torch.Tensor:
    """The word×word block with each column's mean removed: what a trained bias leaves identified."""
    words = classes["same_word"].diagonal()
    block = m[words][:, words].double()
    return block - block.mean(0, keepdim=True)


class OptimumDistance:
    """Relative distance of the learned OV circuit from the closed-form optimum, on identified (column-centred)
    word blocks: ‖P(W − W*)‖ / ‖P W*‖."""

    def __init__(self, optimum: torch.Tensor, classes: dict[str, torch.Tensor]):
        self.classes = classes
        self.target = centred_words(optimum, classes)
        self.read = FrozenRead(OV, self._distance)

    @torch.no_grad()
    def measure(self, model: TopicTransformer) -> dict[str, float]:
        return self.read(model)

    def _distance(self, model: TopicTransformer) -> dict[str, float]:
        learned = centred_words(ov_circuit(model).cpu(), self.classes)
        return {"dist_optimum": float((learned - self.target).norm() / self.target.norm())}


def words_by_topic(id_topics: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ids of words with a topic, grouped by their first topic (then by id), and those topics; at most ``limit``
    of them, evenly spaced over that order so that every topic keeps its share of the picture."""
    has = id_topics.any(1)
    has[:NUM_SPECIALS] = False
    first = id_topics.float().argmax(1)
    ids = torch.nonzero(has).flatten()
    ids = ids[torch.argsort(first[ids] * len(id_topics) + ids)]
    if len(ids) > limit:
        ids = ids[torch.linspace(0, len(ids) - 1, limit).round().long()]
    return ids, first[ids]


class Snapshot:
    """The matrices a topic run's report page shows at each probe step, over at most ``words`` words in topic order:
    the OV circuit (W^V), the QK circuit double-centred (softmax ignores per-query constants, and per-key saliences
    would swamp the picture), the embedding Gram EEᵀ when the embedding is trained, and the layer-0 attention
    (mean over heads, ×n/100) among the first ``tokens`` tokens of ``docs`` dev documents, sorted by topic."""

    def __init__(self, probe_docs: AttentionClasses, id_topics: torch.Tensor, trained_embedding: bool, **limits: int):
        words, docs, tokens = limits.get("words", 100), limits.get("docs", 3), limits.get("tokens", 40)
        device = probe_docs.ids.device
        self.words, self.word_topic = (t.to(device) for t in words_by_topic(id_topics.cpu(), words))
        self.trained_embedding = trained_embedding
        ids = probe_docs.ids[:docs]
        self.key_bias = probe_docs.key_bias[:docs]
        z = id_topics.to(device)
        topic = torch.where(z.any(1), z.float().argmax(1), -1)
        # the first `tokens` real words of each document (START is position 0), grouped by topic
        positions = []
        for doc in ids:  # a few documents, once
            where = torch.nonzero((doc != PAD) & (topic[doc] >= 0)).flatten()[:tokens]
            positions.append(where[torch.argsort(topic[doc[where]] * len(z) + doc[where], stable=True)])
        width = max(len(p) for p in positions)
        self.positions = torch.stack([torch.cat([p, p.new_full((width - len(p),), -1)]) for p in positions])
        self.ids = ids
        self.tokens = torch.where(self.positions >= 0, ids.gather(1, self.positions.clamp_min(0)), -1)
        self.token_topic = torch.where(self.tokens >= 0, topic[self.tokens.clamp_min(0)], -1)

    @torch.no_grad()
    def measure(self, model: TopicTransformer) -> dict[str, torch.Tensor]:
        w = self.words
        out = {"words": w, "word_topic": self.word_topic, "ov": ov_circuit(model)[w][:, w]}
        qk = qk_circuit(model)
        if qk is not None:
            qk = qk[w][:, w]
            out["qk"] = qk - qk.mean(0, keepdim=True) - qk.mean(1, keepdim=True) + qk.mean()
        if self.trained_embedding:
            table = model.embedding_table()[w]
            out["emb_gram"] = table @ table.T
        _, patterns = model(self.ids, self.key_bias)
        n = (self.ids != PAD).sum(1).float()
        pattern = patterns[0].mean(1).expand(-1, self.ids.shape[1], -1) * (n / 100)[:, None, None]  # (B, L, L)
        rows = self.positions.clamp_min(0)
        picked = pattern.gather(1, rows[:, :, None].expand(-1, -1, pattern.shape[2])).gather(
            2, rows[:, None, :].expand(-1, rows.shape[1], -1)
        )
        valid = (self.positions >= 0)[:, :, None] & (self.positions >= 0)[:, None, :]
        out |= {
            "attention": picked.masked_fill(~valid, float("nan")),
            "attention_tokens": self.tokens,
            "attention_topic": self.token_topic,
        }
        return out
