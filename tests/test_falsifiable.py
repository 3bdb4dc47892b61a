"""Every shipped recipe's claims can fail: each reproduced result is evaluated on (a) the recipe's untrained model
and (b) planted models with the wrong structure, on shortened data.

(a) Untrained: one step at a vanishing learning rate, so the run directory, probes and summary are the real ones
    but the weights are those at initialisation. Every ``result`` claim must fail there, at the recipe's seed and
    at two more (a random init gives a contrast of either sign: a bare ``same > different`` would hold half the
    time). A ``null`` claim (the theory predicts that a structure does not form) holds at initialisation by
    nature and is exempt; every recipe must state at least one result.
(b) Wrong structure. Induction: (b1) the selector put on a wrong head subset, (b2) the copier moved onto offsets
    that are not parents, the selector on the first subset of S*'s size; both with the classifier's a at the
    theory's a*, so loss claims test the structure and not a. Topic: the recipe trained briefly, then its ids
    relabelled across topics on every id axis (``topic_permutation``), so W^V, the QK circuit, the embeddings and
    the attention keep their strength but line up with the wrong topics. Every result claim that reads a
    structural metric must fail on at least one planted model. docs/claims.md has the whole rule.

Sanity checks (``kind = "sanity"``) are exempt and reported apart. ``python tests/test_falsifiable.py`` prints the
table of which claims fail where.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import pytest
import torch

from toyformer import config, tasks
from toyformer.claims import all_checks, lookup, parse_terms
from toyformer.induction.predictors import history_matches
from toyformer.induction.theory import predicted_offsets
from toyformer.train.loop import train
from toyformer.train.seeds import member_config

SHORT = {
    "standard": ["theory.kernels=300", "train.probes=4"],
    "topic": ["data.train_docs=200", "data.dev_docs=50", "theory.samples=400", "train.probes=6", "probes.docs=16"],
    "induction": ["data.sequences=1000", "theory.kernels=300", "train.probes=4"],
}
POPULATION = ["theory.samples=400", "train.probes=6", "probes.docs=16"]  # N → ∞: there are no document splits
TEXT = [  # topic/wiki-mlm on a small planted corpus (``planted_text``), so that no corpus has to be read
    "data.vocab.size=100",
    "data.vocab.min_count=1",
    "data.topics.num_topics=10",
    "data.topics.passes=30",
    "data.topics.top_fraction=0.099",
    "data.topics.seed=0",
    "data.topics.chunksize=100",
    "data.dev_docs=40",
    "train.probes=6",
    "probes.docs=20",
]
PREFIXES = ("zor", "mel", "pix", "qua", "vek", "dun", "fop", "gir", "hux", "bly")  # ten topics of ten words: v = T


def planted_text(path: Path, docs: int = 400, length: int = 40) -> Path:
    """A JSONL corpus whose documents each mix two of ten planted topics (ten words each) with a stop word."""
    gen = torch.Generator().manual_seed(0)
    with path.open("w") as f:
        for k in range(docs):
            first, second = PREFIXES[k % 10], PREFIXES[(k + 1 + k // 10) % 10]
            letters = torch.randint(0, 10, (length,), generator=gen).tolist()
            words = [(first if i < length // 2 else second) + "abcdefghij"[x] for i, x in enumerate(letters)]
            words[::5] = ["the"] * len(words[::5])
            f.write(json.dumps({"text": " ".join(words) + ".", "label": first}) + "\n")
    return path


VANISHING = 1e-30
UNTRAINED_SEEDS = (1, 2)  # besides the recipe's own seed
TOPIC_TRAIN_STEPS = 150  # the brief training whose structure (b) moves onto the wrong topics
# Metrics that describe the structure a model has (rather than when it formed or how large a is).
STRUCTURAL = (
    *("wv_", "attn_", "qk_", "emb_", "selected_", "subset_share", "predicted_share", "gap_share", "loss_"),
    *("used_", "copiers_", "phases_"),  # standard transformers: the heads' roles and the loss phases
)

RECIPES = config.recipe_names()


def _names(claim) -> list[str]:
    sides = [claim.left, claim.right] + ([claim.scale] if claim.scale else [])
    if claim.op == "==":
        return [s.strip() for s in sides]
    return [t for s in sides for _, t in parse_terms(s) if not t[0].isdigit()]


def _produced(name: str, final: dict, theory: dict) -> bool:
    """Whether the run writes ``name`` (its value may be None: an onset that did not happen)."""
    source, key = (theory, name[7:]) if name.startswith("theory.") else (final, name)
    return key in source or lookup(name, final, theory) is not None


def structural(claim) -> bool:
    return any(n.startswith(STRUCTURAL) for n in _names(claim) if not n.startswith("theory."))


def _config(name: str, tmp, untrained: bool = True, steps: int | None = None) -> config.TopicConfig:
    """The recipe on shortened data; ``untrained``: one step (per stage) at a vanishing learning rate."""
    base = tasks.load(name)
    if base.task == "induction":
        stages = range(len(base.train.stages))
        overrides = SHORT["induction"] + [
            f"train.stages.{k}.{kv}" for k in stages for kv in ("steps=1", f"lr={VANISHING}")
        ]
    elif base.task == "standard":
        size = "data.sequences=1000" if base.data.split == "fixed" else "data.val_sequences=300"
        overrides = SHORT["standard"] + [size, "train.steps=1", f"train.lr={VANISHING}"]
    else:
        if getattr(base.data, "kind", None) == "text":
            overrides = TEXT + [f"data.corpus.source={planted_text(tmp / 'planted.jsonl')}"]
        else:
            overrides = list(POPULATION if base.data.population else SHORT["topic"])
        overrides += ["train.steps=1", f"train.lr={VANISHING}"] if untrained else [f"train.steps={steps}"]
    cfg = tasks.load(name, overrides)
    return member_config(cfg, cfg.seeds[0]) if cfg.seeds else cfg


def _summary(cfg, out, plant=None) -> dict:
    experiment = tasks.build(cfg)
    if plant is not None:
        with torch.no_grad():
            plant(experiment)
    return train(experiment, out=out, figures=False).summary()


# -- planted wrong models ------------------------------------------------------------------------------------------


def _a_star(experiment, model) -> None:
    model.a.fill_(experiment.references["gih_theory_a"])


def wrong_selector(experiment) -> None:
    """All of p_S on a head subset whose offsets are not S*: the one of S*'s size (or the nearest size) with the
    fewest true parents."""
    model, parents = experiment.model, set(experiment.cfg.data.parents)
    star = predicted_offsets(experiment.theory)
    copied = [tuple(sorted(h + 1 for h in s)) for s in model.subsets]  # head h copies offset h + 1 at init
    wrong = [k for k, o in enumerate(copied) if o != star]
    k = min(wrong, key=lambda k: (abs(len(copied[k]) - len(star)), len(set(copied[k]) & parents), -k))
    model.c.zero_()[k] = 1.0
    _a_star(experiment, model)


def wrong_copier(experiment) -> None:
    """Every head moved onto the nearest offset of its band that is not a parent (where its band has one); the
    selector on the first subset of S*'s size."""
    model, parents = experiment.model, set(experiment.cfg.data.parents)
    star = predicted_offsets(experiment.theory)
    w_plus, w_minus = model.cfg.w_plus, model.cfg.w_minus
    for h in range(model.cfg.heads):
        home = h + 1
        band = [o for o in range(model.band.shape[1]) if model.band[h, o] and o >= 1]
        free = [o for o in band if o not in parents] or [home]
        target = min(free, key=lambda o: (abs(o - home), o))
        model.w[h] = torch.where(model.band[h], torch.tensor(w_minus), torch.tensor(0.0))
        model.w[h, target] = w_plus
    k = next(k for k, s in enumerate(model.subsets) if len(s) == min(len(star), model.cfg.degree))
    model.c.zero_()[k] = 1.0
    _a_star(experiment, model)


