"""The topic-structure model, docs/topic-structure.md §4: one-layer, one-head attention over a bag of words, with
switches.

For (corrupted) one-hot inputs x̃_j:
    h_j = E x̃_j;   s_ij = (W^Q h_i)ᵀ(W^K h_j)/√d_head + key_bias_j;   α_ij = softmax_j(s_ij);
    out_i = Σ_h W^O_h Σ_j α_ij (W^V_h h_j + b^V_h);   logits_i = W^U out_i (+ b^U)
No positions. Switches add a residual stream, post-attention LayerNorm, a GELU FFN, more layers and heads.
Weights follow the maths with TransformerLens shapes: W_E [n_ids, d_model], W_Q/W_K/W_V [n_heads, d_model, d_head],
W_O [n_heads, d_head, d_model], W_U [d_model, n_ids]. "Uniform" attention is W^Q = W^K = 0 held fixed: it is
computed as the key-weighted mean of the inputs, once per document, since every query then sees the same mixture.

A sequence of length 1 stands for a sequence whose positions are all equal (what uniform attention without a
residual produces); attention over it returns its value, whatever the key mask, which is exact.

Layer 0 reads token ids, so the values it mixes are rows of the small V × d_head table W_E·W^V. It mixes them by
the cheapest of three exact ways for the shapes at hand (``Attention.mixing``): a V-sized histogram of the attention
over ids times that table (small vocabularies), the table's rows gathered at the keys' ids and weighted (large
vocabularies, where the histogram would cost V·d_head per query), or the inputs themselves, then W^V. Frozen one-hot
embeddings (W_E = I) and an identity output (W^O = I) are never multiplied by: at V = 4,000 those products alone were
V³ and B·L·V² multiply-adds per step.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from toyformer.topic.config import ModelConfig

GATHER = 16  # a gathered element of a large table, priced in multiply-adds (2 CPU cores: ~1 ns against ~0.03 ns)
KEPT = 2**26  # the most entries (H·V²) of a query-key table kept for a probe's forward passes: 256 MB

GROUP_OF = {
    "W_E": "embedding",
    "type_vector": "embedding",
    "ln_embed": "norm",
    "W_Q": "query",
    "W_K": "key",
    "W_V": "value",
    "b_V": "value",
    "W_O": "output",
    "b_O": "output",
    "W_U": "decoder",
    "b_U": "decoder",
    "ln": "norm",
    "ffn": "ffn",
}


def param_group(name: str) -> str:
    """The freeze/probe group of a parameter name ('blocks.0.attn.W_V' → 'value')."""
    for part in reversed(name.split(".")):
        if part in GROUP_OF:
            return GROUP_OF[part]
    raise KeyError(name)


class Initializer:
    """Fills weights by preset name from one seeded generator (docs/topic-structure.md §4: default, BERT, small, zero,
    identity, …)."""

    def __init__(self, cfg: ModelConfig, gen: torch.Generator, topic_block: torch.Tensor | None):
        self.cfg, self.gen, self.topic_block = cfg, gen, topic_block

    def __call__(self, shape: tuple[int, ...], how: str, fan_in: int) -> torch.Tensor:
        if how == "default":  # PyTorch's nn.Linear default, as in the official code
            bound = 1.0 / math.sqrt(fan_in)
            return (torch.rand(shape, generator=self.gen) * 2 - 1) * bound
        if how == "bert":
            return torch.randn(shape, generator=self.gen) * 0.02
        if how == "small":
            w = torch.randn(shape, generator=self.gen) * self.cfg.init_scale
            return w if self.cfg.init_centered else w.abs()
        if how == "zero":
            return torch.zeros(shape)
        if how == "identity":
            return torch.eye(shape[-1]).expand(shape).clone()
        if how == "topic_block":
            return self.topic_block.float().expand(shape).clone()
        raise ValueError(how)


def distinct_keys(ids: torch.Tensor, key_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A document's keys with one id and one bias add one term to every softmax: where every key's bias is 0 or
    −∞ (an MLM batch), each document's distinct ids among its keys (B, K), padded, and the log of their counts as
    their bias (−∞ for the padding); None where that would not halve the keys."""
    valid = torch.isfinite(key_bias)
    if not bool((key_bias.masked_fill(~valid, 0.0) == 0).all()):
        return None
    keys, counts = id_counts(ids.masked_fill(~valid, -1))
    if 2 * keys.shape[1] > ids.shape[1]:
        return None
    return keys.clamp_min(0), counts.log().to(key_bias.dtype).masked_fill(keys < 0, -torch.inf)


