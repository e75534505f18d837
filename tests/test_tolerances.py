"""The default tolerance table, per-call overrides and the ini option golden_tolerances."""

from __future__ import annotations

import pytest

from pytest_determinism.golden.tolerances import (
    EXACT,
    Tolerance,
    canonical_dtype,
    default_tolerance,
    parse_tolerances,
    resolve_tolerance,
)


@pytest.mark.parametrize(
    ("dtype", "rtol", "atol"),
    [
        ("float64", 1e-7, 1e-7),
        ("complex128", 1e-7, 1e-7),
        ("float32", 1.3e-6, 1e-5),
        ("complex64", 1.3e-6, 1e-5),
        ("float16", 1e-3, 1e-5),
        ("bfloat16", 1.6e-2, 1e-5),
        ("float8_e4m3fn", 0.125, 2**-9),
        ("float8_e4m3fnuz", 0.125, 2**-9),
        ("float8_e5m2", 0.25, 2**-16),
        ("float8_e5m2fnuz", 0.25, 2**-16),
    ],
)
def test_contract_defaults(dtype: str, rtol: float, atol: float) -> None:
    assert default_tolerance(dtype) == Tolerance(rtol=rtol, atol=atol, exact=False)


@pytest.mark.parametrize(
    "dtype", ["float8_e8m0fnu", "bool", "int8", "uint8", "int64", "uint64", "float4_e2m1fn_x2"]
)
def test_exact_dtypes(dtype: str) -> None:
    assert default_tolerance(dtype) == EXACT
    assert resolve_tolerance(dtype) == EXACT


def test_integers_stay_exact_whatever_the_call_or_ini_says() -> None:
    assert resolve_tolerance("int64", rtol=0.5, atol=3) == EXACT
    assert default_tolerance("int32", {"int32": Tolerance(1.0, 1.0)}) == EXACT


def test_per_call_arguments_win_and_one_alone_keeps_the_other() -> None:
    assert resolve_tolerance("float32", rtol=1e-3, atol=1e-4) == Tolerance(1e-3, 1e-4)
    assert resolve_tolerance("float32", rtol=1e-3) == Tolerance(1e-3, 1e-5)
    assert resolve_tolerance("bfloat16", atol=0.5) == Tolerance(1.6e-2, 0.5)
    overrides = {"bfloat16": Tolerance(2e-2, 1e-3)}
    assert resolve_tolerance("bfloat16", overrides) == Tolerance(2e-2, 1e-3)
    assert resolve_tolerance("bfloat16", overrides, rtol=0.1) == Tolerance(0.1, 1e-3)
    assert resolve_tolerance("float32", overrides, exact=True) == EXACT
    assert resolve_tolerance("float8_e8m0fnu", rtol=0.5) == Tolerance(0.5, 0.0)


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_negative_or_nan_per_call_tolerances_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="rtol must be a number >= 0"):
        resolve_tolerance("float32", rtol=bad)
    with pytest.raises(ValueError, match="atol must be a number >= 0"):
        resolve_tolerance("float32", atol=bad)


def test_parse_ini_lines() -> None:
    parsed = parse_tolerances(
        [
            "",
            "# project tolerances",
            "bfloat16: rtol=2e-2 atol=1e-3",
            "  torch.half: rtol=5e-3   # inline comment",
            "float32: atol=1e-4, rtol=1e-5",
            "float64: exact",
        ]
    )
    assert parsed == {
        "bfloat16": Tolerance(2e-2, 1e-3),
        "float16": Tolerance(5e-3, 1e-5),
        "float32": Tolerance(1e-5, 1e-4),
        "float64": EXACT,
    }
    assert parse_tolerances("bfloat16: rtol=0.1\n") == {"bfloat16": Tolerance(0.1, 1e-5)}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("bfloat: rtol=1", r"line 1 \('bfloat: rtol=1'\): unknown dtype 'bfloat'"),
        ("float32: rtoll=1", r"unknown setting 'rtoll=1'"),
        ("float32: rtol=abc", r"rtol must be a number >= 0, got 'abc'"),
        ("float32: atol=-1e-3", r"atol must be a number >= 0, got '-1e-3'"),
        ("float32: rtol=nan", r"rtol must be a number >= 0"),
        ("float32 rtol=1", r"expected 'DTYPE: rtol=R atol=A'"),
        ("float32:", r"give rtol=\.\.\., atol=\.\.\. or exact"),
        ("float32: rtol=1 rtol=2", r"rtol is given more than once"),
        ("float32: exact rtol=1", r"'exact' cannot be combined"),
        ("int64: rtol=1", r"int64 values are always compared exactly"),
    ],
)
def test_bad_ini_lines_are_named(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_tolerances(["# fine", line] if "line 1" not in message else [line])


def test_a_dtype_given_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"line 2 .*float16 is given more than once"):
        parse_tolerances(["half: rtol=1", "float16: rtol=2"])


def test_canonical_dtype_names() -> None:
    assert canonical_dtype("torch.bfloat16") == "bfloat16"
    assert canonical_dtype("double") == "float64"
    assert canonical_dtype("nonsense") is None


def test_describe() -> None:
    assert EXACT.describe() == "exact"
    assert Tolerance(1.3e-6, 1e-5).describe() == "rtol=1.3e-06 atol=1e-05"
