"""Options, ini keys and marker arguments: parsed, validated, and bad ones named clearly."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ("deterministic(sede=3)", "*test_bad: deterministic got an unknown argument 'sede'*"),
        ("deterministic(3)", "*test_bad: deterministic takes keyword arguments only*seed=3*"),
        ('deterministic(seed="x")', "*test_bad: seed must be an int, got str 'x'*"),
        ("deterministic(seed=-1)", "*test_bad: seed must be between 0 and 2**32 - 1, got -1*"),
        ("deterministic(seed=True)", "*test_bad: seed must be an int, got bool True*"),
        ('deterministic(eval_mode="yes")', "*test_bad: eval_mode must be True, False or*"),
        ("deterministic(eval_mode=1)", "*test_bad: eval_mode must be True, False or*"),
        ("deterministic(threads=0)", "*test_bad: threads must be a positive int or None*"),
        ('deterministic(warn_only="no")', "*test_bad: warn_only must be True or False*"),
        ("deterministic(stochastic=1)", "*test_bad: stochastic must be True or False*"),
    ],
)
def test_bad_marker_arguments_are_usage_errors(
    pytester: pytest.Pytester, run, marker: str, expected: str
) -> None:
    pytester.makepyfile(
        f"""
import pytest

@pytest.mark.{marker}
def test_bad():
    pass

def test_fine():
    pass
"""
    )
    result = run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stderr.no_fnmatch_line("*Traceback*")


def test_bad_argument_in_a_deselected_test_does_not_block(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.deterministic(sede=3)
def test_bad():
    pass

def test_fine():
    pass
"""
    )
    run("-k", "fine").assert_outcomes(passed=1, deselected=1)


@pytest.mark.parametrize(
    ("args", "ini", "expected"),
    [
        (["--determinism-runs", "0"], "", "*--determinism-runs must be at least 1*got 0*"),
        (["--determinism-runs", "two"], "", "*--determinism-runs must be a whole number*'two'*"),
        (["--determinism-seed", "-4"], "", "*--determinism-seed must be between 0 and 2**32 - 1*"),
        (["--determinism-seed", "abc"], "", "*--determinism-seed must be an integer seed*'abc'*"),
        ([], "determinism_seed = x1", "*ini determinism_seed must be an integer seed, got 'x1'*"),
        ([], "determinism_runs = 0", "*ini determinism_runs must be at least 1*"),
        ([], "golden_dir = ../outside", "*ini golden_dir must be a folder inside the rootdir*"),
        ([], "golden_tolerances = bfloat16 rtol=1", "*ini golden_tolerances*"),
        (["--determinism-threads", "0"], "", "*--determinism-threads must be at least 1 thr*"),
        (["--determinism-threads", "all"], "", "*--determinism-threads must be a whole number*"),
        ([], "determinism_threads = 1.5", "*ini determinism_threads must be a whole number*"),
    ],
)
def test_bad_options_are_usage_errors(
    pytester: pytest.Pytester, run, args: list[str], ini: str, expected: str
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_fine():\n    pass\n")
    result = run(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])
    result.stderr.no_fnmatch_line("*Traceback*")


def test_marker_is_registered_and_documented(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        """
from pytest_determinism import deterministic

@deterministic
def test_bare():
    pass

@deterministic(seed=1, eval_mode="strict", warn_only=True, tf32=False, threads=1)
def test_called():
    pass
"""
    )
    run("--strict-markers").assert_outcomes(passed=2)
    markers = run("--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.deterministic(seed=None, eval_mode=True*"])


def test_options_are_in_help(pytester: pytest.Pytester, run) -> None:
    result = run("--help")
    result.stdout.fnmatch_lines(
        [
            "*--update-golden*",
            "*--determinism *",
            "*--determinism-runs=N*",
            "*--determinism-seed=N*",
            "*--determinism-threads=N*",
            "*--determinism-report=PATH*",
            "*determinism_seed (string)*",
            "*golden_tolerances (linelist)*",
        ]
    )
