"""--determinism says what it did: a body that is not re-entrant, warnings once per test,
and the tests whose runs checked no values."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from pytest_determinism.json_report import SCHEMA_PATH

PATCHING = """
import types
import pytest
import torch

settings = types.SimpleNamespace()
model = torch.nn.Linear(4, 2)

@pytest.mark.deterministic
def test_patch(monkeypatch):
    model(torch.ones(1, 4))
    assert not hasattr(settings, "fast_path")
    monkeypatch.setattr(settings, "fast_path", True, raising=False)
"""


def _failure_section(result: pytest.RunResult, name: str) -> str:
    text = result.stdout.str()
    start = text.index(f"_ {name} _")
    return text[start : text.index("short test summary", start)]


@pytest.mark.parametrize("runs", ["2", "1"])
def test_a_fixture_patched_in_run_0_is_reported_as_not_reentrant(
    pytester: pytest.Pytester, run, runs: str
) -> None:
    # With one run, the probe run is the later run that fails.
    pytester.makepyfile(test_patching=PATCHING)
    report_path = pytester.path / "report.json"
    result = run(
        "--determinism", "--determinism-runs", runs, "--determinism-report", str(report_path)
    )
    result.assert_outcomes(failed=1)
    later = "run 1" if runs == "2" else "the probe run"
    result.stdout.fnmatch_lines(
        [
            # Made again with recording, the runs fail alike: no module behaved differently.
            f"Not re-entrant: {later} failed where run 0 passed, and made again with module "
            "recording on, the runs agreed in every module call*",
            "  run 0 returned normally",
            f"  {later} raised AssertionError: assert not True",
            "    (raised at test_patching.py:11)",
            "  likely cause: the test body is not re-entrant",
            "*This test uses the function-scoped fixture monkeypatch: the likely carrier of "
            "run 0's changes*",
            "  fix: *monkeypatch.context()*",
            f"determinism: 1 tests x {runs} runs*, 0 nondeterministic, 1 checked no values",
        ]
    )
    section = _failure_section(result, "test_patch")
    assert "random" not in section.lower() and "Nondeterministic" not in section
    report = json.loads(report_path.read_text())
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))
    (test,) = report["tests"]
    assert test["not_reentrant"] is True and test["nondeterministic"] is False
    assert test["verdict"] is None and report["summary"]["nondeterministic"] == []


def test_a_module_that_raises_on_run_0s_change_is_not_blamed(
    pytester: pytest.Pytester, run
) -> None:
    # The failure is inside a forward: that call raised on the inputs run 0 gave it.
    pytester.makepyfile(
        test_guarded="""
import types
import pytest
import torch

settings = types.SimpleNamespace()

class Guarded(torch.nn.Module):
    def forward(self, x, scale=2.0):
        if hasattr(settings, "fast_path"):
            raise RuntimeError("fast path already on")
        return x * scale

@pytest.mark.deterministic
def test_guarded(monkeypatch):
    Guarded()(torch.ones(2), scale=3.0)
    monkeypatch.setattr(settings, "fast_path", True, raising=False)
"""
    )
    result = run("--determinism")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "Not re-entrant: run 1 failed where run 0 passed*",
            "  run 1 raised RuntimeError: fast path already on",
            "*fixture monkeypatch: the likely carrier*",
        ]
    )
    assert "random" not in _failure_section(result, "test_guarded").lower()


def test_a_file_appended_to_under_tmp_path_names_tmp_path(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        test_log="""
import pytest

@pytest.mark.deterministic
def test_log(tmp_path, golden_tensor):
    log = tmp_path / "steps.log"
    with log.open("a") as stream:
        stream.write("step\\n")
    lines = log.read_text().splitlines()
    golden_tensor.check(len(lines), name="lines")
    assert len(lines) == 1
"""
    )
    run("--update-golden").assert_outcomes(passed=1)
    result = run("--determinism")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "Not re-entrant: run 1 failed where run 0 passed, after the same module calls*",
            "  run 1 raised AssertionError: assert 2 == 1",
            "*function-scoped fixture tmp_path: the likely carrier*(a file written or "
            "appended to)*",
            "  fix: *write files afresh*tmp_path_factory.mktemp*",
            "determinism: 1 tests x 2 runs, 0 nondeterministic",
        ]
    )
    section = _failure_section(result, "test_log")
    # golden_tensor starts afresh each run: it is never named as a carrier.
    assert "random" not in section.lower() and "golden_tensor" not in section


def test_a_later_failure_after_a_module_output_differed_stays_nondeterministic(
    pytester: pytest.Pytester, run
) -> None:
    pytester.makepyfile(
        test_noise="""