def wrong_roles(experiment) -> None:
    """A standard transformer whose heads are held, through their hooks, to the roles of a wrong subset: the one of
    S*'s size with the fewest true parents among the candidates. Every first-layer head copies an offset of that
    subset, and the last layer's heads spread the last query's attention over the keys matching it there."""
    model, cfg = experiment.model, experiment.cfg
    star, parents = predicted_offsets(experiment.theory), set(cfg.data.parents)
    wrong = min(
        (s for s in experiment.subsets if s != star),
        key=lambda s: (abs(len(s) - len(star)), len(set(s) & parents), s),
    )
    seen: dict = {}
    model.register_forward_pre_hook(lambda module, args: seen.update(tokens=args[0]))

    def copier(pattern, name):
        t = pattern.shape[-1]
        rows = torch.arange(t - pattern.shape[-2], t)
        out = torch.zeros_like(pattern)
        for h in range(pattern.shape[1]):
            out[:, h, torch.arange(len(rows)), (rows - wrong[h % len(wrong)]).clamp_min(0)] = 1.0
        return out

    def induction(pattern, name):
        match, _ = history_matches(seen["tokens"], wrong, cfg.data.d)
        row = torch.where(
            match.any(1, keepdim=True), match.to(pattern.dtype), torch.ones_like(match, dtype=pattern.dtype)
        )
        out = pattern.clone()
        out[:, :, -1] = (row / row.sum(1, keepdim=True))[:, None, :]
        return out

    last = cfg.model.layers - 1
    for layer in range(last):
        model.hook_dict[f"blocks.{layer}.attn.hook_pattern"].fns.append(copier)
    model.hook_dict[f"blocks.{last}.attn.hook_pattern"].fns.append(induction)


