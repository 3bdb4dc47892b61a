"""GIH, Bayes and reference predictors of paper 2 (docs/induction-heads.md §5) against direct computations on small
cases."""

import math

import pytest
import torch
from typer.testing import CliRunner

from toyformer.cli import app
from toyformer.induction.chains import sample_batch
from toyformer.induction.predictors import bayes_predict, best_gih_a, gih_predict, losses, oracle_predict
from toyformer.random import generator


def _loop_gih(seq: list[int], subset: tuple[int, ...], d: int, a: float) -> list[float]:
    """y = (e^a N(z,·) + U(·)) / (e^a N(z) + L − N(z)), the shrinkage form of docs/induction-heads.md §5, by
    counting."""
    length = len(seq)
    query = [seq[length - s] for s in subset]  # x_{L+1−s}, 0-based: index L − s
    n_match, matched, unmatched = 0, [0.0] * d, [0.0] * d
    for l in range(length):
        hist = [seq[l - s] if l - s >= 0 else None for s in subset]
        if None not in hist and hist == query:
            n_match += 1
            matched[seq[l]] += 1
        else:
            unmatched[seq[l]] += 1
    if a == math.inf:
        if n_match == 0:
            return [u / length for u in unmatched]
        return [m / n_match for m in matched]
    w = math.exp(a)
    return [(w * m + u) / (w * n_match + length - n_match) for m, u in zip(matched, unmatched, strict=True)]


@pytest.mark.parametrize("subset", [(1,), (1, 2), (1, 3), (2, 3)])
@pytest.mark.parametrize("a", [-2.0, 0.0, 0.7, 5.0, 40.0, math.inf])
def test_gih_closed_form_matches_counting(subset, a):
    chains = sample_batch(6, 3, (1, 2), 0.3, 25, generator(1, "gih"))
    inputs = chains.tokens[:, :-1]
    got = gih_predict(inputs, subset, 3, a)
    for b in range(len(inputs)):
        want = _loop_gih(inputs[b].tolist(), subset, 3, a)
        assert got[b].tolist() == pytest.approx(want, abs=1e-12)


def test_gih_at_huge_a_is_the_limit_and_stays_finite():
    # e^a overflows float64 past a = 709: the shrinkage form must still give the a → ±inf limits, also for sequences
    # whose query history never occurred (every weight then on the other class)
    chains = sample_batch(200, 3, (1, 2), 0.3, 12, generator(4, "gih-huge"))
    inputs = chains.tokens[:, :-1]
    for subset in [(1,), (1, 2, 3)]:
        far = gih_predict(inputs, subset, 3, 1000.0)
        assert torch.isfinite(far).all()
        assert torch.allclose(far, gih_predict(inputs, subset, 3, math.inf), atol=1e-12)
        assert torch.allclose(far.sum(1), torch.ones(200, dtype=torch.float64))
        below = gih_predict(inputs, subset, 3, -1000.0)  # all weight on the positions that do not match
        counts = [_loop_gih(inputs[b].tolist(), subset, 3, -50.0) for b in range(200)]
        assert torch.allclose(below, torch.tensor(counts, dtype=torch.float64), atol=1e-12)


def test_bayes_predictive_counts_the_query_context_and_beats_gih_on_average():
    chains = sample_batch(4, 2, (1, 3), 0.5, 30, generator(2, "bayes"))
    inputs = chains.tokens[:, :-1]
    got = bayes_predict(inputs, (1, 3), 2, 0.5)
    for b in range(len(inputs)):
        seq = inputs[b].tolist()
        ctx = (seq[-1], seq[-3])
        counts = [0, 0]
        for l in range(3, len(seq)):
            if (seq[l - 1], seq[l - 3]) == ctx:
                counts[seq[l]] += 1
        want = [(c + 0.5) / (sum(counts) + 1.0) for c in counts]
        assert got[b].tolist() == pytest.approx(want, abs=1e-12)
    # Bayes-optimal: on many sequences its expected nll is below any GIH's and above the oracle's
    big = sample_batch(3000, 3, (1, 2), 0.1, 100, generator(3, "bayes-big"))
    x, y = big.tokens[:, :-1], big.tokens[:, -1]
    bayes = losses(bayes_predict(x, (1, 2), 3, 0.1), y)["nll"]
    oracle = losses(oracle_predict(x, big.kernels, (1, 2), 3), y)["nll"]
    _, best_gih = best_gih_a(big.tokens, (1, 2), 3)
    assert oracle < bayes < best_gih


