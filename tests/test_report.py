"""The mismatch report: each kind of difference recognisable at a glance, numbers readable."""

from __future__ import annotations

import shlex

import numpy as np
import pytest
import torch

from pytest_determinism.golden.compare import compare
from pytest_determinism.golden.mismatch import (
    environment_changes,
    format_index,
    format_value,
    update_command,
)
from pytest_determinism.golden.mismatch import (
    mismatch_message as mismatch_report,
)
from pytest_determinism.golden.tolerances import EXACT, resolve_tolerance
from pytest_determinism.golden.values import flatten


def _leaf(value: object):
    return flatten(value)[""]


def _report(**comparisons: object) -> str:
    return mismatch_report(
        title="check 'out'",
        path="tests/__golden__/test_m/test_x.safetensors",
        comparisons=comparisons,  # type: ignore[arg-type]
        command_id="tests/test_m.py::test_x",
    )


def test_numbers_drifted_gives_counts_extremes_and_tolerance() -> None:
    golden = torch.zeros(2, 3)
    actual = golden.clone()
    actual[1, 2] = 0.5
    actual[0, 1] = -0.25
    text = _report(logits=compare(_leaf(actual), _leaf(golden), resolve_tolerance("float32")))
    assert "golden mismatch in check 'out': numbers drifted" in text
    assert "golden file: tests/__golden__/test_m/test_x.safetensors" in text
    assert (
        "numbers drifted: 'logits' float32 (2, 3): 2 of 6 elements (33.3%) differ beyond "
        "rtol=1.3e-06 atol=1e-05" in text
    )
    assert "largest absolute difference 0.5 at (1, 2): actual 0.5, golden 0.0" in text
    assert "largest relative difference inf at (0, 1): actual -0.25, golden 0.0" in text
    assert "first difference at (0, 1)" in text
    assert "to accept the new values: pytest --update-golden 'tests/test_m.py::test_x'" in text
    for other in ("dtype changed", "shape changed", "recorded elsewhere", "missing", "extra"):
        assert other not in text


def test_dtype_drift_names_both_dtypes_and_is_not_compared() -> None:
    x = torch.ones(4)
    text = _report(h=compare(_leaf(x.bfloat16()), _leaf(x), resolve_tolerance("bfloat16")))
    assert "golden mismatch in check 'out': dtype changed" in text
    assert "dtype changed: 'h' is bfloat16 now, the golden is float32" in text
    assert "not compared" in text
    assert "runs in bfloat16 where it ran in float32" in text
    assert "numbers drifted" not in text


def test_shape_change_is_its_own_kind() -> None:
    text = _report(
        x=compare(_leaf(torch.ones(2, 4)), _leaf(torch.ones(2, 3)), resolve_tolerance("float32"))
    )
    assert "shape changed: 'x' has shape (2, 4) now, the golden (2, 3)" in text
    assert "numbers drifted" not in text


def test_missing_extra_and_matched_keys() -> None:
    ok = compare(_leaf(torch.ones(1)), _leaf(torch.ones(1)), EXACT)
    bad = compare(_leaf(torch.ones(1)), _leaf(torch.zeros(1)), EXACT)
    text = mismatch_report(
        title="check 'out'",
        path="g.safetensors",
        comparisons={"a": ok, "b": bad},
        missing=["out.gone"],
        extra=["out.new"],
    )
    assert text.splitlines()[0] == (
        "golden mismatch in check 'out': extra keys, missing keys, numbers drifted"
    )
    assert "missing: in the golden but not checked: 'out.gone'" in text
    assert "extra: checked but not in the golden: 'out.new'" in text
    assert "1 other key matched" in text
    assert "'a'" not in text
    assert "to accept" not in text


def test_recorded_elsewhere_line() -> None:
    bad = compare(_leaf(torch.ones(1)), _leaf(torch.zeros(1)), EXACT)
    recorded = {"torch": "2.4.0", "device": "cuda:0", "threads": "8", "python": "3.10"}
    current = {"torch": "2.13.0", "device": "cpu", "threads": "8", "python": "3.11"}
    text = mismatch_report(
        title="t", path="g", comparisons={"x": bad}, recorded=recorded, current=current
    )
    assert "recorded elsewhere: the golden was made in another environment (torch 2.4.0 -> " in text
    assert "device cuda:0 -> cpu" in text
    assert "threads" not in text.split("recorded elsewhere")[1]
    assert environment_changes({"torch": "1"}, {}) == []
    assert environment_changes({"cpu": "A"}, {"cpu": "B"}) == ["CPU A -> B"]


def test_integer_bool_nan_and_inf_details() -> None:
    ints = compare(_leaf(torch.tensor([1, 2, 3])), _leaf(torch.tensor([1, 7, 3])), EXACT)
    bools = compare(_leaf(torch.tensor([True])), _leaf(torch.tensor([False])), EXACT)
    nan = compare(
        _leaf(torch.tensor([1.0, 2.0])),
        _leaf(torch.tensor([float("nan"), float("-inf")])),
        resolve_tolerance("float32"),
    )
    text = _report(tokens=ints, mask=bools, values=nan)
    assert "'tokens' int64 (3,): 1 of 3 elements (33.3%) differ (compared values exactly)" in text
    assert "largest absolute difference 5 at (1,): actual 2, golden 7" in text
    assert "'mask' bool (1,): 1 of 1 elements (100%) differ" in text
    assert "first difference at (0,): actual True, golden False" in text
    assert "NaN mismatches: 1, first at (0,): actual 1.0, golden nan" in text
    assert "Inf mismatches: 1, first at (1,): actual 2.0, golden -inf" in text


def test_exact_float_comparison_says_bits() -> None:
    text = _report(x=compare(_leaf(torch.tensor([0.0])), _leaf(torch.tensor([-0.0])), EXACT))
    assert "differ (compared bits exactly)" in text


@pytest.mark.parametrize(
    ("value", "dtype", "text"),
    [
        (0.1, "float64", "0.1"),
        (float(np.float32(0.1)), "float32", "0.1"),
        (float(np.float32(1 / 3)), "float32", "0.33333334"),
        (float(np.float16(1 / 3)), "float16", "0.3333"),
        (float(torch.tensor(1 / 3).bfloat16()), "bfloat16", "0.334"),
        (448.0, "float8_e4m3fn", "448"),
        (float("nan"), "float32", "nan"),
        (float("-inf"), "bfloat16", "-inf"),
        (True, "bool", "True"),
        (2**64 - 1, "uint64", "18446744073709551615"),
        (complex(1.5, -2.0), "complex64", "(1.5-2.0j)"),
    ],
)
def test_values_are_shown_at_their_dtype_precision(value: object, dtype: str, text: str) -> None:
    assert format_value(value, dtype) == text  # type: ignore[arg-type]


def test_index_formatting() -> None:
    assert format_index(()) == "()"
    assert format_index((3,)) == "(3,)"
    assert format_index((1, 2)) == "(1, 2)"


def test_update_command_survives_the_shell() -> None:
    nodeid = "tests/test_m.py::test_x[it's a $param]"
    command = update_command(nodeid)
    assert shlex.split(command) == ["pytest", "--update-golden", nodeid]


def test_many_differing_keys_are_summarised() -> None:
    bad = compare(_leaf(torch.ones(1)), _leaf(torch.zeros(1)), EXACT)
    text = mismatch_report(
        title="t", path="g", comparisons={f"k{i}": bad for i in range(30)}, missing=[]
    )
    assert "... and 10 more differing keys" in text
    assert "'k19'" in text
    assert "'k20'" not in text
