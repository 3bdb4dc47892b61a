"""Plans: what TF(M, H, d, D) reads of a set of chains, computed once per dataset, by the cheapest of four exact paths.

Head h's output at position i depends only on the window (x_i, x_{i−1}, …, x_{i−span}): its tokens, and which of them
lie before the start. A fixed dataset has few distinct windows at small d (d = 3, span 5: at most 4^5·3 key windows;
E5's 900,000 positions have about 1,100), so the copier runs on the distinct windows only. The paths:

- ``grouped`` (last-token targets): the kernel is computed once per distinct (query window, key class) pair (a key
  class: the key window read only at the heads' offsets, so without the key's own token where no band holds offset 0),
  and the classifier's softmax runs over each sequence's distinct key windows weighted by their counts (on the CPU as
  one sparse matrix, ``GroupSum``). Head h's inner products come from a table over the distinct contents of its band
  where that table is small against the number of pairs, else from one dot product per pair (a "direct" head: at
  large d, or a long band, the table would outgrow the pairs). Where the heads are L2-normalised copies of one-hot
  tokens (the simplified variant), an inner product depends only on which tokens of the two windows are equal, not
  on the tokens: pairs with one pattern of equal tokens are one pair (d = 10, the grid-base chains: 87,000 patterns
  for 777,000 window pairs, and their number does not grow with d), and a head may take one inner product per
  pattern of its own band (a "coupled" head: a few dozen at the code layout's three offsets).
- ``table``: K read from a dense (query window × key window) table (both target modes; it must fit TABLE_LIMIT).
- ``windows``: the copier on the distinct windows, the kernel per (target, key) position.
- ``positions``: every position its own window, nothing shared: the plain vectorised banded model (``model.fast =
  false``), the reference the others are timed against.

``make_plan`` estimates each path's work (``path_costs``) and takes the cheapest unless one is forced
(``model.path``); the plan records the choice and the estimates. ``toyformer.induction.model.reference_predict`` is
the literal model that every path is tested against.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from toyformer.config import ConfigError

TABLE_LIMIT = 1 << 22  # largest (query window × key window) table of the table path
PATHS = ("grouped", "table", "windows", "positions")
# The cost model's prices, in element operations of a streamed pass (calibrated on 2 CPU cores against the grid-base
# step at d = 3..10, H = 2..6 and M = 3..8): a multiply-add inside a matrix product, and an element gathered by index
# (with its gradient added back by index).
MATMUL = 1 / 8
GATHER = 4


@dataclass
class Groups:
    """Last-token targets: the keys of each sequence grouped by distinct window, or with ``patterns`` by key token and
    pattern of equal tokens (E groups in all)."""

    seq: torch.Tensor  # (E,) the sequence of each group
    slot: torch.Tensor  # (E,) seq·d + the key's token (offset 0 of the window)
    count: torch.Tensor  # (E,) how many keys of the sequence have this window
    log_count: torch.Tensor  # (E,) its log
    pair: torch.Tensor  # (E,) the group's (query window, key window class) pair (or pattern), among the P pairs
    queries: torch.Tensor  # the query windows the kernel reads: one per distinct band content of some head
    keys: torch.Tensor  # the same for key windows
    query_rep: list[torch.Tensor]  # per head: for each distinct content of its band, a row of ``queries`` with it
    # (a coupled head: the query of each couple)
    key_rep: list[torch.Tensor]  # per head: the same in ``keys``
    head_pair: (
        torch.Tensor
    )  # (H, P) head h's entry for each pair: in its (query rep × key rep) table, q·key_contents[h]
    # + k with q, k the pair's query and key contents (a direct head reads the same code as two indices)
    direct: list[bool]  # per head: one dot product per pair instead of a table
    key_contents: list[int]  # per head: the distinct contents of its band among the key windows (coupled: couples)
    patterns: bool = False  # pairs are patterns of equal tokens (one representative pair each)
    coupled: list[bool] | None = None  # per head (with patterns): one inner product per couple, i.e. per pattern of
    # its own band, of the windows query_rep[h][i] and key_rep[h][i]; the pair's entry is its couple
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
    path: str = "positions"  # the path taken (``PATHS``)
    costs: dict[str, float] | None = None  # each path's estimated work per step, where the choice was made by cost


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
    path: str = "auto",
    dtype: torch.dtype = torch.float32,
    sums: bool = False,
    patterns: bool = False,
) -> Plan:
    """The plan of sequences ``tokens`` (B, L+1) (inputs x_1..x_L and the token(s) to predict) for a model whose
    heads read the offsets ``band`` (H, span+1) and compute in ``dtype``, by ``path`` (one of ``PATHS``, or "auto":
    the cheapest by ``path_costs``); ``sums``: with the groups' sparse sum (worth its construction for a plan read
    many times, on the CPU); ``patterns``: the model's inner products depend only on which tokens of two windows are
    equal (``GIHModelConfig.equality_kernel``), so the grouped path computes the kernel once per pattern of equal
    tokens rather than once per (query window, key class) pair."""
    if path not in ("auto", *PATHS):
        raise ConfigError(f"model.path {path!r}: use auto or one of {', '.join(PATHS)}")
    if path == "grouped" and targets != "last":
        raise ConfigError("model.path = 'grouped' needs data.targets = 'last'; use auto, table or windows")
    span = band.shape[1] - 1
    length = tokens.shape[1] - 1
    inputs = tokens[:, :length]
    taus = scored_positions(length, targets).to(tokens.device)
    keys = key_windows(inputs, span, d)  # (B, L, span+1)
    # The query at τ sees the placeholder at offset 0 and x_{τ−o} at offset o: the key window of τ−1, shifted.
    before = key_windows(tokens, span, d, taus - 1)[..., :span]  # (B, T, span)
    queries = torch.cat([torch.full_like(before[..., :1], d + 1), before], dim=-1)
    costs, groups = None, None
    if path == "positions":  # every window its own entry: no sharing
        key_set, query_set = keys.reshape(-1, span + 1), queries.reshape(-1, span + 1)
        key_index = torch.arange(len(key_set), device=tokens.device).view(keys.shape[:2])
        query_index = torch.arange(len(query_set), device=tokens.device).view(queries.shape[:2])
    else:
        key_set, key_index = _distinct(keys, d + 2)
        query_set, query_index = _distinct(queries, d + 2)
        if targets == "last" and path in ("auto", "grouped"):  # its cost is known once its pairs are
            groups = _groups(key_index, query_index[:, 0], key_set, query_set, band, d, dtype, patterns)
        costs = path_costs(tuple(tokens.shape), band, d, len(key_set), len(query_set), targets, groups)
        if path == "auto":
            path = min(costs, key=costs.get)
        elif path == "table" and len(key_set) * len(query_set) > TABLE_LIMIT:
            raise ConfigError(
                f"model.path = 'table': these chains have {len(query_set):,} × {len(key_set):,} (query × key) "
                f"windows, more than the table's {TABLE_LIMIT:,} entries; use auto or windows"
            )
    visible = None
    if targets == "all":
        visible = torch.arange(length, device=tokens.device)[None, :] < taus[:, None]
    if path != "grouped":
        groups = None
    elif sums:
        groups.sum = GroupSum(groups.slot, groups.pair, groups.count, len(tokens) * d, groups.head_pair.shape[1])
    return Plan(
        keys=key_set,
        queries=query_set,
        key_index=key_index,
        query_index=query_index,
        onehot=F.one_hot(inputs, d).to(dtype),
        labels=tokens[:, taus],
        visible=visible,
        table=path == "table",
        groups=groups,
        path=path,
        costs=costs,
    )


def describe_plan(plan: Plan) -> dict:
    """The path a plan took and why, for a run's meta.json: the path, each path's estimated work (where the choice was
    made by cost), the distinct windows, and for the grouped path its pairs, groups and direct heads."""
    out = {"path": plan.path, "key_windows": len(plan.keys), "query_windows": len(plan.queries)}
    if plan.costs is not None:
        out["estimated_work"] = {k: round(v) for k, v in sorted(plan.costs.items(), key=lambda kv: kv[1])}
    if plan.groups is not None:
        g = plan.groups
        out |= {
            "pairs": g.head_pair.shape[1],
            "groups": len(g.seq),
            "direct_heads": [h + 1 for h, x in enumerate(g.direct) if x],
            "kernel_by": "pattern of equal tokens" if g.patterns else "window pair",
        }
    return out


def path_costs(
    shape: tuple[int, int],
    band: torch.Tensor,
    d: int,
    keys: int,
    queries: int,
    targets: str,
    groups: Groups | None = None,
) -> dict[str, float]:
    """Each path's estimated work per step (element operations of a streamed pass, forward and back; ``MATMUL`` and
    ``GATHER`` price the others), for B chains of L+1 tokens (``shape``) over d tokens with ``keys`` and ``queries``
    distinct windows, heads reading ``band``; the grouped path from its ``groups``. A path that cannot run (the table
    beyond TABLE_LIMIT, grouping with all-position targets or without its groups) is left out."""
    heads = band.shape[0]
    batch, length = shape[0], shape[1] - 1
    scored = batch * (length if targets == "last" else length * (length + 1) / 2)  # (target, visible key) entries
    copier = copier_cost(band)
    per_key = heads * d * GATHER + heads  # per (query, key) position: its heads' outputs gathered, the kernel
    classify = scored * (d + 3)  # the softmax over keys and the sum of the keys' tokens
    windows = batch * length + batch * (1 if targets == "last" else length)  # key and query positions
    costs = {
        "positions": windows * copier + scored * per_key + classify,
        "windows": (keys + queries) * copier + scored * per_key + classify,
    }
    if keys * queries <= TABLE_LIMIT:
        table = keys * queries * heads * (1 + 3 * d * MATMUL)
        costs["table"] = (keys + queries) * copier + table + scored * GATHER + classify
    if groups is not None:
        pairs, n_groups = groups.head_pair.shape[1], len(groups.seq)
        tables = sum(
            couple_cost(len(q), pairs, d, 0.0) if coupled else head_cost(len(q), len(k), pairs, d, direct)
            for q, k, direct, coupled in zip(
                groups.query_rep, groups.key_rep, groups.direct, groups.coupled or [False] * heads, strict=True
            )
        )
        needed = len(groups.queries) + len(groups.keys)
        costs["grouped"] = needed * copier + tables + pairs * (heads * GATHER + 4) + n_groups * GATHER + batch * d
    return costs


def _groups(
    key_index: torch.Tensor,
    query_index: torch.Tensor,
    key_set: torch.Tensor,
    query_set: torch.Tensor,
    band: torch.Tensor,
    d: int,
    dtype: torch.dtype,
    patterns: bool,
) -> Groups:
    n_keys = len(key_set)
    slot = torch.arange(len(key_index), device=key_index.device)[:, None] * n_keys + key_index
    distinct, count = torch.unique(slot, return_counts=True)
    seq, key = distinct // n_keys, distinct % n_keys
    # The kernel reads a key window only at the heads' offsets: windows that differ elsewhere (the key's own token,
    # outside every band) share their pairs' kernel values.
    used = band.any(0)
    classes, key_class = _distinct(key_set[:, used], d + 2)
    class_rep = _first(key_class, len(classes))  # a key window of each class
    pairs, pair = torch.unique(query_index[seq] * len(classes) + key_class[key], return_inverse=True)
    slot, count = seq * d + key_set[key, 0], count.to(dtype)
    query_of, key_of = pairs // len(classes), class_rep[pairs % len(classes)]  # each pair's windows
    if patterns:  # pairs with one pattern of equal tokens share their kernel: a representative pair for each
        pattern, kind = equality_patterns(query_set[query_of][:, used], key_set[key_of][:, used], d)
        first = _first(kind, len(pattern))
        query_of, key_of, pair = query_of[first], key_of[first], kind[pair]
        # a sequence's groups with one key token and one pattern are one group
        merged, which = torch.unique(slot * len(pattern) + pair, return_inverse=True)
        count = count.new_zeros(len(merged)).index_add_(0, which, count)
        slot, pair = merged // len(pattern), merged % len(pattern)
        seq = slot // d
    window = copier_cost(band)
    query_rep, key_rep, head_pair, direct, coupled, key_contents = [], [], [], [], [], []
    for h in range(band.shape[0]):  # a head reads only its band: far fewer distinct contents than windows
        q_content, q_of = _distinct(query_set[:, band[h]], d + 2)
        k_content, k_of = _distinct(key_set[:, band[h]], d + 2)
        direct.append(direct_head(len(q_content), len(k_content), len(query_of), d))
        contents = head_cost(len(q_content), len(k_content), len(query_of), d, direct[-1])
        if patterns:  # or one inner product per pattern of its own band, for a couple of windows with it
            own, entry = equality_patterns(query_set[query_of][:, band[h]], key_set[key_of][:, band[h]], d)
            cost = couple_cost(len(own), len(query_of), d, window)
            if cost < contents + (len(q_content) + len(k_content)) * window:
                couple = _first(entry, len(own))
                query_rep.append(query_of[couple])
                key_rep.append(key_of[couple])
                head_pair.append(entry)
                direct[-1] = False
                coupled.append(True)
                key_contents.append(len(own))
                continue
        query_rep.append(_first(q_of, len(q_content)))
        key_rep.append(_first(k_of, len(k_content)))
        head_pair.append(q_of[query_of] * len(k_content) + k_of[key_of])
        coupled.append(False)
        key_contents.append(len(k_content))
    # the copier runs only on the windows some head's table reads (a few dozen, of up to thousands)
    query_need, key_need = torch.unique(torch.cat(query_rep)), torch.unique(torch.cat(key_rep))
    return Groups(
        seq=seq,
        slot=slot,
        count=count,
        log_count=count.double().log().to(dtype),
        pair=pair,
        queries=query_set[query_need],
        keys=key_set[key_need],
        query_rep=[torch.searchsorted(query_need, r) for r in query_rep],
        key_rep=[torch.searchsorted(key_need, r) for r in key_rep],
        head_pair=torch.stack(head_pair),
        direct=direct,
        key_contents=key_contents,
        patterns=patterns,
        coupled=coupled,
    )


def equality_patterns(left: torch.Tensor, right: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct patterns of equal tokens among rows of windows ``left`` and ``right`` (N, n) side by side, and
    each row's pattern: each token below d replaced by the column of its first occurrence in the row, d and d+1
    (before the start, the placeholder) kept as labels of their own. Two rows with one pattern are the same tokens
    renamed."""
    rows = torch.cat([left, right], 1)
    width = rows.shape[1]
    canonical = torch.empty_like(rows)
    step = max(1, (1 << 24) // width**2)  # rows compared at once: a (step, width, width) comparison
    for start in range(0, len(rows), step):
        r = rows[start : start + step]
        first = (r[:, :, None] == r[:, None, :]).to(torch.uint8).argmax(-1)  # argmax: the first maximum's index
        canonical[start : start + step] = torch.where(r >= d, width + r - d, first)
    return _distinct(canonical, width + 2)


def head_cost(query_contents: int, key_contents: int, pairs: int, d: int, direct: bool) -> float:
    """A grouped head's work: its (query × key content) table (a matrix product, forward and back, and the table's
    gradient) or, ``direct``, one dot product per pair (two gathered d-vectors)."""
    if direct:
        return pairs * d * 2 * GATHER
    return query_contents * key_contents * (1 + 3 * d * MATMUL)


def copier_cost(band: torch.Tensor) -> float:
    """The copier's work per window: copy weights, softmax, the weighted copy, for every head."""
    return band.shape[0] * int(band.sum(1).max()) * 4


def couple_cost(couples: int, pairs: int, d: int, window: float) -> float:
    """A coupled head's work: one dot product per couple (the copier on its two windows, at ``window`` each), one
    gathered value per pair."""
    return couples * (d * 2 * GATHER + 2 * window) + pairs * GATHER


def direct_head(query_contents: int, key_contents: int, pairs: int, d: int) -> bool:
    """Whether a grouped head takes one dot product per pair rather than reading its content table."""
    cost = [head_cost(query_contents, key_contents, pairs, d, direct) for direct in (False, True)]
    return cost[1] < cost[0]


def _first(inverse: torch.Tensor, n: int) -> torch.Tensor:
    """For each of ``n`` classes, one member index (the last one written wins; any member is fine)."""
    return torch.zeros(n, dtype=torch.long, device=inverse.device).scatter_(
        0, inverse, torch.arange(len(inverse), device=inverse.device)
    )
