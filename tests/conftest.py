"""Shared fixtures: tiny seeded data and models that train in well under a second on a CPU."""

import pytest
import torch

from banets.engine import TrainConfig
from banets.models import create_model


@pytest.fixture
def blobs():
    """A 4-class problem of Gaussian blobs in 8 dimensions: (train, val, test) tensor pairs."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 8, generator=gen) * 4

    def sample(n):
        y = torch.randint(0, 4, (n,), generator=gen)
        return centers[y] + torch.randn(n, 8, generator=gen), y

    return sample(256), sample(128), sample(128)


@pytest.fixture
def tiny_config():
    return TrainConfig(epochs=3, lr=0.1, weight_decay=1e-4, milestones=[0.6], progress="none")


@pytest.fixture
def mlp_fn():
    return lambda: create_model("mlp", in_features=8, num_classes=4, hidden=(16,))


@pytest.fixture
def one_thread():
    """Tiny models run fastest, and leave a shared machine alone, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
