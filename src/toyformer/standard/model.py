"""A standard decoder-only transformer for the n-gram tasks (docs/standard-transformers.md): token embedding,
positions (learned absolute, a learned relative bias per head and offset, or rotary), ``layers`` blocks of causal
multi-head attention (optionally an MLP after it, optionally pre-LayerNorm), and an unembedding (tied to the embedding
or not). Parameter and hook names follow TransformerLens: ``W_E`` (d_vocab, d_model), ``W_pos`` (n_ctx, d_model),
``blocks.{l}.attn.W_Q`` / ``W_K`` / ``W_V`` (n_heads, d_model, d_head), ``W_O`` (n_heads, d_head, d_model),
``blocks.{l}.mlp.W_in`` (d_model, d_mlp), ``W_out``, ``W_U`` (d_model, d_vocab), ``blocks.{l}.ln1.w`` …

Position t of the input reads x_1..x_t and its logits predict x_{t+1}. With ``last=True`` only the last position's
logits are made: the last block computes its query, MLP and unembedding at that position alone (its keys and values
still read every position), which is all the last-token loss needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from toyformer.hooks import Hooked, HookPoint
from toyformer.standard.config import StandardModelConfig

Projections = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # Q, K, V: (B, T, H, d_head) each


def normal(shape: tuple[int, ...], std: float, gen: torch.Generator) -> nn.Parameter:
    return nn.Parameter(torch.randn(shape, generator=gen) * std)


class LayerNorm(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.ones(d_model)), nn.Parameter(torch.zeros(d_model))
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_normalized(F.layer_norm(x, x.shape[-1:], self.w, self.b, 1e-5))


def rotate(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary positions on (B, T, H, d_head) at ``positions`` (T,): each pair (x_{2i}, x_{2i+1}) turned by the angle
    position · base^(−2i/d_head)."""
    half = x.shape[-1] // 2
    freq = base ** (-torch.arange(half, device=x.device, dtype=x.dtype) / half)
    angle = positions.to(x.dtype)[:, None] * freq  # (T, half)
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg: StandardModelConfig, n_ctx: int, gen: torch.Generator):
        super().__init__()
        h, dm, dh = cfg.heads, cfg.d_model, cfg.head_dim
        self.cfg, self.scale = cfg, 1.0 / math.sqrt(dh)
        self.W_Q, self.W_K, self.W_V = (normal((h, dm, dh), cfg.init_std, gen) for _ in range(3))
        self.W_O = normal((h, dh, dm), cfg.init_std, gen)
        self.b_Q, self.b_K, self.b_V = (nn.Parameter(torch.zeros(h, dh)) for _ in range(3))
        self.b_O = nn.Parameter(torch.zeros(dm))
        if cfg.positions == "relative":  # a learned bias per head on each offset i − j = 0 .. n_ctx−1
            self.W_rel = nn.Parameter(torch.zeros(h, n_ctx))
        for name in ("q", "k", "v", "attn_scores", "pattern", "z"):
            setattr(self, f"hook_{name}", HookPoint())

    def project(self, x: torch.Tensor, which: slice = slice(0, 3)) -> torch.Tensor:
        """(..., d_model) → (..., n, H, d_head): the Q, K, V projections (``which`` of them) as one matrix product."""
        w = torch.stack([self.W_Q, self.W_K, self.W_V])[which]  # (n, H, d_model, d_head)
        b = torch.stack([self.b_Q, self.b_K, self.b_V])[which]
        return _affine(x, w.permute(2, 0, 1, 3).flatten(1), b.flatten()).unflatten(-1, b.shape)  # (..., n, H, d_head)

    def forward(self, x: torch.Tensor | None, last: bool = False, qkv: Projections | None = None) -> torch.Tensor:
        """(B, T, d_model) → (B, T, d_model), or (B, 1, d_model) for the last position alone. ``qkv``: the
        projections (B, T, H, d_head) each, when the caller has them already (a first layer read from tables)."""
        if qkv is None:
            q = self.project(x[:, -1:] if last else x, slice(0, 1))[:, :, 0]  # (B, Tq, H, d_head)
            k, v = self.project(x, slice(1, 3)).unbind(2)
        else:
            q, k, v = qkv
            q = q[:, -1:] if last else q
        t = k.shape[1]
        keys = torch.arange(t, device=k.device)
        queries = keys[-1:] if last else keys
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if self.cfg.positions == "rotary":
            q, k = rotate(q, queries, self.cfg.rotary_base), rotate(k, keys, self.cfg.rotary_base)
        qh, kh, vh = (a.transpose(1, 2) for a in (q, k, v))  # (B, H, T, d_head)
        explicit = self.hook_attn_scores.fns or self.hook_pattern.fns or not self.cfg.fused
        if not explicit and self.cfg.positions != "relative":  # the causal mask as a flag: the kernel skips blocks
            z = F.scaled_dot_product_attention(qh, kh, vh, is_causal=not last)  # (the last query sees every key)
        else:
            offset = queries[:, None] - keys[None, :]  # (Tq, T): i − j
            bias = torch.zeros(offset.shape, dtype=k.dtype, device=k.device).masked_fill(offset < 0, float("-inf"))
            if self.cfg.positions == "relative":
                bias = bias + self.W_rel[:, offset.clamp_min(0)]  # (H, Tq, T)
            if explicit:
                scores = self.hook_attn_scores(qh @ kh.transpose(-1, -2) * self.scale + bias)
                z = self.hook_pattern(torch.softmax(scores, dim=-1)) @ vh
            else:
                z = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias)
        z = self.hook_z(z.transpose(1, 2))  # (B, Tq, H, d_head)
        return _affine(z.flatten(2), self.W_O.flatten(0, 1), self.b_O)


