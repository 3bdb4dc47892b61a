"""Long reproductions (``bash scripts/test.sh --slow``): every shipped recipe at full length, every claim (results,
nulls and sanity checks) must hold, except where a recipe's header reports that the model does not do what the
theory predicts: there exactly the claims it names fail.

One recipe is shortened, as said here: E4's joint (c, w) stage runs 20,000 steps instead of 500,000 (about an hour
on 2 CPU cores); its recipe header reports that the selection is the same. E3 (57,000 steps), E6 (50,000 steps of
the full variant) and the distractor run take several minutes each.
"""

import pytest

from toyformer import config, tasks
from toyformer.claims import all_checks
from toyformer.runs import Run
from toyformer.train.loop import train
from toyformer.train.seeds import run_seeds

SHORTENED = {"induction/e4": ["train.stages.0.steps=20000"]}

GAP = "the loss at x_{L+1} closes >= 90% of the gap from the in-context unigram to the GIH at (S*, a*)"
PHASES = "the loss passes the unigram, the best one-parent GIH and the full GIH in that order"
# Where an ordinary transformer does not do what the theory predicts, its recipe header says so with the numbers:
# there these claims must fail (the result), and every other claim must hold.
MISMATCH = {
    "induction/standard-attn2": {GAP, PHASES},
    "induction/standard-p13": {
        "the subset the induction head uses is the theory's S*",
        "first-layer heads copy the offsets of S*",
        GAP,
        PHASES,
    },
}


def _train(cfg, out, resume=None):
    return train(tasks.build(cfg), out=out, resume=resume, figures=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", config.recipe_names())
def test_recipe_claims_hold(tmp_path, name):
    if name == "topic/wiki-mlm":
        pytest.importorskip("gensim")
    cfg = tasks.load(name, SHORTENED.get(name, []))
    path = (
        run_seeds(cfg, tasks.task_of(cfg), cfg.seeds, tmp_path / "g") if cfg.seeds else _train(cfg, tmp_path / "r").path
    )
    failed = {c["name"] for c in all_checks(Run(path).summary()) if not c["ok"]}
    assert failed == MISMATCH.get(name, set()), failed
