"""Seeding: every RNG, before fixtures and again before the body, equal to manual seeding."""

from __future__ import annotations

import pytest

REPRODUCE = """
import random
import numpy as np
import torch

def manual(seed):
    random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)
    return random.random(), float(np.random.rand()), torch.rand(1).item()

def draw():
    return random.random(), float(np.random.rand()), torch.rand(1).item()
"""


def test_body_starts_from_the_seed_like_manual_seeding(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        REPRODUCE
        + """
from pytest_determinism import deterministic
import pytest

@deterministic(seed=7)
def test_explicit():
    assert draw() == manual(7)

@pytest.mark.deterministic
def test_session_seed():
    assert draw() == manual(0)
"""
    )
    run().assert_outcomes(passed=2)


def test_session_seed_from_option_and_ini(pytester: pytest.Pytester, run) -> None:
    pytester.makeini("[pytest]\ndeterminism_seed = 11\n")
    pytester.makepyfile(
        REPRODUCE
        + """
import os, pytest

@pytest.mark.deterministic
def test_seed():
    assert draw() == manual(int(os.environ["EXPECTED_SEED"]))
"""
    )
    pytester._monkeypatch.setenv("EXPECTED_SEED", "11")
    run().assert_outcomes(passed=1)
    pytester._monkeypatch.setenv("EXPECTED_SEED", "5")
    run("--determinism-seed", "5").assert_outcomes(passed=1)


def test_function_fixtures_are_built_from_the_seed(pytester: pytest.Pytester, run) -> None:
    """A model built in a fixture is initialised identically whatever ran before."""
    pytester.makepyfile(
        """
import random
import pytest
import torch

@pytest.fixture
def model():
    return torch.nn.Linear(4, 4)

def test_noise_first():
    torch.rand(100)  # moves the global RNG before the next test's fixtures

@pytest.mark.deterministic(seed=3)
def test_weights(model):
    torch.manual_seed(3)
    expected = torch.nn.Linear(4, 4)
    assert torch.equal(model.weight, expected.weight)
"""
    )
    run().assert_outcomes(passed=2)


def test_reseeded_before_body_after_fixtures_drew(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        REPRODUCE
        + """
import pytest

@pytest.fixture
def noisy():
    draw(); draw()

@pytest.mark.deterministic(seed=2)
def test_body(noisy):
    assert draw() == manual(2)
"""
    )
    run().assert_outcomes(passed=1)


def test_body_starts_from_the_seed_with_pytest_randomly(pytester: pytest.Pytester) -> None:
    """pytest-randomly reseeds everything right before each test; ours comes after."""
    pytester.makepyfile(
        REPRODUCE
        + """
import pytest

@pytest.mark.deterministic(seed=9)
def test_a():
    assert draw() == manual(9)

@pytest.mark.deterministic(seed=9)
def test_b():
    assert draw() == manual(9)

def test_unmarked():
    pass
"""
    )
    result = pytester.runpytest("-p", "randomly", "-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*Using --randomly-seed=*"])


def test_class_and_module_markers_merge_closest_first(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        REPRODUCE
        + """
import pytest

pytestmark = pytest.mark.deterministic(seed=4)

def test_module_level():
    assert draw() == manual(4)

@pytest.mark.deterministic(seed=6)
class TestInClass:
    def test_class_level(self):
        assert draw() == manual(6)

    @pytest.mark.deterministic(seed=8)
    def test_own(self):
        assert draw() == manual(8)
"""
    )
    run().assert_outcomes(passed=3)


def test_unmarked_tests_are_left_alone(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        """
import torch

def test_plain():
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark is False or True
"""
    )
    run().assert_outcomes(passed=1)


def test_determinism_fixture_marks_the_test(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        REPRODUCE
        + """
import torch

def test_fixture(determinism):
    assert determinism.seed == 0
    assert torch.are_deterministic_algorithms_enabled()
    assert draw() == manual(0)
"""
    )
    run().assert_outcomes(passed=1)


def test_deterministic_flags_inside_and_restored_after(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        """
import pytest
import torch

@pytest.mark.deterministic(warn_only=True, threads=1)
def test_inside():
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic is True
    assert torch.backends.cudnn.benchmark is False
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.utils.deterministic.fill_uninitialized_memory is True
    assert torch.get_num_threads() == 1

@pytest.mark.deterministic(tf32=True)
def test_tf32_allowed():
    assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.backends.cudnn.allow_tf32 is True

def test_after():
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.allow_tf32 is True
    assert torch.get_float32_matmul_precision() == "highest"
    assert torch.get_num_threads() == int(__import__("os").environ.get("EXPECTED_THREADS"))
"""
    )
    import torch

    pytester._monkeypatch.setenv("EXPECTED_THREADS", str(torch.get_num_threads()))
    run().assert_outcomes(passed=3)


def test_new_tf32_api_family_is_kept(pytester: pytest.Pytester, run) -> None:
    """After the fp32_precision API is used, the legacy getters raise: stay on the new API."""
    pytester.makepyfile(
        """
import pytest
import torch

def test_user_switches_to_new_api():
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"

@pytest.mark.deterministic
def test_marked():
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
    # cuDNN's legacy getter still answers here, so it stays on the legacy family.
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cudnn.conv.fp32_precision != "tf32"

def test_after():
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    torch.backends.cuda.matmul.fp32_precision = "none"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
"""
    )
    run().assert_outcomes(passed=3)
