"""Standard transformers on the n-gram tasks (toyformer.standard, docs/standard-transformers.md): the hooks against a
plain forward and a manual ablation, the fused and explicit attention and the last-position path against the full
forward (values and gradients), the role probes on planted attention patterns, and on TF(M, H, d, D) against its own
selected subset and copy offsets."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from toyformer import tasks
from toyformer.cli import app
from toyformer.induction.chains import sample_batch
from toyformer.induction.config import GIHModelConfig
from toyformer.induction.model import GIHTransformer
from toyformer.induction.plan import make_plan
from toyformer.induction.predictors import history_matches
from toyformer.induction.probes import copy_attention, selected, window_weights
from toyformer.random import generator
from toyformer.standard import roles
from toyformer.standard.config import StandardModelConfig
from toyformer.standard.model import StandardTransformer
from toyformer.train.loop import train

SHAPES = [
    dict(),
    dict(positions="relative", mlp=True),
    dict(positions="rotary", layernorm=True, tied=True),
    dict(layers=3, heads=3, d_model=24, d_head=5, mlp=True, layernorm=True, d_mlp=20),
]


def _model(seed: int = 0, noise: float = 0.3, **kw) -> StandardTransformer:
    """A model with every parameter moved off its init by ``noise`` (biases and LayerNorm included), in float64."""
    gen = torch.Generator().manual_seed(seed)
    model = StandardTransformer(StandardModelConfig(**kw), 3, 12, gen).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def _tokens(batch: int = 6, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 3, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kw", SHAPES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_fused_explicit_and_last_position_paths_agree(kw):
    tokens = _tokens()
    fused, explicit = _model(**kw), _model(**kw, fused=False)
    explicit.load_state_dict(fused.state_dict())
    out = {}
    for name, model, last in (("fused", fused, False), ("explicit", explicit, False), ("last", fused, True)):
        logits = model(tokens, last=last)
        loss = F.cross_entropy(logits[:, -1], tokens[:, 0])
        out[name] = (logits[:, -1], torch.autograd.grad(loss, list(model.parameters())))
    for name in ("explicit", "last"):
        torch.testing.assert_close(out[name][0], out["fused"][0], rtol=0, atol=1e-10)
        for g, want in zip(out[name][1], out["fused"][1], strict=True):
            torch.testing.assert_close(g, want, rtol=0, atol=1e-10)
    assert fused(tokens).shape == (6, 12, 3) and fused(tokens, last=True).shape == (6, 1, 3)


@pytest.mark.parametrize(
    "kw", [*SHAPES, dict(layers=1)], ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()) or "default"
)
def test_the_first_layer_read_from_tables_equals_it_computed_at_every_position(kw):
    """Unhooked, the first layer's input and Q, K, V are gathered from one row per (token, position); a hook on the
    embedding turns that off, so the per-position computation runs: the two agree, values and gradients."""
    tokens = _tokens()
    model = _model(**kw)
    computed = list(model.parameters())
    for last in (False, True):
        out = []
        for hooked in (False, True):
            with model.hooks([("hook_embed", lambda x, name: None)] if hooked else []):
                assert (model._first_layer_tables(tokens) is None) == hooked
                logits = model(tokens, last=last)[:, -1]
                grads = torch.autograd.grad(F.cross_entropy(logits, tokens[:, 0]), computed)
            out.append((logits, grads))
        torch.testing.assert_close(out[0][0], out[1][0], rtol=0, atol=1e-10)
        for g, want in zip(out[0][1], out[1][1], strict=True):
            torch.testing.assert_close(g, want, rtol=0, atol=1e-10)


def test_the_cache_holds_what_a_plain_forward_computes():
    model = _model(layers=2, heads=2, mlp=True, layernorm=True)
    tokens = _tokens()
    logits, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(logits, model(tokens), rtol=0, atol=1e-12)  # cached: explicit attention; plain: fused
    assert not any(p.fns for p in model.hook_dict.values())  # the cache's hooks are gone afterwards
    names = set(cache)
    for want in ("hook_embed", "hook_pos_embed", "blocks.1.attn.hook_pattern", "blocks.0.hook_resid_post"):
        assert want in names
    # the pattern is the softmax of q·k/√d_head under the causal mask, q and k as cached
    q, k = cache["blocks.1.attn.hook_q"], cache["blocks.1.attn.hook_k"]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / model.cfg.head_dim**0.5
    scores = scores.masked_fill(torch.ones(12, 12, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(cache["blocks.1.attn.hook_pattern"], torch.softmax(scores, -1), rtol=0, atol=1e-12)
    # the residual stream adds up: embed + positions, then each block's attention and MLP outputs
    resid = cache["hook_embed"] + cache["hook_pos_embed"]
    for layer in range(2):
        resid = resid + cache[f"blocks.{layer}.hook_attn_out"] + cache[f"blocks.{layer}.hook_mlp_out"]
        torch.testing.assert_close(resid, cache[f"blocks.{layer}.hook_resid_post"], rtol=0, atol=1e-12)
    final = F.layer_norm(resid, (model.cfg.d_model,), model.ln_final.w, model.ln_final.b, 1e-5)
    torch.testing.assert_close(final @ model.W_U + model.b_U, logits, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="does not exist"):
        model.run_with_cache(tokens, names=["blocks.7.attn.hook_pattern"])


def test_ablating_a_head_through_its_hook_equals_the_manual_ablation():
    model = _model(layers=2, heads=3, d_model=24)
    tokens = _tokens(8)
    _, cache = model.run_with_cache(tokens)
    z = cache["blocks.1.attn.hook_z"].clone()  # (B, T, H, d_head)
    z[:, :, 1] = z[:, :, 1].mean((0, 1))
    attn = model.blocks[1].attn
    manual = (cache["blocks.1.hook_resid_pre"] + torch.einsum("bthd,hdm->btm", z, attn.W_O) + attn.b_O) @ model.W_U
    manual = manual + model.b_U

    def ablate(x, name):
        x = x.clone()
        x[:, :, 1] = x[:, :, 1].mean((0, 1))
        return x

    hooked = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", ablate)])
    torch.testing.assert_close(hooked, manual, rtol=0, atol=1e-12)
    assert (hooked - model(tokens)).abs().max() > 1e-3  # the ablation changed something


# -- role probes on planted patterns -------------------------------------------------------------------------------


def _chains(n: int = 400, length: int = 60, parents=(1, 2), seed: int = 0) -> torch.Tensor:
    return sample_batch(n, 3, parents, 0.3, length, generator(seed, "roles-test")).tokens


def _planted_induction(inputs: torch.Tensor, subset: tuple[int, ...]) -> torch.Tensor:
    """(B, 1, L) attention of the last query spread evenly over the keys that match it at ``subset`` (uniform where
    none does)."""
    match, _ = history_matches(inputs, subset, 3)
    weights = torch.where(match.any(1, keepdim=True), match.double(), torch.ones_like(match, dtype=torch.float64))
    return (weights / weights.sum(1, keepdim=True))[:, None, :]


@pytest.mark.parametrize("subset", [(1,), (2,), (1, 2), (1, 3), (2, 3), (1, 2, 3)])
def test_the_induction_score_finds_the_planted_subset(subset):
    inputs = _chains()[:, :-1]
    candidates = [s for r in (1, 2, 3) for s in itertools.combinations((1, 2, 3, 4), r)]
    uniform = torch.full((len(inputs), 1, inputs.shape[1]), 1.0 / inputs.shape[1], dtype=torch.float64)
    planted = torch.cat([_planted_induction(inputs, subset), uniform], 1)
    scores = roles.induction_scores(planted, inputs, candidates, 3)  # head 0 planted, head 1 uniform
    used, head = roles.used_subset(scores, candidates, 0.2)
    assert used == subset and head == 0
    assert scores[1].abs().max() < 1e-12  # uniform attention has no excess anywhere
    for other in candidates:  # strictly below on every proper subset and superset of the planted one
        if other != subset and (set(other) < set(subset) or set(other) > set(subset)):
            assert scores[0, candidates.index(other)] < scores[0, candidates.index(subset)] - 0.02, other
    assert roles.used_subset(scores[1:], candidates, 0.2) == ((), -1)


def test_the_offset_profile_finds_planted_copiers():
    t = 20
    pattern = torch.zeros(2, 3, t, t, dtype=torch.float64)
    for i in range(t):
        pattern[:, 0, i, max(i - 1, 0)] = 1.0  # previous token
        pattern[:, 1, i, max(i - 3, 0)] = 1.0  # offset 3
        pattern[:, 2, i, : i + 1] = 1.0 / (i + 1)  # uniform: no copier
    profile = roles.offset_profile(pattern, 4)
    assert profile.shape == (3, 5)
    torch.testing.assert_close(profile[0], torch.tensor([0, 1, 0, 0, 0], dtype=torch.float64))
    assert roles.copier_offsets(profile, 0.5) == [1, 3, None]


def test_distances_and_phases():
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]], dtype=torch.float64)
    d = roles.distances(p, {"ref": q})
    assert d["tv_to_ref"] == pytest.approx(0.125) and d["kl_to_ref"] > 10  # q has mass where p has none
    levels = {"unigram": 0.7, "partial": 0.5, "full": 0.3}
    found = roles.phase_steps([0, 10, 20, 30], [1.1, 0.69, 0.49, 0.31], levels, 0.05)
    assert found == {"phase_steps": {"unigram": 10, "partial": 20, "full": 30}, "phases_in_order": 1.0}
    stuck = roles.phase_steps([0, 10, 20], [1.1, 0.69, 0.6], levels, 0.05)
    assert stuck["phase_steps"]["full"] is None and stuck["phases_in_order"] == 0.0


# -- the same probes on TF(M, H, d, D) -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,chosen",
    [
        (dict(), (0, 1)),  # heads 1 and 2 copy offsets 1 and 2
        (dict(), (0, 2)),  # offsets 1 and 3: non-contiguous
        (dict(layout="paper", window=4, heads=3, degree=2), (1,)),
    ],
)
def test_role_probes_on_tf_agree_with_its_selected_subset_and_copy_offsets(kw, chosen):
    cfg = GIHModelConfig(**kw)
    model = GIHTransformer(cfg, 3)
    homes = [2, 4, 3] if cfg.layout == "paper" else [h + 1 for h in range(cfg.heads)]  # each head's copied offset
    with torch.no_grad():
        model.w.zero_()
        for h, o in enumerate(homes):
            model.w[h, o] = 8.0  # a hard copier at offset o
        model.c.zero_()[model.subsets.index(chosen)] = 1.0
        model.a.fill_(12.0)
    tokens = _chains(300, 50, parents=(1, 3))
    plan = make_plan(tokens, model.band, 3)
    copy_offset, chosen_offsets = selected(copy_attention(model, plan, window_weights(plan, 3)), model)
    _, cache = model.run_with_cache(tokens)
    profile = roles.offset_profile(cache["blocks.0.attn.hook_pattern"][:, :, :-1, :-1], model.span)
    assert roles.copier_offsets(profile, 0.5) == list(copy_offset.values())
    candidates = [s for r in (1, 2) for s in itertools.combinations(range(1, model.span + 1), r)]
    last = cache["blocks.1.attn.hook_pattern"][:, :, 0]
    used, _ = roles.used_subset(roles.induction_scores(last, tokens[:, :-1], candidates, 3), candidates, 0.2)
    assert used == chosen_offsets == tuple(sorted(homes[h] for h in chosen))


# -- runs ----------------------------------------------------------------------------------------------------------

SMALL = ["train.steps=6", "train.probes=3", "data.sequences=200", "theory.kernels=100", "data.length=30"]


def test_a_short_run_writes_the_role_metrics(tmp_path):
    cfg = tasks.load("induction/standard-attn2", SMALL)
    summary = train(tasks.build(cfg), out=tmp_path / "run").summary()
    final = summary["final"]
    assert set(final["ablation_loss"]) == {"L0H0", "L0H1", "L1H0", "L1H1"}
    assert set(final["phase_steps"]) == {"unigram", "partial", "full"}
    assert final["used_subset"] == "none" or all(o.isdigit() for o in final["used_subset"].split(","))
    assert summary["theory"]["predicted_subset"] == "1,2"
    assert (tmp_path / "run" / "figures" / "heads.png").is_file()


@pytest.mark.parametrize(
    "sets,message",
    [
        (["model.d_mlp=64"], "model.d_mlp"),
        (["model.positions=rotary", "model.d_head=3"], "even d_head"),
        (["model.positions=absolute", "model.rotary_base=500"], "model.rotary_base"),
        (["model.d_model=33"], "multiple of heads"),
        (["probes.window=100"], "probes.window"),
        (["train.momentum=0.9"], "train.momentum"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, sets, message):
    sets = ["train.steps=2", *sets]  # a setting that turned out valid fails fast instead of training a recipe
    args = ["run", "induction/standard-attn2", *[a for s in sets for a in ("--set", s)], "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and message in result.stderr and "\n" not in result.stderr.strip(), result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(positions="rotary", mlp=True, layernorm=True), dict(tied=True, layers=3, heads=3, d_model=24)],
    ids=["attn-only", "rotary-mlp-ln", "tied"],
)
def test_the_transformer_lens_export_has_our_logits(kw):
    from toyformer.standard.lens import to_hooked_transformer

    model = _model(noise=0.1, **kw).float()  # logits of order 1, as a trained model's: float32 agrees to 1e-5
    tokens = _tokens(8)
    lens = to_hooked_transformer(model)
    torch.testing.assert_close(lens(tokens), model(tokens), rtol=0, atol=1e-5)
    _, cache = lens.run_with_cache(tokens)
    _, ours = model.run_with_cache(tokens, names=["blocks.1.attn.hook_pattern"])
    torch.testing.assert_close(
        cache["blocks.1.attn.hook_pattern"], ours["blocks.1.attn.hook_pattern"], atol=1e-5, rtol=0
    )


def test_export_refuses_relative_positions_and_reads_a_run(tmp_path):
    from toyformer.config import ConfigError
    from toyformer.standard.lens import load_lens, to_hooked_transformer

    with pytest.raises(ConfigError, match="absolute"):
        to_hooked_transformer(_model(positions="relative").float())
    cfg = tasks.load("induction/standard-attn2", SMALL)
    experiment = tasks.build(cfg)
    train(experiment, out=tmp_path / "run", figures=False)
    tokens = experiment.data.val.tokens[:, :-1]
    torch.testing.assert_close(load_lens(tmp_path / "run")(tokens), experiment.model(tokens), rtol=0, atol=1e-5)
