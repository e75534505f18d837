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


@pytest.mark.parametrize(
    "strictness", [("--strict-markers",), ("-W", "error::pytest.PytestUnknownMarkWarning")]
)
def test_a_disabled_plugin_leaves_no_trace_when_hypothesis_loads_it(
    pytester: pytest.Pytester, strictness: tuple[str, ...]
) -> None:
    # hypothesis loads our `hypothesis` entry point whenever it is imported, also under
    # -p no:determinism; the suite must then pass as if the plugin were not installed.
    pytester.makepyfile(
        """
import sys
from hypothesis import given, settings, strategies as st

@settings(max_examples=1, database=None)
@given(st.integers())
def test_one_example(n):
    assert "pytest_determinism.plugin" not in sys.modules
    assert "torch" not in sys.modules
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:determinism", "-p", "no:randomly", *strictness)
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    result.stdout.no_fnmatch_line("*deterministic*")
    result.stdout.no_fnmatch_line("*warning*")


def test_a_disabled_plugin_registers_nothing_with_hypothesis(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
from hypothesis import given, settings, strategies as st
from hypothesis.internal.entropy import RANDOMS_TO_MANAGE

@settings(max_examples=1, database=None)
@given(st.integers())
def test_nothing_of_ours_is_managed(n):
    names = [type(r).__module__ for r in list(RANDOMS_TO_MANAGE.values())]
    assert not [name for name in names if name.startswith("pytest_determinism")]
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:determinism", "-p", "no:randomly")
    result.assert_outcomes(passed=1)
