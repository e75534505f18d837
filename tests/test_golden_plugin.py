"""golden_tensor through real pytest runs: record, compare, update, and every failure clean."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_determinism.golden.storage import read_golden

_MODEL = """
import numpy as np
import pytest
import torch

SCALE = {scale}

def output():
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    return {{"logits": x * SCALE, "tokens": x.argmax(-1), "hidden": [x[:1], x[1:] * 2]}}
"""


def _files(pytester: pytest.Pytester) -> list[str]:
    return sorted(str(p.relative_to(pytester.path)) for p in pytester.path.rglob("*.safetensors"))


def _no_internal_error(result: pytest.RunResult) -> None:
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stderr.no_fnmatch_line("*INTERNALERROR*")


def test_record_then_compare_then_drift(pytester: pytest.Pytester, run) -> None:
    body = """
def test_logits(golden_tensor):
    golden_tensor.check(output())
    golden_tensor.check(output()["logits"].bfloat16(), name="bf16")
"""
    pytester.makepyfile(test_model=_MODEL.format(scale=1.0) + body)
    missing = run()
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(
        [
            "*no golden file for test_model.py::test_logits*",
            "*pytest --update-golden 'test_model.py::test_logits'*",
        ]
    )
    assert _files(pytester) == []
    run("--update-golden").assert_outcomes(passed=1)
    assert _files(pytester) == ["__golden__/test_model/test_logits.safetensors"]
    with read_golden(pytester.path / "__golden__/test_model/test_logits.safetensors") as golden:
        assert golden.sorted_keys() == ["0.hidden.0", "0.hidden.1", "0.logits", "0.tokens", "bf16"]
        assert golden.metadata["test"] == "test_model.py::test_logits"
    run().assert_outcomes(passed=1)
    pytester.makepyfile(test_model=_MODEL.format(scale=1.001) + body)
    drifted = run()
    drifted.assert_outcomes(failed=1)
    drifted.stdout.fnmatch_lines(
        [
            "*golden mismatch in check '0' of test_model.py::test_logits: numbers drifted*",
            "*numbers drifted: '0.logits' float32 (4, 8): * of 32 elements (*%) differ beyond "
            "rtol=1.3e-06 atol=1e-05*",
            "*largest absolute difference * at (*): actual *, golden *",
            "*to accept the new values: pytest --update-golden 'test_model.py::test_logits'*",
        ]
    )
    _no_internal_error(drifted)


def test_update_rewrites_only_changed_files(pytester: pytest.Pytester, run) -> None:
    source = """
import torch

def test_stable(golden_tensor):
    golden_tensor.check(torch.arange(6.0), name="x")

def test_moving(golden_tensor):
    golden_tensor.check(torch.full((3,), {value}), name="y")
"""
    pytester.makepyfile(test_two=source.format(value=1.0))
    run("--update-golden").assert_outcomes(passed=2)
    folder = pytester.path / "__golden__" / "test_two"
    stable, moving = folder / "test_stable.safetensors", folder / "test_moving.safetensors"
    before = {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in (stable, moving)}
    run("--update-golden").assert_outcomes(passed=2)
    assert {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in (stable, moving)} == before
    pytester.makepyfile(test_two=source.format(value=2.0))
    run("--update-golden").assert_outcomes(passed=2)
    assert (stable.read_bytes(), os.stat(stable).st_mtime_ns) == before[stable]
    assert moving.read_bytes() != before[moving][0]
    run().assert_outcomes(passed=2)
    assert [p.name for p in folder.iterdir() if not p.name.endswith(".safetensors")] == []


def test_a_failing_test_writes_nothing_under_update(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        test_fail="""
import torch

def test_broken(golden_tensor):
    golden_tensor.check(torch.ones(2))
    assert False, "the model is wrong"
"""
    )
    result = run("--update-golden")
    result.assert_outcomes(failed=1)
    assert _files(pytester) == []
    _no_internal_error(result)


def test_parametrized_and_class_tests_get_their_own_files(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        test_ids="""
import pytest
import torch

@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "b f/16"])
def test_dtype(golden_tensor, dtype):
    golden_tensor.check(torch.ones(2) * len(dtype), name="v")

class TestGroup:
    def test_member(self, golden_tensor):
        golden_tensor.check(torch.zeros(1))
"""
    )
    run("--update-golden").assert_outcomes(passed=4)
    files = _files(pytester)
    assert len(files) == 4
    assert "__golden__/test_ids/TestGroup.test_member.safetensors" in files
    assert all(f.startswith("__golden__/test_ids/") for f in files)
    assert len({Path(f).name for f in files}) == 4
    run().assert_outcomes(passed=4)


def test_golden_dir_and_golden_tolerances_ini(pytester: pytest.Pytester, run) -> None:
    pytester.makeini(
        """
[pytest]
golden_dir = goldens
golden_tolerances =
    bfloat16: rtol=0.2
"""
    )
    sub = pytester.mkpydir("pkg")
    (sub / "test_tol.py").write_text(
        """
import torch
FACTOR = 1.0

def test_loose(golden_tensor):
    golden_tensor.check(torch.ones(4).bfloat16() * FACTOR, name="h")
"""
    )
    run("--update-golden").assert_outcomes(passed=1)
    assert _files(pytester) == ["goldens/pkg/test_tol/test_loose.safetensors"]
    (sub / "test_tol.py").write_text(
        (sub / "test_tol.py").read_text().replace("FACTOR = 1.0", "FACTOR = 1.125")
    )
    run().assert_outcomes(passed=1)


def test_corrupt_golden_fails_cleanly(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        test_corrupt="""
def test_x(golden_tensor):
    golden_tensor.check(1.0)
