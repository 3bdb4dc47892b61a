"""Export to TransformerLens (the ``toyformer[lens]`` extra): a trained standard transformer as a ``HookedTransformer``
with the same logits, so its tools (activation patching, CircuitsVis, head detectors) apply to it. The parameter
names are already TransformerLens's; positions must be learned absolute or rotary (TransformerLens has no learned
bias per offset)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from toyformer.config import ConfigError, validate_as
from toyformer.random import generator
from toyformer.runs import Run
from toyformer.standard.config import StandardConfig
from toyformer.standard.model import StandardTransformer


def lens_config(model: StandardTransformer):
    from transformer_lens import HookedTransformerConfig  # the optional extra, imported on use

    cfg = model.cfg
    if cfg.positions == "relative":
        raise ConfigError(
            "TransformerLens has no learned bias per offset: export a model with model.positions 'absolute' or 'rotary'"
        )
    extra = (
        {"rotary_dim": cfg.head_dim, "rotary_base": cfg.rotary_base, "rotary_adjacent_pairs": True}
        if cfg.positions == "rotary"
        else {}
    )
    return HookedTransformerConfig(
        n_layers=cfg.layers,
        d_model=cfg.d_model,
        d_head=cfg.head_dim,
        n_heads=cfg.heads,
        n_ctx=model.n_ctx,
        d_vocab=model.d_vocab,
        d_mlp=cfg.mlp_dim if cfg.mlp else None,
        attn_only=not cfg.mlp,
        act_fn="gelu",
        normalization_type="LN" if cfg.layernorm else None,
        eps=1e-5,
        positional_embedding_type="rotary" if cfg.positions == "rotary" else "standard",
        default_prepend_bos=False,
        **extra,
    )


def to_hooked_transformer(model: StandardTransformer):
    """A ``transformer_lens.HookedTransformer`` holding ``model``'s weights (float32, on the CPU)."""
    from transformer_lens import HookedTransformer

    with warnings.catch_warnings():  # 3.9 warns that 4.0 replaces HookedTransformer; the extra pins 3.9
        warnings.simplefilter("ignore", DeprecationWarning)
        lens = HookedTransformer(lens_config(model))
    ours = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    renamed = {"embed.W_E": ours.pop("W_E"), "unembed.b_U": ours.pop("b_U")}
    renamed["unembed.W_U"] = ours.pop("W_U") if "W_U" in ours else renamed["embed.W_E"].T.clone()
    if "W_pos" in ours:
        renamed["pos_embed.W_pos"] = ours.pop("W_pos")
    renamed |= ours  # blocks.{l}.attn.W_Q …, blocks.{l}.ln1.w …, ln_final.w …: the same names
    state = lens.state_dict()
    unknown = sorted(set(renamed) - set(state))
    if unknown:
        raise RuntimeError(f"TransformerLens has no parameter {unknown[0]!r}: the export's name map is out of date")
    with torch.no_grad():
        for name, value in renamed.items():
            state[name].copy_(value)
    return lens.eval()


def load_lens(run_dir: str | Path):
    """The HookedTransformer of a standard-transformer run directory (its last checkpoint)."""
    run = Run.open(Path(run_dir))
    cfg = validate_as(StandardConfig, run.raw_config())
    state = run.load_checkpoint()
    if state is None:
        raise ConfigError(f"{run_dir}: no checkpoint to export")
    model = StandardTransformer(cfg.model, cfg.data.d, cfg.data.length, generator(cfg.seed, "init"))
    model.load_state_dict(state["model"])
    return to_hooked_transformer(model)
