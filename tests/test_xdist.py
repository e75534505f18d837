"""pytest-xdist: seeds independent of the worker, summaries and unused goldens merged."""

from __future__ import annotations

from pathlib import Path

import pytest

SUITE = """
import random
import pytest
import torch

@pytest.mark.deterministic
@pytest.mark.parametrize("n", range(6))
def test_param(golden_tensor, n):
    golden_tensor.check(torch.rand(n + 1), name="x")
    golden_tensor.check(random.random(), name="r")
"""


def _goldens(pytester: pytest.Pytester) -> list[Path]:
    return sorted(Path(pytester.path).rglob("*.safetensors"))


def test_update_compare_and_ci_mode_under_two_workers(pytester: pytest.Pytester, run) -> None:
    # Each -n 2 run starts three interpreters that import torch: few runs, each asking a lot.
    pytester.makepyfile(test_a=SUITE, test_b=SUITE)
    result = run("-n", "2", "--dist", "load", "--update-golden")
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines(["golden: 24 written"])
    assert len(_goldens(pytester)) == 12
    # Same seeds in one process: the goldens written by two workers match exactly.
    single = run("-p", "no:xdist")
    single.assert_outcomes(passed=12)
    single.stdout.fnmatch_lines(["golden: 24 passed"])
    result = run("-n", "2", "--dist", "loadfile", "--determinism")
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines(
        [
            "golden: 24 passed",
            "determinism: 12 tests x 2 runs (+1 other-seed run), 0 nondeterministic",
        ]
    )


def test_unused_goldens_are_merged_and_a_crash_never_deletes(
    pytester: pytest.Pytester, run
) -> None:
    pytester.makepyfile(test_a=SUITE)
    run("-n", "2", "--update-golden").assert_outcomes(passed=6)
    shrunk = SUITE.replace("range(6)", "range(4)")
    pytester.makepyfile(test_a=shrunk + "\ndef test_crash():\n    import os\n    os._exit(1)\n")
    result = run("-n", "2", "--update-golden", "-v")
    result.stdout.fnmatch_lines(
        [
            "golden: * passed, 2 unused (incomplete: a pytest-xdist worker went down*",
            "  unused *test_param_5*",
        ]
    )
    assert len(_goldens(pytester)) == 6
    pytester.makepyfile(test_a=shrunk)
    result = run("-n", "2", "--update-golden")
    result.stdout.fnmatch_lines(["golden: 8 passed, 2 unused deleted"])
    assert len(_goldens(pytester)) == 4


def test_a_case_clash_is_warned_about_once_not_once_per_worker(
    pytester: pytest.Pytester, run
) -> None:
    pytester.makepyfile(
        test_case="""
def test_Logits(golden_tensor):
    golden_tensor.check(1.0)

def test_logits(golden_tensor):
    golden_tensor.check(2.0)
"""
    )
    result = run("-n", "2", "--update-golden")
    result.assert_outcomes(passed=2, warnings=2)
    output = result.stdout.str()
    for nodeid in ("test_case.py::test_Logits", "test_case.py::test_logits"):
        assert output.count(f"the golden file of {nodeid} differs only in letter case") == 1
