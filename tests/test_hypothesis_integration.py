"""hypothesis: every example starts from the seed, torch's RNG included."""

from __future__ import annotations

import pytest


def test_each_example_starts_from_the_seed(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        """
import random
import numpy as np
import torch
import pytest
from hypothesis import given, settings, strategies as st

seen = []

@pytest.mark.deterministic(seed=5)
@settings(max_examples=20, database=None)
@given(st.integers())
def test_draws(n):
    seen.append((random.random(), float(np.random.rand()), torch.rand(1).item()))

def test_all_examples_started_from_the_seed():
    random.seed(5); np.random.seed(5); torch.manual_seed(5)
    expected = (random.random(), float(np.random.rand()), torch.rand(1).item())
    assert len(seen) >= 2
    assert set(seen) == {expected}
"""
    )
    run().assert_outcomes(passed=2)


def test_unmarked_given_tests_get_a_reproducible_torch_rng(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        """
import torch
from hypothesis import given, settings, strategies as st

seen = []

@settings(max_examples=20, database=None)
@given(st.integers())
def test_draws(n):
    seen.append(torch.rand(1).item())

def test_reproducible():
    assert len(seen) >= 2 and len(set(seen)) == 1
"""
    )
    run().assert_outcomes(passed=2)


def test_torch_state_is_restored_after_each_example(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        """
import torch
from hypothesis import given, settings, strategies as st

@settings(max_examples=5, database=None)
@given(st.integers())
def test_draws(n):
    torch.rand(1)

def test_state_unchanged_by_hypothesis():
    torch.manual_seed(1)
    before = torch.get_rng_state()
    test_draws()
    assert torch.equal(torch.get_rng_state(), before)
"""
    )
    run().assert_outcomes(passed=2)
