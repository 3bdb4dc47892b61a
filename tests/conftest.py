import pytest
import torch

torch.set_num_threads(1)  # the tests use small tensors; one thread avoids oversubscription

# Settings that keep a whole run to a few seconds: small splits, short theory simulation, few probes.
FAST = ["data.train_docs=200", "data.dev_docs=50", "theory.samples=200", "train.probes=6", "probes.docs=8"]


@pytest.fixture
def fast():
    return list(FAST)


@pytest.fixture(autouse=True, scope="session")
def _topics_cache(tmp_path_factory):
    """Fitted corpus topics go to a temporary cache, never the user's."""
    patch = pytest.MonkeyPatch()
    patch.setenv("TOYFORMER_CACHE", str(tmp_path_factory.mktemp("toyformer-cache")))
    yield
    patch.undo()
