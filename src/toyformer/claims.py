"""A recipe's claims checked against its run: ``{"name", "ok", "measured", "expected"}`` per claim.

Sides of a claim are sums and differences of names and numbers, e.g. ``"wv_same_topic - wv_diff_topic"``; a bare
name reads the run's ``final`` metrics, ``theory.x`` reads the theory's prediction ``x``, and a dotted name reads
inside a nested value (``subset_share.110``). The ``==`` claim compares two single values as they are (strings too:
``selected_subset == theory.predicted_subset``).

A claim is of one of three kinds (``Claim.kind``). A ``result`` states what a paper found; it must fail on an
untrained model and on one with the wrong structure (tests/test_falsifiable.py holds every shipped recipe to
that). A ``null`` states the theory's prediction that a structure does not form; it holds at initialisation by
nature, so its recipe also states a result showing that the model did learn. Both are listed under ``checks``. A
``sanity`` check is a bound that holds at initialisation too (the model's own form, each stage moving only its own
parameters): it guards against broken runs, is listed apart under ``sanity_checks``, and is never a result.
"""

from __future__ import annotations

import operator

from toyformer.config import Claim, parse_terms

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def lookup(term: str, final: dict, theory: dict):
    """The value a name stands for, or None when it is missing."""
    source, key = (theory, term[7:]) if term.startswith("theory.") else (final, term)
    if key in source:
        return source[key]
    node = source
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def value(text: str, final: dict, theory: dict) -> float | None:
    total = 0.0
    for sign, term in parse_terms(text):
        if term[0].isdigit():
            total += sign * float(term)
            continue
        x = lookup(term, final, theory)
        if isinstance(x, bool) or not isinstance(x, int | float):
            return None
        total += sign * float(x)
    return total


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


def check(claim: Claim, final: dict, theory: dict) -> dict:
    """``expected`` states the claim in its own terms; ``against`` with the numbers it was compared with."""
    if claim.op == "==":
        left, right = lookup(claim.left.strip(), final, theory), lookup(claim.right.strip(), final, theory)
        return {
            "name": claim.name,
            "kind": claim.kind,
            "measured": left,
            "reference": right,
            "ok": left is not None and left == right,
            "expected": f"{claim.left} == {claim.right}",
            "against": f"== {right}",
        }
    left, right = value(claim.left, final, theory), value(claim.right, final, theory)
    out = {"name": claim.name, "kind": claim.kind, "measured": left, "reference": right}
    if claim.op == "close":
        scale = value(claim.scale, final, theory) if claim.scale else right
        ok = None not in (left, right, scale) and abs(left - right) <= claim.rel * abs(scale)
        tolerance = None if scale is None else claim.rel * abs(scale)
        return out | {
            "ok": bool(ok),
            "expected": f"|{claim.left} − ({claim.right})| <= {claim.rel:g}·|{claim.scale or claim.right}|",
            "against": f"{_num(right)} ± {_num(tolerance)}",
        }
    ok = left is not None and right is not None and _OPS[claim.op](left, claim.factor * right)
    factor = f"{claim.factor:g}·" if claim.factor != 1 else ""
    return out | {
        "ok": bool(ok),
        "expected": f"{claim.left} {claim.op} {factor}({claim.right})",
        "against": f"{claim.op} {factor}{_num(right)}",
    }


CHECK_KEYS = {"result": "checks", "null": "checks", "sanity": "sanity_checks"}  # claim kind → its summary key
SUMMARY_KEYS = ("checks", "sanity_checks")


def by_kind(claims: list[Claim]) -> dict[str, list[Claim]]:
    """The summary keys (``checks``: results and nulls; ``sanity_checks``) → their claims, in recipe order."""
    return {key: [c for c in claims if CHECK_KEYS[c.kind] == key] for key in SUMMARY_KEYS}


def all_checks(summary: dict) -> list[dict]:
    """Every checked claim of a summary, results and nulls first."""
    return [c for key in SUMMARY_KEYS for c in summary.get(key, [])]


def summarize(cfg, final: dict, theory: dict, **extra) -> dict:
    """A run's summary.json: its final metrics, the theory's predictions and every claim checked against them
    (reproduced results under ``checks``, sanity checks under ``sanity_checks``)."""
    train = getattr(cfg, "train", None)  # an analysis has no training
    return {
        "name": cfg.name,
        "seed": cfg.seed,
        **({"steps": train.steps} if train is not None else {}),
        "final": final,
        "theory": theory,
        **extra,
        **{key: [check(c, final, theory) for c in claims] for key, claims in by_kind(cfg.claims).items()},
    }
