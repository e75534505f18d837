"""The determinism fixture: seed, generators, DataLoader workers."""

from __future__ import annotations

import pickle

import pytest

from pytest_determinism.fixture import WorkerInitFn


def test_seed_generator_and_rng(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        """
import numpy as np
import pytest
import torch

@pytest.mark.deterministic(seed=21)
def test_tools(determinism):
    assert determinism.seed == 21
    g = determinism.generator()
    assert isinstance(g, torch.Generator) and g.initial_seed() == 21
    expected = torch.rand(3, generator=torch.Generator().manual_seed(21))
    assert torch.equal(torch.rand(3, generator=g), expected)
    assert determinism.rng().random() == np.random.default_rng(21).random()
    # fresh each call
    assert torch.equal(torch.rand(3, generator=determinism.generator()), expected)
"""
    )
    run().assert_outcomes(passed=1)


def test_dataloader_workers_yield_identical_data(pytester: pytest.Pytester, run) -> None:
    """Two workers, twice in one test, the parent's RNG moved in between: same data."""
    pytester.makepyfile(
        """
import random
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

class Noisy(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.tensor([random.random(), float(np.random.rand()), torch.rand(1).item()])

def load(determinism):
    loader = DataLoader(
        Noisy(), batch_size=2, num_workers=2, worker_init_fn=determinism.worker_init_fn
    )
    return torch.cat(list(loader))

def test_workers(determinism):
    first = load(determinism)
    torch.rand(10); random.random(); np.random.rand()
    second = load(determinism)
    assert torch.equal(first, second)
    # the two workers draw different numbers from each other
    assert not torch.equal(first[0], first[2])
"""
    )
    run().assert_outcomes(passed=1)


def test_worker_init_fn_pickles_for_spawn() -> None:
    fn = WorkerInitFn(5)
    assert pickle.loads(pickle.dumps(fn)) == fn
