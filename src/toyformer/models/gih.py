"""TF(M, H, d, D), the two-attention-layer model of paper 2 (spec §2), and its full variant.

For one-hot inputs x_1..x_L and an all-zero placeholder at the query position τ (L+1 in the paper):
    copier    u_i^(h) = Σ_j softmax_j(w^(h)[i−j]) x_j over the offsets i−j in head h's window (nothing else);
              û^(h) = u^(h) / (‖u^(h)‖ + ε)  (or a shared LayerNorm)
    selector  K(i, τ) = Σ_{S ⊆ [H], 1 ≤ |S| ≤ D} p_S ∏_{k∈S} ⟨û_τ^(k), û_i^(k)⟩,   p_S = c_S² / Σ_S' c_S'²
    classifier y = Σ_{i<τ} softmax_i(a · K(i, τ)) x_i ∈ Δ_d   (the predicted distribution; no unembedding)
The full variant adds content logits x_iᵀ Q_h K_hᵀ x_j and offset 0 to every head's band, a value-output matrix
OV_h per head and a shared LayerNorm instead of the L2 normalisation.

The selector's tensor-product features are never built: only their kernel is needed, and only subsets with
|S| ≤ D are enumerated. Subsets holding the raw token x_i contribute 0 at the placeholder query, so they are left out.

Fast path. Head h's output at position i depends only on the window (x_i, x_{i−1}, …, x_{i−span}): its tokens, and
which of them lie before the start. A fixed dataset has few distinct windows (d = 3, span 5: at most 4^5·3 key
windows; E5's 900,000 positions have about 1,100), so the copier runs on the distinct windows only. With last-token
targets the kernel is computed once per distinct (query window, key window) pair, from per-head tables over the
distinct contents of each head's band, and the classifier's softmax runs over each sequence's distinct key windows
weighted by their counts. The gradient flows back through these gathers into the small tables. With all-position
targets K is read from a dense (query window × key window) table; where that table would be too large, every
position reads its own window's head outputs. ``reference_predict`` is the literal model (banded attention over
whole sequences, one target at a time) that the fast path is tested against.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from toyformer.config import GIHModelConfig

EPS_L2 = 1e-6
MASKED = -1e9  # finite, so a row without admissible keys gives u = 0 instead of NaN
# The losing c_S decay towards 0 and their shares pass through subnormal floats, where CPU arithmetic is many times
# slower, in every (pair × subset) product of the kernel. A share this small moves no float32 sum of O(1) terms, so it
# is dropped exactly. (Flushing subnormals with the CPU's flush-to-zero mode instead made results depend on the
# process's history: the mode is per thread, and OpenMP workers created before it was set never had it.)
SHARE_FLOOR = 1e-30
TABLE_LIMIT = 1 << 22  # largest (query window × key window) table of the fast path


def subsets(heads: int, degree: int) -> list[tuple[int, ...]]:
    """Head subsets S with 1 ≤ |S| ≤ D, 0-based head indices, in order of size then lexicographic."""
    return [s for r in range(1, degree + 1) for s in itertools.combinations(range(heads), r)]


def bits(subset: tuple[int, ...], heads: int) -> str:
    """(0, 1) with H = 3 → "110": character k is 1 when head k+1 is in S."""
    return "".join("1" if k in subset else "0" for k in range(heads))


def head_windows(cfg: GIHModelConfig) -> torch.Tensor:
    """(H, span+1) bool: the offsets o = 0..span inside head h's band."""
    span = cfg.offsets()[-1]
    mask = torch.zeros(cfg.heads, span + 1, dtype=torch.bool)
    for h in range(cfg.heads):
        lo, hi = (h + 1, h + cfg.heads) if cfg.layout == "code" else (1, cfg.window)
        mask[h, lo : hi + 1] = True
        if cfg.variant == "full":
            mask[h, 0] = True
    return mask


