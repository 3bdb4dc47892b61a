"""Plans: what TF(M, H, d, D) reads of a set of chains, computed once per dataset.

Fast path. Head h's output at position i depends only on the window (x_i, x_{i−1}, …, x_{i−span}): its tokens, and
which of them lie before the start. A fixed dataset has few distinct windows (d = 3, span 5: at most 4^5·3 key
windows; E5's 900,000 positions have about 1,100), so the copier runs on the distinct windows only. With last-token
targets the kernel is computed once per distinct (query window, key class) pair (a key class: the key window read
only at the heads' offsets, so without the key's own token where no band holds offset 0), from per-head tables over
the distinct contents of each head's band, and the classifier's softmax runs over each sequence's distinct key
windows weighted by their counts (on the CPU as one sparse matrix, ``GroupSum``). The gradient flows back through
these gathers into the small tables. With all-position
targets K is read from a dense (query window × key window) table; where that table would be too large, every
position reads its own window's head outputs. ``toyformer.induction.model.reference_predict`` is the literal model
that the fast path is tested against.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TABLE_LIMIT = 1 << 22  # largest (query window × key window) table of the fast path


@dataclass
class Groups:
    """Last-token targets: the keys of each sequence grouped by distinct window (E groups in all)."""

    seq: torch.Tensor  # (E,) the sequence of each group
    slot: torch.Tensor  # (E,) seq·d + the key's token (offset 0 of the window)
    count: torch.Tensor  # (E,) how many keys of the sequence have this window
    log_count: torch.Tensor  # (E,) its log
    pair: torch.Tensor  # (E,) the group's (query window, key window class) pair, among the P distinct pairs
    queries: torch.Tensor  # the query windows the kernel reads: one per distinct band content of some head
    keys: torch.Tensor  # the same for key windows
    query_rep: list[torch.Tensor]  # per head: for each distinct content of its band, a row of ``queries`` with it
    key_rep: list[torch.Tensor]  # per head: the same in ``keys``
    head_pair: list[torch.Tensor]  # per head, (P,): each pair's entry in the head's (query rep × key rep) table
    sum: GroupSum | None = None  # the groups' sum as a sparse matrix, where the plan was asked for one


@dataclass
class Plan:
    """What the model reads of a set of sequences: distinct windows and, per sequence, where its keys and queries
    are in them. ``flat`` (table mode, whole set) is the precomputed index into the (query × key) table."""

    keys: torch.Tensor  # (n_k, span+1) distinct key windows
    queries: torch.Tensor  # (n_q, span+1) distinct query windows (offset 0 is the placeholder)
    key_index: torch.Tensor  # (B, L) window of each key position
    query_index: torch.Tensor  # (B, T) window of each target's query
    onehot: torch.Tensor  # (B, L, d) the keys' tokens
    labels: torch.Tensor  # (B, T) the targets
    visible: torch.Tensor | None  # (T, L) key i visible from target τ (i < τ); None when every key is
    table: bool
    groups: Groups | None


class GroupSum:
    """The classifier's sum over groups as one sparse matrix: per_token[slot] = Σ_g count_g · t[entry_g] for a
    table t of pair values, C t with C[slot_g, entry_g] = count_g in CSR form, and Cᵀ for the gradient. On the CPU
    this is one pass over the groups each way, where a gather, a product and a scatter take three (and as many
    back); the matrices are built once per plan."""

    def __init__(self, slot: torch.Tensor, entry: torch.Tensor, count: torch.Tensor, rows: int, cols: int):
        with warnings.catch_warnings():  # "sparse CSR support is in beta": it is tested here against the gather
            warnings.simplefilter("ignore", UserWarning)
            coo = torch.sparse_coo_tensor(torch.stack([slot, entry]), count, (rows, cols)).coalesce()
            self.matrix = coo.to_sparse_csr()
            self.transpose = coo.t().coalesce().to_sparse_csr()

    def __call__(self, table: torch.Tensor) -> torch.Tensor:
        return _GroupSum.apply(table, self)


class _GroupSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: torch.Tensor, op: GroupSum) -> torch.Tensor:
        ctx.op = op
        return op.matrix @ table

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.op.transpose @ grad, None


def scored_positions(length: int, targets: str) -> torch.Tensor:
    """0-based positions τ of the scored tokens in a (B, L+1) sequence: L (the paper's x_{L+1}) or 1..L."""
    return torch.tensor([length]) if targets == "last" else torch.arange(1, length + 1)


def key_windows(tokens: torch.Tensor, span: int, d: int, at: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, span+1): window[b, i, o] = tokens[b, a_i − o], or d where a_i − o < 0, for the positions ``at`` (a_i;
    every position by default)."""
    padded = F.pad(tokens, (span, 0), value=d)
    if at is not None:
        return padded[:, at[:, None] + span - torch.arange(span + 1, device=tokens.device)]
    t = tokens.shape[1]  # one shifted slice per offset: a copy of contiguous rows, where flipping a strided view is not
    return torch.stack([padded[:, span - o : span - o + t] for o in range(span + 1)], -1)


def _distinct(windows: torch.Tensor, base: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct rows of (..., span+1) windows and the index of each row among them."""
    flat = windows.reshape(-1, windows.shape[-1])
    if windows.shape[-1] * base.bit_length() <= 62:  # code each window as an integer: a 1-D unique is fast
        code = (flat * base ** torch.arange(flat.shape[1], device=flat.device)).sum(1)  # no integer matmul on CUDA
        codes, inverse = torch.unique(code, return_inverse=True)
        distinct = (codes[:, None] // base ** torch.arange(flat.shape[1], device=flat.device)) % base
    else:
        distinct, inverse = torch.unique(flat, dim=0, return_inverse=True)
    return distinct, inverse.view(windows.shape[:-1])


def make_plan(
    tokens: torch.Tensor,
    band: torch.Tensor,
    d: int,
    targets: str = "last",
    fast: bool = True,
    dtype: torch.dtype = torch.float32,
    sums: bool = False,
) -> Plan:
    """The plan of sequences ``tokens`` (B, L+1) (inputs x_1..x_L and the token(s) to predict) for a model whose
    heads read the offsets ``band`` (H, span+1) and compute in ``dtype``; ``sums``: with the groups' sparse sum
    (worth its construction for a plan read many times, on the CPU)."""
    span = band.shape[1] - 1
    length = tokens.shape[1] - 1
    inputs = tokens[:, :length]
    taus = scored_positions(length, targets).to(tokens.device)
    keys = key_windows(inputs, span, d)  # (B, L, span+1)
    # The query at τ sees the placeholder at offset 0 and x_{τ−o} at offset o: the key window of τ−1, shifted.
    before = key_windows(tokens, span, d, taus - 1)[..., :span]  # (B, T, span)
    queries = torch.cat([torch.full_like(before[..., :1], d + 1), before], dim=-1)
    if fast:
        key_set, key_index = _distinct(keys, d + 2)
        query_set, query_index = _distinct(queries, d + 2)
    else:  # every window its own entry: the per-position path, no sharing
        key_set, query_set = keys.reshape(-1, span + 1), queries.reshape(-1, span + 1)
        key_index = torch.arange(len(key_set), device=tokens.device).view(keys.shape[:2])
        query_index = torch.arange(len(query_set), device=tokens.device).view(queries.shape[:2])
    table = fast and len(key_set) * len(query_set) <= TABLE_LIMIT
    visible = None
    if targets == "all":
        visible = torch.arange(length, device=tokens.device)[None, :] < taus[:, None]
    last = fast and targets == "last"  # the groups read per-head tables, never the dense (query × key) one
    groups = _groups(key_index, query_index[:, 0], key_set, query_set, band, d, dtype) if last else None
    if groups is not None and sums:
        groups.sum = GroupSum(groups.slot, groups.pair, groups.count, len(tokens) * d, int(groups.pair.max()) + 1)
    return Plan(
        keys=key_set,
        queries=query_set,
        key_index=key_index,
        query_index=query_index,
        onehot=F.one_hot(inputs, d).to(dtype),
        labels=tokens[:, taus],
        visible=visible,
        table=table,
        groups=groups,
    )


def _groups(
    key_index: torch.Tensor,
    query_index: torch.Tensor,
    key_set: torch.Tensor,
    query_set: torch.Tensor,
    band: torch.Tensor,
    d: int,
    dtype: torch.dtype,
) -> Groups:
    n_keys = len(key_set)
    slot = torch.arange(len(key_index), device=key_index.device)[:, None] * n_keys + key_index
    distinct, count = torch.unique(slot, return_counts=True)
    seq, key = distinct // n_keys, distinct % n_keys
    # The kernel reads a key window only at the heads' offsets: windows that differ elsewhere (the key's own token,
    # outside every band) share their pairs' kernel values.
    classes, key_class = _distinct(key_set[:, band.any(0)], d + 2)
    class_rep = _first(key_class, len(classes))  # a key window of each class
    pairs, pair = torch.unique(query_index[seq] * len(classes) + key_class[key], return_inverse=True)
    query_rep, key_rep, head_pair = [], [], []
    for h in range(band.shape[0]):  # a head reads only its band: far fewer distinct contents than windows
        q_content, q_of = _distinct(query_set[:, band[h]], d + 2)
        k_content, k_of = _distinct(key_set[:, band[h]], d + 2)
        query_rep.append(_first(q_of, len(q_content)))
        key_rep.append(_first(k_of, len(k_content)))
        head_pair.append(q_of[pairs // len(classes)] * len(k_content) + k_of[class_rep[pairs % len(classes)]])
    # the copier runs only on the windows some head's table reads (a few dozen, of up to thousands)
    query_need, key_need = torch.unique(torch.cat(query_rep)), torch.unique(torch.cat(key_rep))
    return Groups(
        seq=seq,
        slot=seq * d + key_set[key, 0],
        count=count.to(dtype),
        log_count=count.double().log().to(dtype),
        pair=pair,
        queries=query_set[query_need],
        keys=key_set[key_need],
        query_rep=[torch.searchsorted(query_need, r) for r in query_rep],
        key_rep=[torch.searchsorted(key_need, r) for r in key_rep],
        head_pair=head_pair,
    )


def _first(inverse: torch.Tensor, n: int) -> torch.Tensor:
    """For each of ``n`` classes, one member index (the last one written wins; any member is fine)."""
    return torch.zeros(n, dtype=torch.long, device=inverse.device).scatter_(
        0, inverse, torch.arange(len(inverse), device=inverse.device)
    )
