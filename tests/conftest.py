import pytest
import torch

torch.set_num_threads(1)  # the tests use small tensors; one thread avoids oversubscription

# Settings that keep a whole run to a few seconds: small splits, short theory simulation, few probes.
FAST = ["data.train_docs=200", "data.dev_docs=50", "theory.samples=200", "train.probes=6", "probes.docs=8"]


@pytest.fixture
def fast():
    return list(FAST)
