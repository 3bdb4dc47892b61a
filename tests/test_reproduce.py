"""Long reproductions (``bash scripts/test.sh --slow``): every recipe at full length, each claim must hold.

The p_c = 0 ablation is not here: its claim is the theory's prediction, and the run reports the outcome either way.
"""

import pytest

from toyformer import config
from toyformer.runs import Run
from toyformer.train.seeds import run_seeds
from toyformer.train.topic import run_topic

RECIPES = [n for n in config.recipe_names() if n.startswith("topic/") and n != "topic/pc0"]


def _train(cfg, out, resume=None):
    return run_topic(cfg, out=out, resume=resume, figures=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_claims_hold(tmp_path, name):
    cfg = config.load(name)
    path = run_seeds(cfg, cfg.seeds, tmp_path / "g", _train) if cfg.seeds else _train(cfg, tmp_path / "r").path
    failed = [c for c in Run(path).summary()["checks"] if not c["ok"]]
    assert not failed, failed