def test_nll_has_a_finite_best_a_near_six_in_the_e_setting():
    # docs/induction-heads.md §5: hard copy, S* = {1,2}: nll 0.240 at a ≈ 6 (minimum), larger at a = 11.35 and a = 20
    chains = sample_batch(4000, 3, (1, 2), 0.1, 100, generator(0, "best-a"))
    a, best = best_gih_a(chains.tokens, (1, 2), 3)
    assert 4.5 < a < 8.0
    x, y = chains.tokens[:, :-1], chains.tokens[:, -1]
    assert best < losses(gih_predict(x, (1, 2), 3, 11.35), y)["nll"] < losses(gih_predict(x, (1, 2), 3, 20.0), y)["nll"]


def test_losses_nll_and_code_ce():
    y = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=torch.float64)
    target = torch.tensor([0, 1])
    out = losses(y, target)
    assert out["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.1)) / 2, abs=1e-9)
    soft = torch.softmax(y, 1)
    assert out["code-ce"] == pytest.approx(-(math.log(soft[0, 0]) + math.log(soft[1, 1])) / 2)


def test_theory_ngram_cli_json_and_bad_input():
    result = CliRunner().invoke(
        app,
        [
            "theory",
            "ngram",
            "--d",
            "3",
            "--parents",
            "1,2",
            "--alpha",
            "0.1",
            "--heads",
            "3",
            "--degree",
            "2",
            "--layout",
            "code",
            "--sequences",
            "500",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    import json

    out = json.loads(result.stdout)
    assert out["predicted_subset"] == "1,2" and out["mi_margin"] > 0.05
    assert out["mi_modified"]["1,2"] == pytest.approx(0.20, abs=3 * out["mi_modified_se"]["1,2"] + 0.01)
    assert set(out["mi_modified"]) == {"1", "2", "3", "1,2", "1,3", "2,3"}
    for args, named in [
        (["--degree", "4"], "--degree"),
        (["--parents", "1,6"], "--parents"),  # outside the offsets 1..2H-1 the heads can copy
        (["--layout", "code", "--window", "4"], "--window"),  # the code layout has no window
        (["--layout", "paper"], "--window"),
        (["--parents", "x"], "--parents"),
    ]:
        bad = CliRunner().invoke(app, ["theory", "ngram", *args])
        assert bad.exit_code == 2 and named in bad.stderr and "\n" not in bad.stderr.strip()


@pytest.mark.parametrize("parents,seq", [((1,), [0, 1, 1, 0, 1, 1, 1, 0, 0, 1]), ((1, 2), [1, 0, 0, 1, 0, 0, 1, 1, 0])])
def test_bayes_predictive_against_monte_carlo_posterior(parents, seq):
    """E[π(·|c) | x_1..x_L] by importance weighting kernels drawn from the prior with the chain's likelihood."""
    from toyformer.induction.chains import sample_kernels

    d, alpha, n = 2, 0.5, 400_000
    kernels = sample_kernels(n, d, len(parents), alpha, generator(9, "bayes-mc"))  # (n, d^|pa|, d)
    m = max(parents)
    log_w = torch.zeros(n, dtype=torch.float64)
    for l in range(m, len(seq)):  # the uniform start does not depend on π
        code = 0
        for p in parents:
            code = code * d + seq[l - p]
        log_w += kernels[:, code, seq[l]].log()
    code = 0
    for p in parents:
        code = code * d + seq[len(seq) - p]
    w = torch.softmax(log_w, 0)
    mc = (w[:, None] * kernels[:, code, :]).sum(0)
    se = ((w[:, None] ** 2 * (kernels[:, code, :] - mc) ** 2).sum(0)).sqrt()
    got = bayes_predict(torch.tensor([seq]), parents, d, alpha)[0]
    assert torch.all((got - mc).abs() < 5 * se + 1e-4), (got, mc, se)
