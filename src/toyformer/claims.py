"""A recipe's claims checked against its run: ``{"name", "ok", "measured", "expected"}`` per claim.

Sides of a claim are sums and differences of names and numbers, e.g. ``"wv_same_topic - wv_diff_topic"``; a bare
name reads the run's ``final`` metrics, ``theory.x`` reads the theory's prediction ``x``, and a dotted name reads
inside a nested value (``subset_share.110``). The ``==`` claim compares two single values as they are (strings too:
``selected_subset == theory.predicted_subset``).
"""

from __future__ import annotations

import operator
import re

from toyformer.config import Claim

_TOKEN = re.compile(r"\s*([+-])?\s*([A-Za-z_][\w.]*|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)")
_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def parse_terms(text: str) -> list[tuple[float, str]]:
    """'a - b + 2' → [(1, 'a'), (-1, 'b'), (1, '2')]; raises ValueError on anything else."""
    terms, pos = [], 0
    while pos < len(text.rstrip()):
        m = _TOKEN.match(text, pos)
        if m is None or (terms and m.group(1) is None):
            raise ValueError(f"cannot read {text!r}: write names and numbers joined by + and -")
        terms.append((-1.0 if m.group(1) == "-" else 1.0, m.group(2)))
        pos = m.end()
    return terms


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
        if not isinstance(x, int | float):
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
            "measured": left,
            "reference": right,
            "ok": left is not None and left == right,
            "expected": f"{claim.left} == {claim.right}",
            "against": f"== {right}",
        }
    left, right = value(claim.left, final, theory), value(claim.right, final, theory)
    out = {"name": claim.name, "measured": left, "reference": right}
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


def summarize(cfg, final: dict, theory: dict, **extra) -> dict:
    """A run's summary.json: its final metrics, the theory's predictions and every claim checked against them."""
    train = getattr(cfg, "train", None)  # an analysis has no training
    return {
        "name": cfg.name,
        "seed": cfg.seed,
        **({"steps": train.steps} if train is not None else {}),
        "final": final,
        "theory": theory,
        **extra,
        "checks": [check(c, final, theory) for c in cfg.claims],
    }
