"""--determinism-threads / ini determinism_threads: one CPU thread count for marked tests."""

from __future__ import annotations

import json

import pytest
import torch

SUITE = """
import pytest
import torch

OUTSIDE = torch.get_num_threads()

@pytest.mark.deterministic
def test_pinned(golden_tensor):
    assert torch.get_num_threads() == {expected}
    golden_tensor.check(torch.ones(3))

@pytest.mark.deterministic(threads=2)
def test_marker_wins():
    assert torch.get_num_threads() == 2

def test_unmarked_is_left_alone():
    assert torch.get_num_threads() == OUTSIDE
"""


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield threads
    torch.set_num_threads(threads)


def test_the_ini_pin_applies_where_the_marker_sets_none(
    pytester: pytest.Pytester, run, restore_threads: int
) -> None:
    pytester.makeini("[pytest]\ndeterminism_threads = 1\n")
    pytester.makepyfile(SUITE.format(expected=1))
    result = run("--update-golden", "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["determinism: seed 0, threads 1, torch *"])
    assert torch.get_num_threads() == restore_threads, "the count is restored after the tests"
    golden = next(pytester.path.rglob("test_pinned.safetensors"))
    header_size = int.from_bytes(golden.read_bytes()[:8], "little")
    metadata = json.loads(golden.read_bytes()[8 : 8 + header_size])["__metadata__"]
    assert metadata["threads"] == "1", "the count in force is recorded in the golden"


def test_the_command_line_wins_over_the_ini(
    pytester: pytest.Pytester, run, restore_threads: int
) -> None:
    pytester.makeini("[pytest]\ndeterminism_threads = 1\n")
    pytester.makepyfile(SUITE.format(expected=3))
    result = run("--update-golden", "--determinism-threads", "3")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["determinism: seed 0, threads 3, torch *"])
    assert torch.get_num_threads() == restore_threads


def test_without_a_pin_the_count_is_left_alone(
    pytester: pytest.Pytester, run, restore_threads: int
) -> None:
    pytester.makepyfile(SUITE.format(expected=restore_threads))
    result = run("--update-golden")
    result.assert_outcomes(passed=3)
    result.stdout.no_fnmatch_line("*threads*torch*")