def topic_permutation(id_topics: torch.Tensor) -> torch.Tensor:
    """A permutation of ids that deals each topic's words out across the topics: the single-topic words, listed by
    topic, take the places of the same words listed by their rank within the topic (with T topics of v = T words,
    word k of topic t becomes word t of topic k). Two words of one topic land in different topics, so a
    topic-aligned matrix becomes anti-aligned; words of no or several topics stay."""
    single = torch.nonzero(id_topics.sum(1) == 1).flatten()
    topic = id_topics[single].float().argmax(1)
    order = torch.argsort(topic, stable=True)
    by_topic, topic = single[order], topic[order]
    rank = torch.cat([torch.arange(int(n)) for n in torch.bincount(topic)])  # each word's place in its topic
    dealt = by_topic[torch.argsort(rank * id_topics.shape[1] + topic)]
    perm = torch.arange(len(id_topics))
    perm[by_topic] = dealt
    return perm


def wrong_topics(experiment) -> None:
    """The trained model with its ids relabelled across topics: every axis of length n_ids of every parameter is
    permuted (embedding rows, decoder columns and bias; with one-hot embeddings the whole id-indexed hidden basis,
    a symmetry of the network), so each id-space circuit M becomes P M Pᵀ and the attention follows."""
    perm = topic_permutation(experiment.id_topics.cpu()).to(experiment.device)
    n = len(perm)
    for tensor in experiment.model.parameters():
        value = tensor.detach()
        for axis, size in enumerate(value.shape):
            if size == n:
                value = value.index_select(axis, perm)
        tensor.copy_(value)


# -- the outcomes --------------------------------------------------------------------------------------------------


@functools.cache
def outcomes(name: str, tmp: str) -> dict:
    """claim name → {"kind", "structural", "held": {model → ok}}, with the untrained run's summary and the config."""
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    base = tasks.load(name)
    untrained = _config(name, tmp)
    runs = {"untrained": _summary(untrained, tmp / "untrained")}
    for seed in UNTRAINED_SEEDS:  # a claim that fails at init only for some draws of the init is not falsifiable
        runs[f"untrained seed {seed}"] = _summary(member_config(untrained, seed), tmp / f"untrained-{seed}")
    if base.task in ("induction", "standard"):
        for plant in (wrong_selector, wrong_copier) if base.task == "induction" else (wrong_roles,):
            runs[plant.__name__] = _summary(untrained, tmp / plant.__name__, plant)
    else:
        brief = tasks.build(_config(name, tmp, untrained=False, steps=min(base.train.steps, TOPIC_TRAIN_STEPS)))
        runs["trained briefly"] = train(brief, out=tmp / "trained", figures=False).summary()
        state = brief.model.state_dict()

        def plant(experiment):
            experiment.model.load_state_dict(state)
            wrong_topics(experiment)

        runs["wrong_topics"] = _summary(untrained, tmp / "wrong_topics", plant)
    table = {}
    for claim in base.claims:
        held = {label: next(c["ok"] for c in all_checks(s) if c["name"] == claim.name) for label, s in runs.items()}
        table[claim.name] = {"kind": claim.kind, "structural": structural(claim), "held": held}
    return {"table": table, "untrained": runs["untrained"], "cfg": base, "runs": runs}


@pytest.mark.parametrize("name", RECIPES)
def test_claims_can_fail(name, tmp_path_factory):
    out = outcomes(name, str(tmp_path_factory.mktemp(name.replace("/", "-"))))
    table, untrained, cfg = out["table"], out["untrained"], out["cfg"]
    theory = untrained["theory"]
    for claim in cfg.claims:  # every name a claim reads is produced by the run
        missing = [n for n in _names(claim) if not _produced(n, untrained["final"], theory)]
        assert not missing, f"{claim.name!r} reads {missing}, which the run does not produce"
    results = {n: r for n, r in table.items() if r["kind"] == "result"}
    assert results, "a recipe must state at least one reproduced result"
    held_untrained = [n for n, r in results.items() if any(ok for k, ok in r["held"].items() if "untrained" in k)]
    assert not held_untrained, f"hold on the untrained model: {held_untrained}"
    held_planted = [
        n for n, r in results.items() if r["structural"] and all(ok for k, ok in r["held"].items() if "wrong" in k)
    ]
    assert not held_planted, f"hold on every planted wrong model: {held_planted}"
    if cfg.task == "standard":  # the planted roles are read back: the claims fail on the structure, not by default
        planted = out["runs"]["wrong_roles"]["final"]
        assert planted["used_subset"] not in ("none", theory["predicted_subset"]), planted["used_subset"]
        assert planted["copier_offsets"] == planted["used_subset"], planted["copier_offsets"]


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name in sys.argv[1:] or RECIPES:
            out = outcomes(name, f"{tmp}/{name.replace('/', '-')}")
            for claim, row in out["table"].items():
                cells = " ".join(f"{k}={'held' if v else 'FAILED'}" for k, v in row["held"].items())
                print(f"{name}\t{row['kind']}\t{claim}\t{cells}", flush=True)


if __name__ == "__main__":
    main()