def _affine(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x @ w + b with the bias added inside the matrix product (``addmm``): no second pass over, and no second
    buffer of, an output that at the full batch holds B·T rows."""
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), w).view(*x.shape[:-1], w.shape[-1])


class MLP(nn.Module):
    def __init__(self, cfg: StandardModelConfig, gen: torch.Generator):
        super().__init__()
        self.W_in = normal((cfg.d_model, cfg.mlp_dim), cfg.init_std, gen)
        self.b_in = nn.Parameter(torch.zeros(cfg.mlp_dim))
        self.W_out = normal((cfg.mlp_dim, cfg.d_model), cfg.init_std, gen)
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        post = self.hook_post(F.gelu(self.hook_pre(x @ self.W_in + self.b_in)))
        return post @ self.W_out + self.b_out


class Block(nn.Module):
    def __init__(self, cfg: StandardModelConfig, n_ctx: int, gen: torch.Generator):
        super().__init__()
        self.cfg = cfg
        self.ln1 = LayerNorm(cfg.d_model) if cfg.layernorm else nn.Identity()
        self.attn = Attention(cfg, n_ctx, gen)
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()
        if cfg.mlp:
            self.ln2 = LayerNorm(cfg.d_model) if cfg.layernorm else nn.Identity()
            self.mlp = MLP(cfg, gen)
            self.hook_resid_mid, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(self, resid: torch.Tensor, last: bool = False, qkv: Projections | None = None) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)
        attn = self.hook_attn_out(self.attn(self.ln1(resid) if qkv is None else None, last, qkv))
        resid = (resid[:, -1:] if last else resid) + attn
        if self.cfg.mlp:
            resid = self.hook_resid_mid(resid)
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid)


class StandardTransformer(Hooked):
    """Logits (B, T, d_vocab) of tokens (B, T) in 0..d_vocab−1, or (B, 1, d_vocab) at the last position. The
    initial weights are drawn from ``gen``, in the order the modules are built."""

    def __init__(self, cfg: StandardModelConfig, d_vocab: int, n_ctx: int, gen: torch.Generator):
        super().__init__()
        self.cfg, self.d_vocab, self.n_ctx = cfg, d_vocab, n_ctx
        self.W_E = normal((d_vocab, cfg.d_model), cfg.init_std, gen)
        self.hook_embed = HookPoint()
        if cfg.positions == "absolute":
            self.W_pos = normal((n_ctx, cfg.d_model), cfg.init_std, gen)
            self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(Block(cfg, n_ctx, gen) for _ in range(cfg.layers))
        self.ln_final = LayerNorm(cfg.d_model) if cfg.layernorm else nn.Identity()
        if not cfg.tied:
            self.W_U = normal((cfg.d_model, d_vocab), cfg.init_std, gen)
        self.b_U = nn.Parameter(torch.zeros(d_vocab))
        self.name_hooks()

    def unembed(self) -> torch.Tensor:
        """W_U (d_model, d_vocab): its own matrix, or the embedding's transpose when tied."""
        return self.W_E.T if self.cfg.tied else self.W_U

    def forward(self, tokens: torch.Tensor, last: bool = False) -> torch.Tensor:
        tables = self._first_layer_tables(tokens)
        if tables is None:
            resid = self.hook_embed(self.W_E[tokens])  # (B, T, d_model)
            if self.cfg.positions == "absolute":
                resid = resid + self.hook_pos_embed(self.W_pos[: tokens.shape[1]])
            qkv = None
        else:
            resid, qkv = tables
        for i, block in enumerate(self.blocks):
            resid = block(resid, last and i == len(self.blocks) - 1, qkv if i == 0 else None)
        return self.ln_final(resid) @ self.unembed() + self.b_U

    def _first_layer_tables(self, tokens: torch.Tensor) -> tuple[torch.Tensor, Projections] | None:
        """The first layer's input and its Q, K, V projections gathered from tables, or None when a hook reads or
        changes them. The input at a position is a function of (token, position) (of the token alone without
        absolute positions), and so are its LayerNorm and projections: one table row per pair, d_vocab·T rows, is
        the same as computing them at each of the B·T positions, for a fraction of the work."""
        block = self.blocks[0]
        points = [self.hook_embed, block.hook_resid_pre, block.attn.hook_q, block.attn.hook_k, block.attn.hook_v]
        points += [getattr(self, "hook_pos_embed", None), getattr(block.ln1, "hook_normalized", None)]
        if any(p is not None and p.fns for p in points):
            return None
        if self.cfg.positions == "absolute":
            t = tokens.shape[1]
            inputs = (self.W_E[:, None] + self.W_pos[None, :t]).flatten(0, 1)  # (d_vocab·T, d_model): row c·T + i
            rows = tokens * t + torch.arange(t, device=tokens.device)
        else:
            inputs, rows = self.W_E, tokens
        # one gather per projection: their gradients then need no (B, T, 3, ...) buffer to be stacked into
        tables = block.attn.project(block.ln1(inputs)).unbind(1)  # 3 × (rows, H, d_head)
        qkv = tuple(_gather(table.flatten(1), rows).unflatten(-1, table.shape[1:]) for table in tables)
        return _gather(inputs, rows), qkv  # (B, T, d_model), 3 × (B, T, H, d_head)


def _gather(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """table[rows] by ``index_select``, whose gradient is one ``index_add`` (an embedding's sorts its indices
    first: three times slower on the CPU for a few hundred rows read by B·T positions)."""
    return table.index_select(0, rows.reshape(-1)).view(*rows.shape, table.shape[-1])