"""
    )
    run("--update-golden").assert_outcomes(passed=1)
    path = pytester.path / "__golden__" / "test_corrupt" / "test_x.safetensors"
    path.write_bytes(path.read_bytes()[:20])
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*the golden file of test_corrupt.py::test_x cannot be read:*test_x.safetensors*",
            "*Re-record it: pytest --update-golden 'test_corrupt.py::test_x'*",
        ]
    )
    _no_internal_error(result)
    run("--update-golden").assert_outcomes(passed=1)
    run().assert_outcomes(passed=1)


def test_missing_name_and_bad_values_are_clean_failures(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        test_names="""
import torch

def test_names(golden_tensor):
    golden_tensor.check(torch.ones(1), name="a")

def test_bad_value(golden_tensor):
    golden_tensor.check({"cache": object()}, name="out")
"""
    )
    run("--update-golden", "test_names.py::test_names").assert_outcomes(passed=1)
    pytester.makepyfile(
        test_names="""
import torch

def test_names(golden_tensor):
    golden_tensor.check(torch.ones(1), name="a")
    golden_tensor.check(torch.ones(1), name="b")

def test_bad_value(golden_tensor):
    golden_tensor.check({"cache": object()}, name="out")
"""
    )
    result = run()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "*nothing recorded for check 'b'*recorded checks: 'a'*",
            "*TypeError: golden_tensor: the value at 'out.cache' has type object*",
        ]
    )
    _no_internal_error(result)


def test_numpy_only_tests_work_and_dtype_drift_is_named(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        test_np="""
import numpy as np
DTYPE = "float32"

def test_arrays(golden_tensor):
    golden_tensor.check({"a": np.arange(5, dtype=DTYPE), "n": 3})
"""
    )
    run("--update-golden").assert_outcomes(passed=1)
    run().assert_outcomes(passed=1)
    pytester.makepyfile(
        test_np="""
import numpy as np
DTYPE = "float64"

def test_arrays(golden_tensor):
    golden_tensor.check({"a": np.arange(5, dtype=DTYPE), "n": 3})
"""
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*dtype changed: '0.a' is float64 now, the golden is float32*"])


def test_ci_mode_reports_golden_mismatches_after_the_runs(pytester: pytest.Pytester, run) -> None:
    source = """
import pytest
import torch

SCALE = {scale}

@pytest.mark.deterministic
def test_ci(golden_tensor):
    golden_tensor.check(torch.randn(3) * SCALE, name="x")
    golden_tensor.check(torch.randn(2) * SCALE)
"""
    pytester.makepyfile(test_ci=source.format(scale=1.0))
    missing = run("--determinism")
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(["*no golden file for test_ci.py::test_ci*"])
    assert _files(pytester) == []
    run("--update-golden").assert_outcomes(passed=1)
    run("--determinism").assert_outcomes(passed=1)
    pytester.makepyfile(test_ci=source.format(scale=1.5))
    drifted = run("--determinism")
    drifted.assert_outcomes(failed=1)
    drifted.stdout.fnmatch_lines(
        [
            "*golden mismatch in check 'x' of test_ci.py::test_ci: numbers drifted*",
            "*golden mismatch in check '0' of test_ci.py::test_ci: numbers drifted*",
        ]
    )
    _no_internal_error(drifted)


def test_goldens_that_differ_only_in_case_are_warned_about(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        test_case="""
import pytest

def test_Logits(golden_tensor):
    golden_tensor.check(1.0)

def test_logits(golden_tensor):
    golden_tensor.check(2.0)

def test_LOGITS():
    pass

@pytest.mark.parametrize("size", ["A", "a"])
def test_sizes(golden_tensor, size):
    golden_tensor.check(1.0)
"""
    )
    result = run("--update-golden")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(
        [
            "*DeterminismWarning: the golden file of test_case.py::test_Logits differs only in "
            "letter case from that of test_case.py::test_logits (test_Logits.safetensors)*",
            "*DeterminismWarning: the golden file of test_case.py::test_logits differs only in "
            "letter case from that of test_case.py::test_Logits (test_logits.safetensors)*",
        ]
    )
    # test_LOGITS has no golden; the parameter ids are hashed into distinct names.
    result.stdout.no_fnmatch_line("*test_LOGITS*differs only*")
    result.stdout.no_fnmatch_line("*test_sizes*differs only*")
    _no_internal_error(result)


def test_case_clashes_groups_only_paths_that_differ_in_case() -> None:
    from pytest_determinism.golden.paths import case_clashes

    paths = {
        "a": Path("g/test_X.safetensors"),
        "b": Path("g/test_x.safetensors"),
        "c": Path("g/TEST_X.safetensors"),
        "d": Path("g/test_y.safetensors"),
        "e": Path("h/test_x.safetensors"),
    }
    assert case_clashes(paths) == [["a", "b", "c"]]
    assert case_clashes({"a": Path("x"), "b": Path("x")}) == []


def test_golden_tensor_requested_at_run_time_finds_its_file(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        test_dynamic="""
def test_late(request):
    request.getfixturevalue("golden_tensor").check(3.0)
"""
    )
    run("--update-golden").assert_outcomes(passed=1)
    assert _files(pytester) == ["__golden__/test_dynamic/test_late.safetensors"]
    run().assert_outcomes(passed=1)