def id_ranks(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row of ``ids`` (B, Lq) sorted, the sorting order, and each sorted entry's rank among its row's ids."""
    ordered, order = ids.sort(dim=1)
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    return ordered, order, new.cumsum(1) - 1


def id_counts(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's distinct values of ``ids`` (B, L) ≥ −1, padded with −1 to the most in any row, and how often each
    occurs (float64; 0 for the padding)."""
    ordered, _, rank = id_ranks(ids)
    width = int(rank[:, -1].max()) + 1
    distinct = ordered.new_full((len(ids), width), -1).scatter_(1, rank, ordered)
    counts = torch.zeros(len(ids), width, dtype=torch.float64, device=ids.device)
    return distinct, counts.scatter_add_(1, rank, torch.ones_like(rank, dtype=torch.float64))


def distinct_ids(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A document's queries with one id have one attention row (the model has no positions): the distinct ids of
    each row of ``ids`` (B, Lq), padded to the longest row's count, and each query's place among them; ``ids`` and
    None where that would not halve the rows (MLM queries: about 19 per document of 125 words, mostly [MASK])."""
    ordered, order, rank = id_ranks(ids)
    width = int(rank[:, -1].max()) + 1
    if 2 * width > ids.shape[1]:
        return ids, None
    distinct = ordered.new_zeros(len(ids), width).scatter_(1, rank, ordered)  # padding: id 0, computed, never read
    return distinct, torch.empty_like(rank).scatter_(1, order, rank)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, d_model: int, d_head: int, init: Initializer):
        super().__init__()
        h = cfg.n_heads
        self.uniform = cfg.attention == "uniform"
        self.d_head = d_head
        if not self.uniform:
            self.W_Q = nn.Parameter(init((h, d_model, d_head), cfg.qk_init, d_model))
            self.W_K = nn.Parameter(init((h, d_model, d_head), cfg.qk_init, d_model))
        self.W_V = nn.Parameter(init((h, d_model, d_head), cfg.value_init, d_model))
        self.b_V = nn.Parameter(torch.zeros(h, d_head), requires_grad=cfg.value_bias)
        self.identity_output = cfg.output == "identity"
        if self.identity_output:
            self.register_buffer("W_O", torch.eye(d_model).reshape(h, d_head, d_model))
        else:
            self.W_O = nn.Parameter(init((h, d_head, d_model), cfg.output_init, h * d_head))
        self.identity_table = False  # set by the model: layer 0's embedding table is a frozen identity
        self._distinct: tuple | None = None  # see distinct_values
        self.unchanged: dict | None = None  # tables kept without checks while weights cannot change (see unchanged)

    def mixing(self, table: torch.Tensor | None, length: int, queries: int, rows: int | None = None) -> str:
        """How layer 0 mixes its values for ``queries`` queries over ``length`` keys: "histogram" (attention scattered
        onto the ``rows`` distinct rows of W_E·W^V, default one per id, times those rows), "gather" (W_E·W^V's rows at
        the keys' ids, weighted) or "inputs" (the mixed inputs, then W^V; the only way without an embedding table).
        The cheapest by multiply-adds per query and head, a gathered element priced as four."""
        if table is None or length == 1:
            return "inputs"
        (v, d), e = table.shape, self.d_head
        costs = {
            "histogram": length + (rows or v) * e,
            "gather": length * e + 4 * length * e / queries,
            "inputs": length * d + d * e + 4 * length * d / queries,
        }
        return min(costs, key=costs.get)

    def scoring(self, vocab: int, queries: int, keys: int, pairs: int, kept: bool = False) -> str:
        """How layer 0 scores ``queries`` query rows against ``keys`` key rows in ``pairs`` (query, key) pairs, per
        head: "pairs" (the V × V table (W_E W^Q)(W_E W^K)ᵀ read at each pair's two ids) or "vectors" (W_E W^Q and
        W_E W^K gathered at the ids, then multiplied). The cheapest by multiply-adds, a gathered element priced as
        ``GATHER``: at V = 100 the pairs of long documents come from the table; at V = 1,000 a training batch of 40
        multiplies vectors. A ``kept`` table (``TopicTransformer.unchanged``) is made once for the many forward
        passes of a probe, and costs nothing per pass."""
        e = self.d_head
        table = 0 if kept else vocab * vocab * e
        costs = {"pairs": table + GATHER * pairs, "vectors": GATHER * (queries + keys) * e + pairs * e}
        return min(costs, key=costs.get)

    def distinct_values(self, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """W_E·W^V's distinct rows (H, C, d_head) and each id's row (V,), where no gradient flows into either (regime
        C's one-hot W_E and topic-block W^V: T + 1 distinct rows of V, the specials' zero row among them); None
        elsewhere, and inside a stacked ensemble's vmap (each member's own W^V). Found once and kept while W^V and
        W_E equal the copies they were found from (checked exactly, each call: one pass over them)."""
        if self.W_V.requires_grad or table.requires_grad or not isinstance(self.W_V, nn.Parameter):
            return None
        if self.unchanged is None:
            return self._distinct_rows(table)
        if "values" not in self.unchanged:
            self.unchanged["values"] = self._distinct_rows(table)
        return self.unchanged["values"]

    def _distinct_rows(self, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._distinct is not None:
            (w_v, w_e), found = self._distinct
            alike = all(a.shape == b.shape and a.device == b.device for a, b in ((w_v, self.W_V), (w_e, table)))
            if alike and torch.equal(w_v, self.W_V) and torch.equal(w_e, table):
                return found
        values = self.through(table, self.W_V)  # (H, V, d_head)
        rows, inverse = torch.unique(values.transpose(0, 1).flatten(1), dim=0, return_inverse=True)
        found = (rows.unflatten(1, values.shape[::2]).transpose(0, 1).contiguous(), inverse)
        self._distinct = ((self.W_V.detach().clone(), table.detach().clone()), found)
        return found

    def keeps(self, table: torch.Tensor) -> bool:
        """Whether the query-key table is kept for the rest of an ``unchanged`` block (no gradients, at most KEPT)."""
        return self.unchanged is not None and not torch.is_grad_enabled() and len(self.W_Q) * len(table) ** 2 <= KEPT

    def query_key_table(self, table: torch.Tensor) -> torch.Tensor:
        """(H, V, V): every id pair's score before the key bias, (W_E W^Q)(W_E W^K)ᵀ/√d_head per head."""
        if self.keeps(table) and "qk" in self.unchanged:
            return self.unchanged["qk"]
        q = self.through(table, self.W_Q) / math.sqrt(self.d_head)  # (H, V, d_head)
        table_qk = torch.einsum("hve,hwe->hvw", q, self.through(table, self.W_K))
        if self.keeps(table):
            self.unchanged["qk"] = table_qk
        return table_qk

    def queries(self, length: int, query_index: torch.Tensor | None) -> int:
        """The query rows attention computes: one for uniform attention (every query alike), else those asked for."""
        if self.uniform:
            return 1
        return length if query_index is None or length == 1 else query_index.shape[1]

    def through(self, table: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """W_E·W per head, (H, V, d_head) (W itself where W_E is a frozen identity)."""
        if self.identity_table:
            return weight
        return torch.einsum("vd,hde->hve", table, weight)

    def project(self, x: torch.Tensor, weight: torch.Tensor, table: torch.Tensor | None, ids) -> torch.Tensor:
        """x·W per head, (B, H, L, d_head). On the embedding layer x = W_E[ids], so it is a gather from the small
        table W_E·W (V × H × d_head) instead of a B·L·d·d_head product."""
        if table is not None:
            return (
                F.embedding(ids, self.through(table, weight).transpose(0, 1).flatten(1))
                .unflatten(-1, weight.shape[::2])
                .transpose(1, 2)
            )
        return torch.einsum("bld,hde->bhle", x, weight)

    def pattern(self, xq, x, key_bias, table=None, ids=None, qids=None) -> torch.Tensor:
        """α, (B, H, Lq, L): Lq = 1 for uniform attention (the same row for every query)."""
        if self.uniform:
            return torch.softmax(key_bias, dim=-1)[:, None, None, :].expand(-1, self.W_V.shape[0], -1, -1)
        pairs = None if table is None else qids.numel() * ids.shape[1]
        if pairs and self.scoring(len(table), qids.numel(), ids.numel(), pairs, self.keeps(table)) == "pairs":
            table_qk = self.query_key_table(table)
            pair = (qids * len(table))[:, :, None] + ids[:, None, :]  # (B, Lq, L): the flat (query id, key id)
            scores = table_qk.flatten(1).index_select(1, pair.flatten()).unflatten(1, pair.shape).transpose(0, 1)
        else:
            q = self.project(xq, self.W_Q, table, qids) / math.sqrt(self.d_head)  # (B, H, Lq, d_head)
            k = self.project(x, self.W_K, table, ids)  # (B, H, L, d_head)
            scores = q @ k.transpose(-1, -2)
        return torch.softmax(scores + key_bias[:, None, None, :], dim=-1)

    def forward(
        self,
        x: torch.Tensor,
        key_bias: torch.Tensor,
        query_index: torch.Tensor | None = None,
        table: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
        keep: bool = True,
    ):
        """x: (B, L, d_model); query_index: (B, Lq) positions whose outputs are wanted (default: all);
        table, ids: the embedding table and the token ids when x = table[ids] (the fast path of layer 0); x may
        then be None where ``mixing`` says it is not read. ``keep``: return the pattern (else None, and the keys
        may be taken once per id)."""
        length = ids.shape[1] if x is None else x.shape[1]
        if length == 1:
            key_bias, table = torch.zeros_like(key_bias[:, :1]), None  # all keys equal: one key with weight one
        xq, qids = x, ids
        if query_index is not None and length > 1:
            xq = None if x is None else x.gather(1, query_index[..., None].expand(-1, -1, x.shape[-1]))
            qids = None if ids is None else ids.gather(1, query_index)
        queries, back = self.queries(length, query_index), None
        if table is not None and length > 1 and not self.uniform and isinstance(self.W_Q, nn.Parameter):
            qids, back = distinct_ids(qids)  # the queries' rows once per id of a document (not inside vmap)
            queries = qids.shape[1]
            keys = None if keep else distinct_keys(ids, key_bias)
            if keys is not None:  # and the keys once per id, weighted by their count (the pattern is not kept)
                ids, key_bias = keys
                length, x = ids.shape[1], None if x is None else F.embedding(ids, table)
        pattern = self.pattern(xq, x, key_bias, table, ids, qids)
        distinct = None if table is None or length == 1 else self.distinct_values(table)
        rows = None if distinct is None else distinct[0].shape[1]
        mixing = self.mixing(table, length, queries, rows)
        if mixing == "histogram" and distinct is not None:  # α scattered onto the C distinct value rows
            values, row_of = distinct
            bins = pattern.new_zeros(*pattern.shape[:-1], rows)
            z = bins.scatter_add(-1, row_of[ids][:, None, None, :].expand_as(pattern), pattern) @ values[None]
        elif mixing == "gather":  # the values W_E·W^V at each key's id, weighted: B·L·d_head per query and head
            z = pattern @ self.project(None, self.W_V, table, ids)
        elif mixing == "histogram":
            # α·W_E[ids] = (α scattered onto ids)·W_E: a (B, H, Lq, V) histogram, then one small product.
            bins = pattern.new_zeros(*pattern.shape[:-1], table.shape[0])
            bins = bins.scatter_add(-1, ids[:, None, None, :].expand_as(pattern), pattern)
            (v, d), rows = table.shape, bins.shape[0] * bins.shape[2]
            if rows * d * (v + self.d_head) < v * self.d_head * (d + rows):  # ((α·ids)·W_E)·W^V is cheaper
                z = torch.einsum("bhld,hde->bhle", bins @ table, self.W_V)
            else:  # (α·ids)·(W_E·W^V)
                z = bins @ self.through(table, self.W_V)[None]
        else:
            # Mix the inputs first, then project: (α h) W^V costs B·L·d for uniform attention instead of B·L·d².
            z = torch.einsum("bhld,hde->bhle", pattern @ x[:, None], self.W_V)
        if back is not None:  # each query reads its id's row
            docs = torch.arange(len(back), device=back.device)[:, None]
            z = z.transpose(1, 2)[docs, back].transpose(1, 2)
            if keep:
                pattern = pattern.transpose(1, 2)[docs, back].transpose(1, 2)
        pattern = pattern if keep else None
        z = z + self.b_V[None, :, None, :]
        if self.identity_output:  # W^O = I: the heads' outputs side by side
            return z.transpose(1, 2).flatten(2), pattern
        return torch.einsum("bhle,hed->bld", z, self.W_O), pattern


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, d_model: int, d_head: int, init: Initializer):
        super().__init__()
        self.residual = cfg.residual
        self.attn = Attention(cfg, d_model, d_head, init)
        self.ln = nn.ModuleList([nn.LayerNorm(d_model) for _ in range(2)]) if cfg.layer_norm else None
        d_ffn = cfg.d_ffn or 4 * d_model
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ffn), nn.GELU(), nn.Linear(d_ffn, d_model)) if cfg.ffn else None
        if self.ffn is not None:  # nn.Linear's own init, drawn from the run's init generator, not the global RNG
            with torch.no_grad():
                for layer in (self.ffn[0], self.ffn[2]):
                    fan_in = layer.in_features
                    layer.weight.copy_(init(tuple(layer.weight.shape), "default", fan_in))
                    layer.bias.copy_(init(tuple(layer.bias.shape), "default", fan_in))

    def _add(self, x: torch.Tensor, update: torch.Tensor, norm: int) -> torch.Tensor:
        x = x + update if self.residual else update
        return self.ln[norm](x) if self.ln is not None else x

    def forward(
        self, x, key_bias, query_index=None, table=None, ids=None, keep=True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        update, pattern = self.attn(x, key_bias, query_index, table, ids, keep)
        if self.residual and query_index is not None and x.shape[1] > 1:
            x = x.gather(1, query_index[..., None].expand(-1, -1, x.shape[-1]))
        x = self._add(x, update, 0)
        if self.ffn is not None:
            x = self._add(x, self.ffn(x), 1)
        return x, pattern


class TopicTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig, n_ids: int, gen: torch.Generator, topic_block: torch.Tensor | None = None):
        super().__init__()
        d_model = cfg.d_model or n_ids
        d_head = cfg.d_head or d_model // cfg.n_heads
        init = Initializer(cfg, gen, topic_block)
        emb = torch.eye(n_ids) if cfg.embedding == "onehot" else init((n_ids, d_model), cfg.embedding_init, n_ids)
        self.W_E = nn.Parameter(emb)
        if cfg.embedding_norm:  # parity with the official BERT embedding: + token-type vector, then LayerNorm
            self.type_vector = nn.Parameter(torch.zeros(d_model))
            self.ln_embed = nn.LayerNorm(d_model)
        self.blocks = nn.ModuleList([Block(cfg, d_model, d_head, init) for _ in range(cfg.n_layers)])
        frozen_onehot = cfg.embedding == "onehot" and "embedding" in cfg.freeze and not cfg.embedding_norm
        self.blocks[0].attn.identity_table = frozen_onehot  # W_E = I stays I
        self.decoder = cfg.decoder
        if cfg.decoder == "trained":
            self.W_U = nn.Parameter(init((d_model, n_ids), "default", d_model))
        self.b_U = nn.Parameter(torch.zeros(n_ids), requires_grad=cfg.decoder_bias)
        for name, p in self.named_parameters():
            if param_group(name) in cfg.freeze:
                p.requires_grad_(False)

    @contextlib.contextmanager
    def unchanged(self):
        """A block in which the weights do not change (a probe reading the model, without gradients): layer 0's
        tables are made once for all its forward passes: the distinct value rows of frozen weights, not checked
        against them at every pass (at V = 4,000 two passes over 16·10⁶ entries, more than a small dev-set
        forward pass), and the query-key table of every id pair (at V = 1,000 and documents of 500–1,000 words
        the dev loss's 250 parts otherwise multiply 150·10⁹ query-key products)."""
        attn = self.blocks[0].attn
        attn.unchanged = {}
        try:
            yield self
        finally:
            attn.unchanged = None

    @property
    def position_independent(self) -> bool:
        """True when every position of a document gets the same output (uniform attention, no residual)."""
        return all(b.attn.uniform and not b.residual for b in self.blocks)

    def embedding_table(self) -> torch.Tensor:
        """(n_ids, d_model): the input vector of every id (W_E, or LN(W_E + type vector) in parity mode)."""
        if hasattr(self, "ln_embed"):
            return self.ln_embed(self.W_E + self.type_vector)
        return self.W_E

    def unembed(self) -> torch.Tensor:
        """W_U as a (d_model, n_ids) matrix, whatever the decoder switch."""
        if self.decoder == "trained":
            return self.W_U
        if self.decoder == "tied":
            return self.W_E.T
        return torch.eye(self.W_E.shape[1], device=self.W_E.device)

    def forward(
        self,
        ids: torch.Tensor,
        key_bias: torch.Tensor,
        query_index: torch.Tensor | None = None,
        keep_patterns: bool = True,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """logits (B, Lq, n_ids) and each layer's pattern (B, H, Lq, L) (with ``keep_patterns``; else None: the
        loss reads none).

        ids, key_bias: (B, L); query_index: (B, Lq) the positions whose logits are wanted (default all, Lq = L).
        Lq is 1 when every position has the same output (uniform attention without a residual).
        """
        table = self.embedding_table()
        first = self.blocks[0]
        queries = first.attn.queries(ids.shape[1], query_index if len(self.blocks) == 1 else None)
        reads_inputs = first.residual or first.attn.mixing(table, ids.shape[1], queries) == "inputs"
        x = F.embedding(ids, table) if reads_inputs else None  # (B, L, d_model)
        patterns = []
        for k, block in enumerate(self.blocks):
            last = k == len(self.blocks) - 1
            x, pattern = block(
                x, key_bias, query_index if last else None, table if k == 0 else None, ids, keep_patterns
            )
            patterns.append(pattern)
        logits = x if self.decoder == "identity" else x @ self.unembed()
        return logits + self.b_U, patterns