import numpy as np
import pytest
import torch

class Noisy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rng = np.random.default_rng()

    def forward(self, x):
        return x + torch.from_numpy(self.rng.random(x.shape).astype("float32"))

model = Noisy()
seen = []

@pytest.mark.deterministic
def test_noise():
    seen.append(model(torch.ones(3)))
    assert all(torch.equal(seen[0], value) for value in seen)
"""
    )
    result = run("--determinism")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "Nondeterministic: run 1 differs from run 0*",
            "  module: <root Noisy>",
            "*likely cause: randomness outside the seeded RNGs*",
            "determinism: 1 tests x 2 runs, 1 nondeterministic, 1 checked no values",
        ]
    )
    assert "Not re-entrant" not in result.stdout.str()


WARNING = """
import warnings
import pytest

@pytest.mark.deterministic
def test_warns():
    warnings.warn("the old API", DeprecationWarning)
    warnings.warn("a model warning", UserWarning)

@pytest.mark.deterministic
@pytest.mark.filterwarnings("always")
def test_warns_always():
    warnings.warn("warned every time", UserWarning)
"""


def _warnings(result: pytest.RunResult) -> tuple[int, int]:
    """The summary's warning count and the number of warnings the tests raised."""
    raised = sum(1 for line in result.stdout.lines if re.match(r"test_warning\.py::", line))
    return result.parseoutcomes().get("warnings", 0), raised


def test_a_warning_of_the_body_is_reported_once_per_test(
    pytester: pytest.Pytester, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # else --determinism warns about it
    pytester.makepyfile(test_warning=WARNING)
    plain = run()
    plain.assert_outcomes(passed=2)
    assert _warnings(plain) == (3, 3)
    checked = run("--determinism", "--determinism-runs", "3")
    checked.assert_outcomes(passed=2)
    assert _warnings(checked) == (3, 3)
    checked.stdout.fnmatch_lines(["*DeprecationWarning: the old API", "*warned every time"])


def test_a_warning_the_filters_make_an_error_still_fails_a_later_run(
    pytester: pytest.Pytester, run
) -> None:
    pytester.makepyfile(
        test_error="""
import warnings
import pytest

calls = []

@pytest.mark.deterministic
@pytest.mark.filterwarnings("error")
def test_second_run_warns():
    calls.append(1)
    if len(calls) > 1:
        warnings.warn("again", UserWarning)
"""
    )
    result = run("--determinism")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["  run 1 raised UserWarning: again"])


VALUES = """
import pytest
import torch
from pytest_determinism import assert_batch_invariant, assert_deterministic

@pytest.mark.deterministic
def test_golden(golden_tensor):
    golden_tensor.check(torch.ones(2), name="y")

@pytest.mark.deterministic
def test_helper():
    assert_deterministic(lambda: torch.ones(2) * 3)

@pytest.mark.deterministic
def test_batch():
    assert_batch_invariant(lambda x: x * 2, torch.ones(2, 3))

@pytest.mark.deterministic
def test_nothing():
    torch.ones(2)

def test_fixture_only(determinism):
    determinism.rng().random()

@pytest.mark.deterministic
@pytest.mark.parametrize("fails", [True])
def test_raises_alike(fails):
    raise ValueError("same every run")
"""


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["one process", "xdist"])
def test_tests_that_checked_no_values_are_counted(
    pytester: pytest.Pytester, run, workers: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_evidence=VALUES)
    run("--update-golden", "-p", "no:xdist")
    report_path = pytester.path / "report.json"
    result = run(*workers, "--determinism", "--determinism-report", str(report_path))
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(
        [
            "determinism: 6 tests x 2 runs (+1 other-seed run), 0 nondeterministic, "
            "3 checked no values"
        ]
    )
    report = json.loads(report_path.read_text())
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))
    assert report["summary"]["checked_no_values"] == 3
    checked = {t["nodeid"].split("::")[1]: t["checked_values"] for t in report["tests"]}
    assert checked == {
        "test_golden": True,
        "test_helper": True,
        "test_batch": True,
        "test_nothing": False,
        "test_fixture_only": False,
        "test_raises_alike[True]": False,
    }


def test_no_suffix_when_every_test_checked_values(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        test_checked="""
import pytest
from pytest_determinism import assert_deterministic

@pytest.mark.deterministic
def test_helper():
    assert_deterministic(lambda: 1.5)
"""
    )
    result = run("--determinism")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["determinism: 1 tests x 2 runs*, 0 nondeterministic"])
    result.stdout.no_fnmatch_line("*checked no values*")