class GIHTransformer(nn.Module):
    """Parameters: ``w`` (H, span+1) RPE weights (read only inside each head's band), ``c`` one per subset, ``a``;
    full variant: ``W_Q``, ``W_K``, ``W_OV`` (H, d, d) and the LayerNorm's ``ln_weight``, ``ln_bias`` (d)."""

    def __init__(self, cfg: GIHModelConfig, d: int):
        super().__init__()
        self.cfg, self.d = cfg, d
        self.register_buffer("band", head_windows(cfg), persistent=False)
        self.span = self.band.shape[1] - 1
        w = torch.full((cfg.heads, self.span + 1), cfg.w_minus)
        w[torch.arange(cfg.heads), torch.arange(1, cfg.heads + 1)] = cfg.w_plus  # head h peaks at offset h
        self.w = nn.Parameter(w.masked_fill(~self.band, 0.0))
        self.subsets = subsets(cfg.heads, cfg.degree)
        self.names = [bits(s, cfg.heads) for s in self.subsets]
        self.c = nn.Parameter(torch.full((len(self.subsets),), cfg.c_init))
        self.a = nn.Parameter(torch.tensor(cfg.a_init))
        self.full = cfg.variant == "full"
        self.layernorm = cfg.head_norm == "layernorm"
        if self.full:
            eye = cfg.matrix_init * torch.eye(d).expand(cfg.heads, d, d)
            self.W_Q, self.W_K, self.W_OV = (nn.Parameter(eye.clone()) for _ in range(3))
        if self.layernorm:
            self.ln_weight, self.ln_bias = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))

    GROUP_OF = {
        "w": "w",
        "c": "c",
        "a": "a",
        "W_Q": "qk",
        "W_K": "qk",
        "W_OV": "ov",
        "ln_weight": "norm",
        "ln_bias": "norm",
    }

    def group_params(self, groups: list[str]) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if self.GROUP_OF[name] in groups]

    def subset_share(self) -> torch.Tensor:
        """p_S = c_S² / Σ c² over the subsets (in ``self.names`` order); a share below SHARE_FLOOR is exactly 0."""
        sq = self.c**2
        share = sq / sq.sum()
        return share.masked_fill(share < SHARE_FLOOR, 0.0)

    # -- layer 1: the copier, on windows ---------------------------------------------------------------------------
    def copier(self, windows: torch.Tensor, attention: bool = False) -> torch.Tensor:
        """Normalised head outputs û (N, H, d) of windows (N, span+1): windows[n, o] is the token at offset o
        (d: before the start, d+1: the placeholder). With ``attention``, the (N, H, span+1) copy weights instead."""
        onehot = F.one_hot(windows, self.d + 2)[..., : self.d].to(self.w.dtype)  # (N, span+1, d); 0 for d, d+1
        allowed = self.band[None] & (windows != self.d)[:, None, :]  # (N, H, span+1)
        logits = self.w.expand(len(windows), -1, -1)
        if self.full:  # content logits x_iᵀ Q_h K_hᵀ x_j, with x_i the token at offset 0
            qk = torch.einsum("hde,hfe->hdf", self.W_Q, self.W_K)  # (H, d, d)
            logits = logits + torch.einsum("nd,hdf,nof->nho", onehot[:, 0], qk, onehot)
        weights = torch.softmax(logits.masked_fill(~allowed, MASKED), dim=-1) * allowed  # no key at all: u = 0
        if attention:
            return weights
        u = torch.einsum("nho,nod->nhd", weights, onehot)
        if self.full:
            u = torch.einsum("hde,nhe->nhd", self.W_OV, u)
        if self.layernorm:
            return F.layer_norm(u, (self.d,), self.ln_weight, self.ln_bias)
        return u / (u.norm(dim=-1, keepdim=True) + EPS_L2)

    # -- layer 2: selector kernel and classifier ---------------------------------------------------------------------
    def kernel(self, inner: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """K = Σ_S p_S ∏_{k∈S} inner[k] from per-head inner products ``inner`` (H, ...) or a list of H tensors."""
        p = self.subset_share()
        out = torch.zeros_like(inner[0])
        for i, s in enumerate(self.subsets):  # a handful of subsets; vectorised over everything else
            term = inner[s[0]]
            for k in s[1:]:
                term = term * inner[k]
            out = out + p[i] * term
        return out

    def forward(self, plan: Plan) -> torch.Tensor:
        """Predicted distributions (B, targets, d) for the sequences of ``plan``."""
        if plan.groups is not None:  # K for each distinct (query window, key window) pair, then per group
            k = self.pair_kernel(plan).index_select(0, plan.groups.pair)
            return self.classify(plan.groups, k, self.a, len(plan.labels))
        keys, queries = self.copier(plan.keys), self.copier(plan.queries)  # (n_k, H, d), (n_q, H, d)
        if plan.table:
            table = self.kernel(torch.einsum("qhd,khd->hqk", queries, keys)).reshape(-1)
            flat = plan.query_index[:, :, None] * len(plan.keys) + plan.key_index[:, None, :]
            k = table.index_select(0, flat.reshape(-1)).view(flat.shape)  # (B, targets, L)
        else:
            k = self.kernel(torch.einsum("btHd,blHd->Hbtl", queries[plan.query_index], keys[plan.key_index]))
        logits = self.a * k
        if plan.visible is not None:
            logits = logits.masked_fill(~plan.visible, float("-inf"))
        return torch.einsum("btl,bld->btd", torch.softmax(logits, dim=-1), plan.onehot)

    def pair_kernel(self, plan: Plan, head_pair: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(P,) the kernel K of every distinct (query window, key window) pair of a grouped plan: head h's inner
        products come from a table over its own distinct band contents, read at ``head_pair[h]`` (default: the
        plan's own). This depends on the data only through the windows, so an ensemble computes it for every
        member on one shared plan, each member at its own pairs."""
        keys, queries, g = self.copier(plan.keys), self.copier(plan.queries), plan.groups
        head_pair = g.head_pair if head_pair is None else head_pair
        inner = [  # per head, (P,); a list, not a stacked tensor, so the backward builds no (H, P) zeros per term
            (queries[g.query_rep[h], h] @ keys[g.key_rep[h], h].T).reshape(-1).index_select(0, head_pair[h])
            for h in range(self.cfg.heads)
        ]
        return self.kernel(inner)

    def classify(self, groups: Groups, k: torch.Tensor, a: torch.Tensor, batch: int) -> torch.Tensor:
        """The classifier over (sequence, distinct key window) groups, (batch, 1, d): a group of n equal windows is
        one key with weight n, so a softmax over L positions becomes a weighted softmax over a sequence's distinct
        windows. ``k`` (E,) is each group's kernel value and ``a`` the scale: one, or one per group (an ensemble)."""
        logits = a * k + groups.log_count  # (E,)
        if self.full or self.layernorm:  # the largest logit of each sequence
            shift = k.new_zeros(batch).scatter_reduce(0, groups.seq, logits.detach(), "amax", include_self=False)
            logits = logits - shift.index_select(0, groups.seq)
        else:  # L2-normalised copies of one-hot tokens are non-negative: 0 <= K <= 1, so a·K <= max(a, 0)
            logits = logits - a.detach().clamp_min(0)
        per_token = k.new_zeros(batch * self.d).index_add(0, groups.slot, logits.exp()).view(batch, self.d)
        return (per_token / per_token.sum(1, keepdim=True))[:, None, :]


# ----------------------------------------------------------------------------------------------------------------
# Plans: windows of a token tensor, computed once per dataset


@dataclass
class Groups:
    """Last-token targets: the keys of each sequence grouped by distinct window (E groups in all)."""

    seq: torch.Tensor  # (E,) the sequence of each group
    slot: torch.Tensor  # (E,) seq·d + the key's token (offset 0 of the window)
    log_count: torch.Tensor  # (E,) log of how many keys of the sequence have this window
    pair: torch.Tensor  # (E,) the group's (query window, key window) pair, among the P distinct pairs
    query_rep: list[torch.Tensor]  # per head: a query window for each distinct content of the head's band
    key_rep: list[torch.Tensor]  # per head: the same for key windows
    head_pair: list[torch.Tensor]  # per head, (P,): each pair's entry in the head's (query rep × key rep) table


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


def target_positions(length: int, targets: str) -> torch.Tensor:
    """0-based positions τ of the scored tokens in a (B, L+1) sequence: L (the paper's x_{L+1}) or 1..L."""
    return torch.tensor([length]) if targets == "last" else torch.arange(1, length + 1)


def key_windows(tokens: torch.Tensor, span: int, d: int) -> torch.Tensor:
    """(B, T, span+1): window[b, i, o] = tokens[b, i−o], or d where i−o < 0."""
    padded = F.pad(tokens, (span, 0), value=d)
    return padded.unfold(1, span + 1, 1).flip(-1)


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
) -> Plan:
    """The plan of sequences ``tokens`` (B, L+1) (inputs x_1..x_L and the token(s) to predict) for a model whose
    heads read the offsets ``band`` (H, span+1) and compute in ``dtype``."""
    span = band.shape[1] - 1
    length = tokens.shape[1] - 1
    inputs = tokens[:, :length]
    taus = target_positions(length, targets).to(tokens.device)
    keys = key_windows(inputs, span, d)  # (B, L, span+1)
    # The query at τ sees the placeholder at offset 0 and x_{τ−o} at offset o: the key window of τ−1, shifted.
    before = key_windows(tokens, span, d)[:, taus - 1, :span]  # (B, T, span)
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
    last = table and targets == "last"
    groups = _groups(key_index, query_index[:, 0], key_set, query_set, band, d, dtype) if last else None
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
    pairs, pair = torch.unique(query_index[seq] * n_keys + key, return_inverse=True)
    query_rep, key_rep, head_pair = [], [], []
    for h in range(band.shape[0]):  # a head reads only its band: far fewer distinct contents than windows
        q_content, q_of = _distinct(query_set[:, band[h]], d + 2)
        k_content, k_of = _distinct(key_set[:, band[h]], d + 2)
        query_rep.append(_first(q_of, len(q_content)))
        key_rep.append(_first(k_of, len(k_content)))
        head_pair.append(q_of[pairs // n_keys] * len(k_content) + k_of[pairs % n_keys])
    return Groups(
        seq=seq,
        slot=seq * d + key_set[key, 0],
        log_count=count.double().log().to(dtype),
        pair=pair,
        query_rep=query_rep,
        key_rep=key_rep,
        head_pair=head_pair,
    )


def _first(inverse: torch.Tensor, n: int) -> torch.Tensor:
    """For each of ``n`` classes, one member index (the last one written wins; any member is fine)."""
    return torch.zeros(n, dtype=torch.long, device=inverse.device).scatter_(
        0, inverse, torch.arange(len(inverse), device=inverse.device)
    )


# ----------------------------------------------------------------------------------------------------------------
# The literal model: the reference the fast path is tested against


def reference_predict(model: GIHTransformer, tokens: torch.Tensor, targets: str = "last") -> torch.Tensor:
    """(B, T, d) predictions computed as written: for each target τ, the sequence x_1..x_{τ−1} and the placeholder,
    banded attention over whole sequences, the kernel per position. Slow (a loop over targets); for tests."""
    d, cfg = model.d, model.cfg
    length = tokens.shape[1] - 1
    out = []
    for tau in target_positions(length, targets).tolist():
        x = F.one_hot(tokens[:, : tau + 1], d).to(model.w.dtype)
        x[:, tau] = 0.0  # the placeholder
        n = tau + 1
        offset = torch.arange(n)[:, None] - torch.arange(n)[None, :]  # i − j
        inside = (offset >= 0) & (offset <= model.span)
        heads = []
        for h in range(cfg.heads):
            band = inside & model.band[h][offset.clamp(0, model.span)]
            logits = torch.where(band, model.w[h][offset.clamp(0, model.span)], float("-inf")).expand(len(x), n, n)
            if model.full:
                logits = logits + x @ model.W_Q[h] @ model.W_K[h].T @ x.transpose(1, 2)
            attn = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a row without admissible keys copies nothing
            u = attn @ x
            if model.full:
                u = u @ model.W_OV[h].T
            if model.layernorm:
                u = F.layer_norm(u, (d,), model.ln_weight, model.ln_bias)
            else:
                u = u / (u.norm(dim=-1, keepdim=True) + EPS_L2)
            heads.append(u)
        inner = torch.stack([(u[:, :tau] * u[:, tau : tau + 1]).sum(-1) for u in heads])  # (H, B, τ)
        weights = torch.softmax(model.a * model.kernel(inner), dim=-1)
        out.append(torch.einsum("bl,bld->bd", weights, x[:, :tau]))
    return torch.stack(out, dim=1)
