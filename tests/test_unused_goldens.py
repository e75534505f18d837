"""Unused goldens: found like syrupy does, never falsely; deleted only after a whole run."""

from __future__ import annotations

from pathlib import Path

import pytest

SUITE = """
import pytest
import torch

@pytest.mark.parametrize("n", [1, 2, 3])
def test_param(golden_tensor, n):
    golden_tensor.check(torch.arange(n), name="x")

def test_plain(golden_tensor):
    golden_tensor.check(torch.ones(2), name="x")
"""


def _goldens(pytester: pytest.Pytester) -> set[str]:
    return {p.name for p in Path(pytester.path).rglob("*.safetensors")}


@pytest.fixture
def recorded(pytester: pytest.Pytester, run) -> pytest.Pytester:
    pytester.makepyfile(test_suite=SUITE)
    run("--update-golden").assert_outcomes(passed=4)
    assert len(_goldens(pytester)) == 4
    return pytester


def test_removed_parametrize_id_is_unused_and_listed_with_v(recorded, run) -> None:
    recorded.makepyfile(test_suite=SUITE.replace("[1, 2, 3]", "[1, 2]"))
    result = run()
    result.stdout.fnmatch_lines(["golden: 3 passed, 1 unused", "*-v lists them*"])
    result = run("-v")
    result.stdout.fnmatch_lines(["  unused *test_param_3*.safetensors"])
    assert len(_goldens(recorded)) == 4


def test_update_on_the_whole_suite_deletes_unused(recorded, run) -> None:
    recorded.makepyfile(test_suite=SUITE.replace("[1, 2, 3]", "[1, 2]"))
    result = run("--update-golden")
    result.stdout.fnmatch_lines(["golden: 3 passed, 1 unused deleted", "  deleted *test_param_3*"])
    assert len(_goldens(recorded)) == 3


def test_test_that_stopped_checking_is_unused(recorded, run) -> None:
    recorded.makepyfile(
        test_suite=SUITE.replace('golden_tensor.check(torch.ones(2), name="x")', "pass")
    )
    run().stdout.fnmatch_lines(["golden: 3 passed, 1 unused"])


@pytest.mark.parametrize(
    "args",
    [
        ("-k", "plain"),
        ("test_suite.py::test_plain",),
        ("-m", "not slow"),
        ("--deselect", "test_suite.py::test_plain"),
    ],
)
def test_filtered_runs_never_report_or_delete_false_unused(recorded, run, args) -> None:
    result = run("--update-golden", *args)
    result.stdout.no_fnmatch_line("golden:*unused*")
    assert len(_goldens(recorded)) == 4


def test_filtered_update_keeps_a_truly_unused_golden(recorded, run) -> None:
    recorded.makepyfile(test_suite=SUITE.replace("[1, 2, 3]", "[1, 2]"))
    result = run("--update-golden", "-k", "param")
    result.stdout.fnmatch_lines(["*unused goldens are deleted only when the whole suite runs*"])
    assert len(_goldens(recorded)) == 4


def test_skipped_and_failed_tests_are_not_unused(recorded, run) -> None:
    recorded.makepyfile(
        test_suite=SUITE.replace(
            "def test_plain(golden_tensor):", "@pytest.mark.skip\ndef test_plain(golden_tensor):"
        ).replace('name="x")\n\n', 'name="x")\n    assert n != 2\n\n', 1)
    )
    result = run("--update-golden")
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    result.stdout.no_fnmatch_line("golden:*unused*")
    result.stdout.fnmatch_lines(["*nothing written for 1 failed test*test_param?2?*"])
    assert len(_goldens(recorded)) == 4


def test_last_failed_never_deletes(recorded, run) -> None:
    recorded.makepyfile(test_suite=SUITE.replace("[1, 2, 3]", "[1, 2, 4]"))
    run().assert_outcomes(passed=3, failed=1)
    result = run("--update-golden", "--lf")
    result.stdout.no_fnmatch_line("*deleted*.safetensors")
    assert len(_goldens(recorded)) == 5


def test_stop_on_failure_never_deletes(recorded, run) -> None:
    recorded.makepyfile(
        test_suite=SUITE.replace("[1, 2, 3]", "[1, 2]") + "\ndef test_zfail():\n    assert False\n"
    )
    result = run("--update-golden", "-x")
    result.stdout.no_fnmatch_line("*deleted*.safetensors")
    assert len(_goldens(recorded)) == 4


def test_collection_error_never_deletes(recorded, run) -> None:
    recorded.makepyfile(test_suite=SUITE.replace("[1, 2, 3]", "[1, 2]"))
    recorded.makepyfile(test_broken="import nonexistent_module_xyz\n")
    result = run("--update-golden")
    result.stdout.no_fnmatch_line("*deleted*.safetensors")
    assert len(_goldens(recorded)) == 4
