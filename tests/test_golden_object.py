"""The golden_tensor object on its own: naming, comparing, recording, CI-mode evidence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from pytest_determinism.errors import GoldenFileError
from pytest_determinism.golden.golden_tensor import GoldenTensor
from pytest_determinism.golden.storage import read_golden
from pytest_determinism.golden.tolerances import Tolerance

NODEID = "tests/test_m.py::test_x[a]"


@pytest.fixture
def golden_file(tmp_path: Path) -> Path:
    return tmp_path / "__golden__" / "test_m" / "test_x.safetensors"


def _golden(path: Path, *, update: bool = False, defer: bool = False, **kwargs) -> GoldenTensor:
    options = {"tolerances": {}, "seed": 0, **kwargs}
    return GoldenTensor(
        path=path,
        root=path.parent.parent,
        test_id=NODEID,
        update=update,
        defer_failures=defer,
        **options,
    )


def _record(path: Path, *checks: tuple[object, str | None]) -> None:
    golden = _golden(path, update=True)
    for value, name in checks:
        golden.check(value, name)
    assert golden.finish(test_passed=True).file_written


def test_a_missing_golden_fails_with_the_command_and_writes_nothing(golden_file: Path) -> None:
    golden = _golden(golden_file)
    with pytest.raises(GoldenFileError) as info:
        golden.check(torch.ones(2))
    message = str(info.value)
    assert str(golden_file) in message
    assert "pytest --update-golden 'tests/test_m.py::test_x[a]'" in message
    result = golden.finish(test_passed=False)
    assert (result.failed, result.passed, result.file_written) == (1, 0, False)
    assert not golden_file.parent.parent.exists()


def test_record_then_compare(golden_file: Path) -> None:
    out = {"logits": torch.randn(2, 5), "tokens": torch.tensor([3, 1])}
    golden = _golden(golden_file, update=True)
    golden.check(out)
    golden.check(np.float32(1.5), name="loss")
    result = golden.finish(test_passed=True)
    assert (result.written, result.updated, result.passed, result.file_written) == (2, 0, 0, True)
    assert result.used
    with read_golden(golden_file) as stored:
        assert stored.sorted_keys() == ["0.logits", "0.tokens", "loss"]
        assert json.loads(stored.metadata["checks"]) == {
            "0": ["0.logits", "0.tokens"],
            "loss": ["loss"],
        }
        assert stored.metadata["test"] == NODEID
        assert stored.metadata["seed"] == "0"
    golden = _golden(golden_file)
    golden.check({"logits": out["logits"] + 1e-7, "tokens": out["tokens"]})
    golden.check(np.float32(1.5), name="loss")
    result = golden.finish(test_passed=True)
    assert (result.passed, result.failed, result.used) == (2, 0, True)
    assert {entry["key"]: entry["outcome"] for entry in result.entries} == {
        "0.logits": "passed",
        "0.tokens": "passed",
        "loss": "passed",
    }


def test_a_mismatch_raises_assertion_error_with_the_report(golden_file: Path) -> None:
    _record(golden_file, (torch.zeros(3), "x"))
    golden = _golden(golden_file)
    with pytest.raises(AssertionError) as info:
        golden.check(torch.tensor([0.0, 1.0, 0.0]), name="x")
    message = str(info.value)
    assert not isinstance(info.value, GoldenFileError)
    assert "numbers drifted: 'x' float32 (3,): 1 of 3 elements (33.3%) differ" in message
    assert "pytest --update-golden 'tests/test_m.py::test_x[a]'" in message
    result = golden.finish(test_passed=False)
    assert (result.failed, result.passed) == (1, 0)
    [entry] = result.entries
    assert entry["max_abs_diff"] == 1.0


def test_dtype_drift_is_reported_with_both_dtypes(golden_file: Path) -> None:
    _record(golden_file, (torch.ones(3), "h"))
    with pytest.raises(
        AssertionError, match="dtype changed: 'h' is bfloat16 now, the golden is float32"
    ):
        _golden(golden_file).check(torch.ones(3).bfloat16(), name="h")


def test_a_missing_name_is_a_golden_file_error(golden_file: Path) -> None:
    _record(golden_file, (1.0, "a"), (2.0, "b"))
    with pytest.raises(GoldenFileError, match=r"nothing recorded for check 'c'.*'a', 'b'"):
        _golden(golden_file).check(1.0, name="c")


def test_missing_and_extra_keys_within_a_check(golden_file: Path) -> None:
    _record(golden_file, ({"a": 1.0, "b": 2.0}, "out"))
    with pytest.raises(AssertionError) as info:
        _golden(golden_file).check({"a": 1.0, "c": 3.0}, name="out")
    assert "missing: in the golden but not checked: 'out.b'" in str(info.value)
    assert "extra: checked but not in the golden: 'out.c'" in str(info.value)


def test_unnamed_checks_are_numbered_and_named_ones_do_not_count(golden_file: Path) -> None:
    golden = _golden(golden_file, update=True)
    golden.check(1.0)
    golden.check(2.0, name="named")
    golden.check(3.0)
    golden.finish(test_passed=True)
    with read_golden(golden_file) as stored:
        assert stored.sorted_keys() == ["0", "1", "named"]
        assert float(stored.leaf("1").data) == 3.0


@pytest.mark.parametrize(
    ("first", "second", "error", "pattern"),
    [
        ("x", "x", ValueError, "the name 'x' is used twice"),
        (None, "0", ValueError, "the name '0' is used twice"),
        ("a", "", ValueError, "must not be empty"),
        ("a", "__metadata__", ValueError, "reserved"),
        ("a", 3, TypeError, "name must be a string"),
    ],
)
def test_bad_names(golden_file: Path, first, second, error, pattern) -> None:
    golden = _golden(golden_file, update=True)
    golden.check(1.0, first)
    with pytest.raises(error, match=pattern):
        golden.check(1.0, second)


def test_bad_tolerances_fail_when_recording_too(golden_file: Path) -> None:
    golden = _golden(golden_file, update=True)
    with pytest.raises(ValueError, match="rtol must be a number >= 0"):
        golden.check(1.0, rtol=-1)


def test_keys_of_two_checks_may_not_clash(golden_file: Path) -> None:
    golden = _golden(golden_file, update=True)
    golden.check({"b": 1.0}, name="a")
    with pytest.raises(ValueError, match=r"key 'a\.b' of 'a\.b' clashes"):
        golden.check(1.0, name="a.b")


def test_a_bad_value_is_a_type_error_naming_the_path(golden_file: Path) -> None:
    golden = _golden(golden_file)
    with pytest.raises(TypeError, match=r"'out\.cache' has type str"):
        golden.check({"cache": "no"}, name="out")


def test_update_leaves_an_unchanged_file_untouched(golden_file: Path) -> None:
    value = torch.randn(10)
    _record(golden_file, (value, "x"))
    before = golden_file.read_bytes(), os.stat(golden_file).st_mtime_ns
    golden = _golden(golden_file, update=True, seed=99)
    golden.check(value.clone(), name="x")
    result = golden.finish(test_passed=True)
    assert (result.passed, result.written, result.updated, result.file_written) == (1, 0, 0, False)
    assert (golden_file.read_bytes(), os.stat(golden_file).st_mtime_ns) == before


def test_update_rewrites_changed_content_and_counts_it(golden_file: Path) -> None:
    _record(golden_file, (torch.zeros(2), "x"), (torch.zeros(2), "y"))
    golden = _golden(golden_file, update=True)
    golden.check(torch.ones(2), name="x")
    golden.check(torch.zeros(2), name="y")
    golden.check(torch.zeros(2), name="z")
    result = golden.finish(test_passed=True)
    assert (result.updated, result.passed, result.written, result.file_written) == (1, 1, 1, True)
    with read_golden(golden_file) as stored:
        assert stored.leaf("x").data.tolist() == [1.0, 1.0]


def test_update_drops_names_no_longer_checked(golden_file: Path) -> None:
    _record(golden_file, (1.0, "kept"), (2.0, "stale"))
    golden = _golden(golden_file, update=True)
    golden.check(1.0, name="kept")
    assert golden.finish(test_passed=True).file_written
    with read_golden(golden_file) as stored:
        assert stored.sorted_keys() == ["kept"]


def test_a_failing_test_writes_nothing_under_update(golden_file: Path) -> None:
    _record(golden_file, (torch.zeros(2), "x"))
    before = golden_file.read_bytes()
    golden = _golden(golden_file, update=True)
    golden.check(torch.ones(2), name="x")
    result = golden.finish(test_passed=False)
    assert result.not_written
    assert not result.file_written
    assert golden_file.read_bytes() == before
    fresh = golden_file.with_name("new.safetensors")
    golden = _golden(fresh, update=True)
    golden.check(1.0)
    assert golden.finish(test_passed=False).not_written
    assert not fresh.exists()


def test_a_test_that_checked_nothing_touches_nothing(golden_file: Path) -> None:
    result = _golden(golden_file, update=True).finish(test_passed=True)
    assert (result.used, result.not_written, result.file_written) == (False, False, False)
    assert not golden_file.exists()


def test_a_corrupt_golden_is_a_clean_failure_and_update_replaces_it(golden_file: Path) -> None:
    golden_file.parent.mkdir(parents=True)
    golden_file.write_bytes(b"\x00" * 7)
    golden = _golden(golden_file)
    for _ in range(2):
        with pytest.raises(GoldenFileError) as info:
            golden.check(1.0)
        assert str(golden_file) in str(info.value)
        assert "pytest --update-golden 'tests/test_m.py::test_x[a]'" in str(info.value)
    golden.finish(test_passed=False)
    _record(golden_file, (1.0, None))
    _golden(golden_file).check(1.0)


def test_per_call_and_project_tolerances(golden_file: Path) -> None:
    _record(golden_file, (torch.ones(4), "a"), (torch.ones(4).bfloat16(), "b"))
    golden = _golden(golden_file)
    golden.check(torch.ones(4) * 1.001, name="a", rtol=1e-2)
    with pytest.raises(AssertionError, match=r"beyond rtol=0\.0001 atol=1e-05"):
        _golden(golden_file).check(torch.ones(4) * 1.001, name="a", rtol=1e-4)
    drifted = torch.ones(4).bfloat16() * 1.0625
    with pytest.raises(AssertionError, match=r"rtol=0\.016"):
        _golden(golden_file).check(drifted, name="b")
    loose = _golden(golden_file, tolerances={"bfloat16": Tolerance(rtol=0.1, atol=0.0)})
    loose.check(drifted, name="b")
    with pytest.raises(AssertionError, match="compared bits exactly"):
        _golden(golden_file).check(torch.ones(4) * 1.0000001, name="a", exact=True)


def test_reading_a_golden_written_by_safetensors(golden_file: Path) -> None:
    golden_file.parent.mkdir(parents=True)
    safetensors.torch.save_file(
        {"logits": torch.ones(2), "hidden.0": torch.zeros(1), "hidden.1": torch.ones(1)},
        str(golden_file),
    )
    golden = _golden(golden_file)
    golden.check(torch.ones(2), name="logits")
    golden.check([torch.zeros(1), torch.ones(1)], name="hidden")
    assert golden.finish(test_passed=True).passed == 2


def test_ci_mode_compares_run_zero_and_captures_later_runs(golden_file: Path) -> None:
    _record(golden_file, (torch.zeros(2), None), (torch.ones(1), "named"))
    golden = _golden(golden_file, defer=True)
    golden.start_run(0)
    value = torch.zeros(2)
    golden.check(value)
    golden.check({"k": torch.ones(1)}, name="named")
    value.add_(5)  # the evidence is a snapshot, not a view
    golden.start_run(1)
    golden.check(torch.full((2,), 7.0))
    golden.check({"k": torch.ones(1)}, name="named")
    # Run 0 is compared with the golden once every run is made.
    assert golden.pending_failure is None
    golden.compare_run_zero()
    assert golden.pending_failure is not None  # run 0's structure differs for "named"
    assert "missing: in the golden but not checked: 'named'" in golden.pending_failure
    first, second = golden.evidence(0), golden.evidence(1)
    assert list(first) == ["0", "named.k"]
    assert first["0"].data.tolist() == [0.0, 0.0]
    assert second["0"].data.tolist() == [7.0, 7.0]
    assert golden.evidence(5) == {}
    result = golden.finish(test_passed=False)
    assert (result.passed, result.failed) == (1, 1)


def test_a_later_run_keeps_what_it_checked_and_shares_run_zeros_equal_leaves(
    golden_file: Path,
) -> None:
    _record(golden_file, (torch.zeros(2), None), (torch.ones(3), "b"))
    golden = _golden(golden_file, defer=True)
    golden.start_run(0)
    golden.check(torch.zeros(2))
    golden.check(torch.ones(3), name="b")
    golden.start_run(1)
    same, other = torch.zeros(2), torch.full((3,), 2.0)
    golden.check(same)
    golden.check(other, name="b")
    # Changed after the check: the evidence is what was checked.
    same.add_(5)
    other.mul_(0)
    first, second = golden.evidence(0), golden.evidence(1)
    assert second["0"] is first["0"]
    assert second["0"].data.tolist() == [0.0, 0.0]
    assert second["b"].data.tolist() == [2.0, 2.0, 2.0]


def test_ci_mode_defers_a_missing_golden(golden_file: Path) -> None:
    golden = _golden(golden_file, defer=True)
    golden.start_run(0)
    golden.check(1.0)
    golden.check(2.0, name="b")
    golden.start_run(1)
    golden.check(1.0)
    assert list(golden.evidence(1)) == ["0"]
    golden.compare_run_zero()
    assert golden.pending_failure is not None
    assert "pytest --update-golden" in golden.pending_failure
    # One message for the missing file, not one per check.
    assert golden.pending_failure.count("no golden file") == 1


def test_ci_mode_with_update_records_run_zero_only(golden_file: Path) -> None:
    golden = _golden(golden_file, update=True)
    golden.start_run(0)
    golden.check(torch.zeros(1))
    golden.start_run(1)
    golden.check(torch.ones(1))
    golden.finish(test_passed=True)
    with read_golden(golden_file) as stored:
        assert stored.leaf("0").data.tolist() == [0.0]


def test_the_golden_must_lie_inside_its_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outside the golden root"):
        GoldenTensor(
            path=tmp_path / "elsewhere" / "x.safetensors",
            root=tmp_path / "root",
            test_id=NODEID,
            update=True,
            tolerances={},
            seed=None,
            defer_failures=False,
        )


def test_numpy_only_use_never_imports_torch(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        import numpy as np
        from pytest_determinism.golden.golden_tensor import GoldenTensor

        path = Path({str(tmp_path)!r}) / "g" / "m" / "t.safetensors"
        for update in (True, False):
            golden = GoldenTensor(path=path, root=path.parent.parent, test_id="t", update=update,
                                  tolerances={{}}, seed=1, defer_failures=False)
            golden.check({{"a": np.arange(3.0), "b": 2}})
            golden.finish(test_passed=True)
        print("torch" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
