"""TF(M, H, d, D), the two-attention-layer model of paper 2 (docs/induction-heads.md §2), and its full variant.

For one-hot inputs x_1..x_L and an all-zero placeholder at the query position τ (L+1 in the paper):
    copier    u_i^(h) = Σ_j softmax_j(w^(h)[i−j]) x_j over the offsets i−j in head h's window (nothing else);
              û^(h) = u^(h) / (‖u^(h)‖ + ε)  (or a shared LayerNorm)
    selector  K(i, τ) = Σ_{S ⊆ [H], 1 ≤ |S| ≤ D} p_S ∏_{k∈S} ⟨û_τ^(k), û_i^(k)⟩,   p_S = c_S² / Σ_S' c_S'²
    classifier y = Σ_{i<τ} softmax_i(a · K(i, τ)) x_i ∈ Δ_d   (the predicted distribution; no unembedding)
The full variant adds content logits x_iᵀ Q_h K_hᵀ x_j and offset 0 to every head's band, a value-output matrix
OV_h per head and a shared LayerNorm instead of the L2 normalisation.

The selector's tensor-product features are never built: only their kernel is needed, and only subsets with
|S| ≤ D are enumerated. Subsets holding the raw token x_i contribute 0 at the placeholder query, so they are left out.

The fast path reads a plan of the data's distinct windows (``toyformer.induction.plan``). ``reference_predict``
is the literal model (banded attention over whole sequences, one target at a time) that the fast path is tested
against.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from toyformer.hooks import Hooked, HookPoint
from toyformer.induction.config import GIHModelConfig
from toyformer.induction.plan import Groups, GroupSum, Plan, scored_positions

EPS_L2 = 1e-6
MASKED = -1e9  # finite, so a row without admissible keys gives u = 0 instead of NaN
# The losing c_S decay towards 0 and their shares pass through subnormal floats, where CPU arithmetic is many times
# slower, in every (pair × subset) product of the kernel. A share this small moves no float32 sum of O(1) terms, so it
# is dropped exactly. (Flushing subnormals with the CPU's flush-to-zero mode instead made results depend on the
# process's history: the mode is per thread, and OpenMP workers created before it was set never had it.)
SHARE_FLOOR = 1e-30


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


class _HookedAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.hook_pattern = HookPoint()


class _HookedLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = _HookedAttention()


class GIHTransformer(Hooked):
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
        pairs = [s[0] * cfg.heads + s[1] for s in self.subsets if len(s) == 2]  # p_hk's entry of an (H, H) matrix
        self.register_buffer("pair_entries", torch.tensor(pairs, dtype=torch.long), persistent=False)
        for r in range(3, cfg.degree + 1):  # the heads of each larger subset size, as (r, n_r) row indices
            rows = [s for s in self.subsets if len(s) == r]
            if rows:
                self.register_buffer(f"rows_{r}", torch.tensor(rows).T.contiguous(), persistent=False)
        self.a = nn.Parameter(torch.tensor(cfg.a_init))
        self.full = cfg.variant == "full"
        self.layernorm = cfg.head_norm == "layernorm"
        if self.full:
            eye = cfg.matrix_init * torch.eye(d).expand(cfg.heads, d, d)
            self.W_Q, self.W_K, self.W_OV = (nn.Parameter(eye.clone()) for _ in range(3))
        if self.layernorm:
            self.ln_weight, self.ln_bias = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))
        # the copier (layer 1) and the classifier (layer 2) as attention layers, for hooks on the literal forward
        self.blocks = nn.ModuleList([_HookedLayer(), _HookedLayer()])
        self.name_hooks()

    def hooked_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The literal model's prediction of x_{L+1}, (B, 1, d), from chains (B, L+1) (the target is not read),
        through the hook points; the fast path runs none."""
        return reference_predict(self, tokens, "last")

    @property
    def product_rows(self) -> list[torch.Tensor]:
        return [getattr(self, f"rows_{r}") for r in range(3, self.cfg.degree + 1) if hasattr(self, f"rows_{r}")]

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
        (d: before the start, so always a window's last offsets; d+1: the placeholder). With ``attention``, the
        (N, H, span+1) copy weights instead."""
        onehot = F.one_hot(windows, self.d + 2)[..., : self.d].to(self.w.dtype)  # (N, span+1, d); 0 for d, d+1
        if self.full:  # content logits x_iᵀ Q_h K_hᵀ x_j, with x_i the token at offset 0
            allowed = self.band[None] & (windows != self.d)[:, None, :]  # (N, H, span+1)
            qk = torch.einsum("hde,hfe->hdf", self.W_Q, self.W_K)  # (H, d, d)
            logits = self.w + torch.einsum("nd,hdf,nof->nho", onehot[:, 0], qk, onehot)
            weights = torch.softmax(logits.masked_fill(~allowed, MASKED), dim=-1) * allowed  # no key at all: u = 0
        else:  # the weights depend only on how many offsets lie before the start: one softmax per count
            offsets = torch.arange(self.span + 1, device=windows.device)
            inside = offsets < len(offsets) - torch.arange(len(offsets) + 1, device=windows.device)[:, None]
            allowed = self.band[None] & inside[:, None, :]  # (span+2, H, span+1): the last k offsets before the start
            table = torch.softmax(self.w.masked_fill(~allowed, MASKED), dim=-1) * allowed
            weights = table.index_select(0, (windows == self.d).sum(1))
        if attention:
            return weights
        u = torch.einsum("nho,nod->nhd", weights, onehot)
        if self.full:
            u = torch.einsum("hde,nhe->nhd", self.W_OV, u)
        if self.layernorm:
            return F.layer_norm(u, (self.d,), self.ln_weight, self.ln_bias)
        return u / (u.norm(dim=-1, keepdim=True) + EPS_L2)

    # -- layer 2: selector kernel and classifier ---------------------------------------------------------------------
    def kernel(self, inner: torch.Tensor) -> torch.Tensor:
        """K = Σ_S p_S ∏_{k∈S} inner[k] from per-head inner products ``inner`` (H, ...), one contiguous row per head.
        The single heads and the pairs as one quadratic form, K₁₂ = Σ_k x_k (p_k + Σ_{h<k} p_hk x_h): an (H, H)
        matrix times the (H, N) rows, a product and a sum over heads, whatever the number of pairs; each larger subset
        size r as the product of r row gathers (one row per subset) and a vector-matrix product."""
        p = self.subset_share()
        heads = self.cfg.heads
        x = inner.reshape(heads, -1)
        size_two = self.pair_entries.numel()
        linear = p[:heads, None]  # subsets are ordered by size: the single heads, then the pairs, ...
        if size_two:
            upper = p.new_zeros(heads * heads).index_add(0, self.pair_entries, p[heads : heads + size_two])
            out = (x * torch.addmm(linear, upper.view(heads, heads).T, x)).sum(0)
        else:
            out = (x * linear).sum(0)
        start = heads + size_two
        for rows in self.product_rows:  # (r, n_r): the heads of each size-r subset (r ≥ 3), one subset per column
            term = x.index_select(0, rows[0])
            for r in rows[1:]:
                term = term * x.index_select(0, r)
            out = out + p[start : start + rows.shape[1]] @ term
            start += rows.shape[1]
        return out.view(inner.shape[1:])

    def forward(self, plan: Plan) -> torch.Tensor:
        """Predicted distributions (B, targets, d) for the sequences of ``plan``."""
        if plan.groups is not None:  # K for each distinct (query window, key class) pair, then per group
            g = plan.groups
            kernel, gather = self.pair_kernel(plan), lambda t: t.index_select(0, g.pair)
            return self.classify(g, kernel, self.a, len(plan.labels), gather, g.sum)
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

    def pair_kernel(self, plan: Plan, head_pair: torch.Tensor | None = None) -> torch.Tensor:
        """(P,) the kernel K of every distinct (query window, key class) pair of a grouped plan, read at
        ``head_pair`` (H, P) (default: the plan's own). Head h's inner products come from a table over its own
        distinct band contents or, for a direct head, from one dot product per pair. This depends on the data only
        through the windows, so an ensemble computes it for every member on one shared plan, each member at its own
        pairs."""
        g = plan.groups
        keys, queries = self.copier(g.keys), self.copier(g.queries)
        head_pair = g.head_pair if head_pair is None else head_pair
        rows = []
        for h in range(self.cfg.heads):  # one head's table at a time: it stays in cache while its pairs read it
            q, k, e = queries[g.query_rep[h], h], keys[g.key_rep[h], h], head_pair[h]
            if g.coupled and g.coupled[h]:  # one inner product per couple: per pattern of its band
                rows.append((q * k).sum(-1).index_select(0, e))
            elif g.direct[h]:
                n = g.key_contents[h]
                rows.append((q.index_select(0, e // n) * k.index_select(0, e % n)).sum(-1))
            else:
                rows.append((q @ k.T).reshape(-1).index_select(0, e))
        return self.kernel(torch.stack(rows))

    def classify(
        self,
        groups: Groups,
        k: torch.Tensor,
        a: torch.Tensor,
        batch: int,
        gather: Callable[[torch.Tensor], torch.Tensor],
        group_sum: GroupSum | None = None,
    ) -> torch.Tensor:
        """The classifier over (sequence, distinct key window) groups, (batch, 1, d): a group of n equal windows is
        one key with weight n, so a softmax over L positions becomes a weighted softmax over a sequence's distinct
        windows. ``k`` is the kernel of each distinct pair and ``a`` the scale (one, or one per member of an
        ensemble, broadcast against ``k``); ``gather`` reads a table shaped like ``k`` at each group's pair, and
        ``group_sum``, where the plan has one, sums such a table over each sequence's groups by token at once."""
        logits = a * k
        if self.full or self.layernorm:  # shifted by the largest logit of each sequence
            logits = gather(logits) + groups.log_count  # (E,)
            shift = k.new_zeros(batch).scatter_reduce(0, groups.seq, logits.detach(), "amax", include_self=False)
            weights = (logits - shift.index_select(0, groups.seq)).exp()
        else:  # L2-normalised copies of one-hot tokens are non-negative: 0 <= K <= 1, so a·K <= max(a, 0), and the
            # exponential is taken on the pairs' table, before the (far longer) reading by the groups
            table = (logits - a.detach().clamp_min(0)).exp()
            if group_sum is not None:
                return _normalised(group_sum(table.reshape(-1)).view(batch, self.d))
            weights = gather(table) * groups.count
        return _normalised(k.new_zeros(batch * self.d).scatter_add(0, groups.slot, weights).view(batch, self.d))


def _normalised(per_token: torch.Tensor) -> torch.Tensor:
    return (per_token / per_token.sum(1, keepdim=True))[:, None, :]


# ----------------------------------------------------------------------------------------------------------------
# The literal model: the reference the fast path is tested against


def reference_predict(model: GIHTransformer, tokens: torch.Tensor, targets: str = "last") -> torch.Tensor:
    """(B, T, d) predictions computed as written: for each target τ, the sequence x_1..x_{τ−1} and the placeholder,
    banded attention over whole sequences, the kernel per position. Slow (a loop over targets); for tests and
    hooks: the copier's attention passes ``blocks.0.attn.hook_pattern`` (B, H, τ+1, τ+1) and the classifier's, at
    the query, ``blocks.1.attn.hook_pattern`` (B, 1, 1, τ)."""
    d, cfg = model.d, model.cfg
    length = tokens.shape[1] - 1
    out = []
    for tau in scored_positions(length, targets).tolist():
        x = F.one_hot(tokens[:, : tau + 1], d).to(model.w.dtype)
        x[:, tau] = 0.0  # the placeholder
        n = tau + 1
        offset = torch.arange(n)[:, None] - torch.arange(n)[None, :]  # i − j
        inside = (offset >= 0) & (offset <= model.span)
        patterns = []
        for h in range(cfg.heads):
            band = inside & model.band[h][offset.clamp(0, model.span)]
            logits = torch.where(band, model.w[h][offset.clamp(0, model.span)], float("-inf")).expand(len(x), n, n)
            if model.full:
                logits = logits + x @ model.W_Q[h] @ model.W_K[h].T @ x.transpose(1, 2)
            patterns.append(torch.softmax(logits, dim=-1).nan_to_num(0.0))  # a row without keys copies nothing
        pattern = model.blocks[0].attn.hook_pattern(torch.stack(patterns, dim=1))  # (B, H, τ+1, τ+1)
        heads = []
        for h in range(cfg.heads):
            u = pattern[:, h] @ x
            if model.full:
                u = u @ model.W_OV[h].T
            if model.layernorm:
                u = F.layer_norm(u, (d,), model.ln_weight, model.ln_bias)
            else:
                u = u / (u.norm(dim=-1, keepdim=True) + EPS_L2)
            heads.append(u)
        inner = torch.stack([(u[:, :tau] * u[:, tau : tau + 1]).sum(-1) for u in heads])  # (H, B, τ)
        weights = torch.softmax(model.a * model.kernel(inner), dim=-1)
        weights = model.blocks[1].attn.hook_pattern(weights[:, None, None, :])[:, 0, 0]  # the query's (B, 1, 1, τ)
        out.append(torch.einsum("bl,bld->bd", weights, x[:, :tau]))
    return torch.stack(out, dim=1)
