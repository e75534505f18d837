"""The streaming comparison: agrees with an in-memory NumPy reference, whatever the chunks."""

from __future__ import annotations

import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_determinism.golden.compare import Comparison, compare
from pytest_determinism.golden.dtypes import DTYPES, EXACT_KINDS, _table, decode
from pytest_determinism.golden.statistics import statistics_of as summarize
from pytest_determinism.golden.storage import read_golden
from pytest_determinism.golden.tolerances import EXACT, Tolerance, resolve_tolerance
from pytest_determinism.golden.values import Leaf, flatten
from pytest_determinism.golden.writing import write_golden

_FLOAT8 = ["float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu"]


def _leaf(tensor: torch.Tensor) -> Leaf:
    return flatten(tensor)[""]


def _reference_values(leaf: Leaf) -> np.ndarray:
    """Decode through torch: independent of the module's own decoders."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(leaf.data.copy()).view(getattr(torch, leaf.dtype))
        if leaf.dtype in ("complex32", "complex64"):
            return tensor.to(torch.complex64).numpy()
        if leaf.dtype in ("float64", "complex128"):
            return tensor.numpy()
        return tensor.to(torch.float32).numpy()


def _reference_mismatch(actual: Leaf, golden: Leaf, tol: Tolerance, equal_nan: bool) -> np.ndarray:
    kind = DTYPES[actual.dtype].kind
    if tol.exact or kind in EXACT_KINDS:
        width = actual.data.itemsize
        a = actual.data.reshape(-1).view(np.uint8).reshape(-1, width)
        g = golden.data.reshape(-1).view(np.uint8).reshape(-1, width)
        return (a != g).any(axis=1).reshape(actual.shape)
    a, g = _reference_values(actual), _reference_values(golden)
    return ~np.isclose(a, g, rtol=tol.rtol, atol=tol.atol, equal_nan=equal_nan)


_DTYPES = ["float32", "float32", "float64", "float16", "bfloat16", "complex64", "int32", "bool"]
_DTYPES += ["float8_e4m3fn", "float8_e5m2"]
_SPECIAL = [0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e-30, -3.0, 65504.0]


@st.composite
def _pairs(draw: st.DrawFn) -> tuple[Leaf, Leaf]:
    dtype = draw(st.sampled_from(_DTYPES))
    rows = draw(st.integers(0, 4))
    cols = draw(st.integers(1, 12))
    count = rows * cols
    element = st.floats(width=32) | st.sampled_from(_SPECIAL)
    base = np.array(draw(st.lists(element, min_size=count, max_size=count)), dtype=np.float64)
    # Per element: mostly identical, else nudged (within or beyond tolerance), replaced, or
    # an infinity (a chunk whose only difference is an infinity must still fail).
    kinds = draw(
        st.lists(st.sampled_from([0, 0, 0, 1, 1, 1, 2, 3, 4]), min_size=count, max_size=count)
    )
    nudges = draw(
        st.lists(
            st.sampled_from([1e-7, -1e-7, 1e-6, -1e-6, 1e-4, 3e-2, 0.5]),
            min_size=count,
            max_size=count,
        )
    )
    other = draw(st.lists(element, min_size=count, max_size=count))
    moved = base.copy()
    for i, kind in enumerate(kinds):
        if kind == 1:
            moved[i] = base[i] * (1 + nudges[i])
        elif kind == 2:
            moved[i] = other[i]
        elif kind == 3:
            moved[i] = base[i] + nudges[i]
        elif kind == 4:
            moved[i] = float("inf") if nudges[i] > 0 else float("-inf")
    shape = (rows, cols)

    def build(values: np.ndarray) -> Leaf:
        with np.errstate(all="ignore"):
            tensor = torch.from_numpy(values.reshape(shape))
            if dtype == "complex64":
                tensor = torch.complex(tensor, tensor.flip(-1) if tensor.numel() else tensor)
            if DTYPES[dtype].kind in ("int", "uint", "bool"):
                tensor = torch.from_numpy(np.nan_to_num(values, posinf=7, neginf=-7).reshape(shape))
                tensor = tensor.clamp(-100, 100).round()
            return _leaf(tensor.to(getattr(torch, dtype)))

    return build(base), build(moved)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pair=_pairs(),
    chunk=st.integers(1, 40),
    exact=st.sampled_from([False, False, False, True]),
    equal_nan=st.booleans(),
    tol=st.sampled_from([None, (1e-3, 1e-5), (0.0, 0.0), (0.1, 1.0)]),
)
def test_streaming_agrees_with_in_memory_isclose(
    pair: tuple[Leaf, Leaf],
    chunk: int,
    exact: bool,
    equal_nan: bool,
    tol: tuple[float, float] | None,
) -> None:
    actual, golden = pair
    rtol, atol = tol if tol is not None else (None, None)
    tolerance = resolve_tolerance(actual.dtype, rtol=rtol, atol=atol, exact=exact)
    result = compare(actual, golden, tolerance, equal_nan=equal_nan, chunk_elements=chunk)
    mismatch = _reference_mismatch(actual, golden, tolerance, equal_nan)
    expected = int(mismatch.sum())
    assert result.passed == (expected == 0)
    if result.passed:
        same_bits = actual.data.tobytes() == golden.data.tobytes()
        assert result.outcome in (("equal", "close") if same_bits else ("close",))
        if result.outcome == "equal":
            assert (result.max_abs_diff, result.max_rel_diff) == (0.0, 0.0)
        else:
            with np.errstate(all="ignore"):
                diff = np.abs(_reference_values(actual) - _reference_values(golden))
            finite = diff[np.isfinite(diff)]
            assert result.max_abs_diff == (float(finite.max()) if finite.size else 0.0)
        return
    assert result.outcome == "mismatch"
    assert result.mismatched == expected
    assert result.total == actual.size
    first = np.unravel_index(int(np.argmax(mismatch.reshape(-1))), actual.shape)
    assert result.first_mismatch is not None
    assert result.first_mismatch.index == tuple(int(i) for i in first)
    if DTYPES[actual.dtype].kind in ("float", "complex"):
        _check_float_details(actual, golden, mismatch, result)


def _check_float_details(
    actual: Leaf, golden: Leaf, mismatch: np.ndarray, result: Comparison
) -> None:
    a, g = _reference_values(actual), _reference_values(golden)
    nan = np.isnan(a) | np.isnan(g)
    finite = np.isfinite(a) & np.isfinite(g)
    assert result.nan_mismatches == int((mismatch & nan).sum())
    assert result.inf_mismatches == int((mismatch & ~nan & ~finite).sum())
    if not finite.any():
        assert result.max_abs is None
        return
    wide = np.complex128 if a.dtype.kind == "c" else np.float64
    with np.errstate(all="ignore"):
        diff = np.where(finite, np.abs(a.astype(wide) - g.astype(wide)), -1.0)
    at = np.unravel_index(int(np.argmax(diff)), actual.shape)
    assert result.max_abs is not None
    assert result.max_abs.diff == pytest.approx(float(diff.max()), rel=1e-12, abs=0)
    assert result.max_abs_diff == result.max_abs.diff
    assert result.max_abs.index == tuple(int(i) for i in at)


def test_outcomes_equal_close_and_mismatch() -> None:
    base = torch.tensor([1.0, -0.0, float("nan"), float("inf")])
    assert compare(_leaf(base), _leaf(base.clone()), resolve_tolerance("float32")).outcome == (
        "equal"
    )
    nudged = base.clone()
    nudged[0] += 1e-7
    nudged[1] = 0.0
    assert compare(_leaf(nudged), _leaf(base), resolve_tolerance("float32")).outcome == "close"
    exact = compare(_leaf(nudged), _leaf(base), EXACT)
    assert exact.outcome == "mismatch"
    assert exact.mismatched == 2  # 1e-7 and the sign of zero


def test_dtype_and_shape_changes_are_not_compared() -> None:
    x = torch.ones(2, 3)
    drift = compare(_leaf(x.bfloat16()), _leaf(x), resolve_tolerance("bfloat16"))
    assert (drift.outcome, drift.actual_dtype, drift.golden_dtype) == (
        "dtype",
        "bfloat16",
        "float32",
    )
    assert not drift.passed
    shape = compare(_leaf(x.reshape(3, 2)), _leaf(x), resolve_tolerance("float32"))
    assert (shape.outcome, shape.actual_shape, shape.golden_shape) == ("shape", (3, 2), (2, 3))


def test_infinities_must_match_exactly_sign_included() -> None:
    golden = _leaf(torch.tensor([float("inf"), float("-inf"), 1.0]))
    loose = Tolerance(rtol=10.0, atol=1e30)
    flipped = compare(_leaf(torch.tensor([float("-inf"), float("-inf"), 1.0])), golden, loose)
    assert (flipped.mismatched, flipped.inf_mismatches) == (1, 1)
    finite = compare(_leaf(torch.tensor([3e38, float("-inf"), 1.0])), golden, loose)
    assert (finite.mismatched, finite.inf_mismatches) == (1, 1)
    # The only difference in the data: a finite value where the golden is infinite.
    alone = compare(
        _leaf(torch.tensor([3e38, 1.0])), _leaf(torch.tensor([float("inf"), 1.0])), loose
    )
    assert (alone.passed, alone.inf_mismatches) == (False, 1)
    reverse = compare(
        _leaf(torch.tensor([float("inf"), 1.0])), _leaf(torch.tensor([3e38, 1.0])), loose
    )
    assert (reverse.passed, reverse.inf_mismatches) == (False, 1)


def test_nan_rules() -> None:
    nan = torch.tensor([float("nan"), 1.0])
    golden = _leaf(nan)
    assert compare(_leaf(nan.clone()), golden, resolve_tolerance("float32")).passed
    strict = compare(_leaf(nan.clone()), golden, resolve_tolerance("float32"), equal_nan=False)
    assert (strict.passed, strict.nan_mismatches) == (False, 1)
    # Bitwise equality is equality, even for NaN.
    assert compare(_leaf(nan.clone()), golden, EXACT, equal_nan=False).passed
    other = compare(_leaf(torch.tensor([1.0, 1.0])), golden, resolve_tolerance("float32"))
    assert other.nan_mismatches == 1
    assert other.first_nan_mismatch is not None
    assert other.first_nan_mismatch.index == (0,)


def test_integer_differences_are_exact_at_64_bits() -> None:
    low, high = -(2**63), 2**63 - 1
    result = compare(
        _leaf(torch.tensor([low, 5])), _leaf(torch.tensor([high, 5])), resolve_tolerance("int64")
    )
    assert result.mismatched == 1
    assert result.max_abs is not None
    assert (result.max_abs.actual, result.max_abs.golden) == (low, high)
    assert result.max_abs.diff == float(2**64 - 1)
    unsigned = compare(
        Leaf("uint64", (1,), np.array([2**64 - 1], np.uint64)),
        Leaf("uint64", (1,), np.array([0], np.uint64)),
        EXACT,
    )
    assert unsigned.max_abs is not None
    assert unsigned.max_abs.actual == 2**64 - 1


def test_bool_mismatch_reports_position_only() -> None:
    result = compare(
        _leaf(torch.tensor([[True, False]])), _leaf(torch.tensor([[True, True]])), EXACT
    )
    assert result.mismatched == 1
    assert result.first_mismatch is not None
    assert result.first_mismatch.index == (0, 1)
    assert (result.first_mismatch.actual, result.first_mismatch.golden) == (False, True)


def test_relative_difference_from_zero_is_infinite() -> None:
    result = compare(_leaf(torch.tensor([1.0])), _leaf(torch.tensor([0.0])), EXACT)
    assert result.max_rel is not None
    assert result.max_rel.diff == float("inf")


def test_zero_dim_and_empty() -> None:
    a, g = _leaf(torch.tensor(1.0)), _leaf(torch.tensor(2.0))
    result = compare(a, g, resolve_tolerance("float32"))
    assert result.first_mismatch is not None
    assert result.first_mismatch.index == ()
    empty = _leaf(torch.zeros(0, 4))
    assert compare(empty, _leaf(torch.zeros(0, 4)), EXACT).outcome == "equal"


@pytest.mark.parametrize("dtype", _FLOAT8)
def test_float8_tables_match_torch(dtype: str) -> None:
    codes = torch.arange(256, dtype=torch.uint8)
    expected = codes.view(getattr(torch, dtype)).float().numpy()
    table = _table(dtype)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(table), nan)
    np.testing.assert_array_equal(table[~nan], expected[~nan])
    np.testing.assert_array_equal(np.signbit(table[~nan]), np.signbit(expected[~nan]))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "complex32"])
def test_decoders_match_torch(dtype: str) -> None:
    raw = torch.randint(0, 256, (64 * 4,), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        leaf = _leaf(raw.view(getattr(torch, dtype)))
    decoded = decode(dtype, leaf.data)
    np.testing.assert_array_equal(decoded, _reference_values(leaf))


def test_memory_mapped_golden_pages_are_released_and_still_readable(tmp_path: Path) -> None:
    values = np.random.default_rng(0).standard_normal(300_000).astype(np.float32)
    path = tmp_path / "g.safetensors"
    write_golden(path, {"x": Leaf("float32", values.shape, values)}, {})
    with read_golden(path) as golden:
        stored = golden.leaf("x")
        nudged = values * np.float32(1 + 1e-7)
        leaf = Leaf("float32", values.shape, nudged)
        first = compare(leaf, stored, resolve_tolerance("float32"), chunk_elements=4096)
        again = compare(leaf, stored, resolve_tolerance("float32"), chunk_elements=4096)
        assert first.passed
        assert again.passed
        changed = nudged.copy()
        changed[-1] += 1
        failed = compare(Leaf("float32", values.shape, changed), stored, EXACT)
        assert failed.first_mismatch is not None
        assert failed.mismatched > 1  # every nudged value differs bitwise
        np.testing.assert_array_equal(stored.data, values)


@pytest.mark.parametrize("outcome", ["equal", "close", "mismatch"])
def test_extra_memory_stays_a_fraction_of_the_data(outcome: str) -> None:
    golden = np.random.default_rng(1).random(16 << 20, dtype=np.float32)  # 64 MiB
    actual = {
        "equal": golden.copy(),
        "close": golden * np.float32(1 + 1e-7),
        "mismatch": golden + 1,
    }[outcome]
    tracemalloc.start()
    try:
        result = compare(
            Leaf("float32", golden.shape, actual),
            Leaf("float32", golden.shape, golden),
            resolve_tolerance("float32"),
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.outcome == outcome
    assert peak < 0.25 * golden.nbytes


def test_summarize_matches_numpy() -> None:
    values = np.array([1.0, -2.0, np.nan, np.inf, 4.0], dtype=np.float32)
    summary = summarize(Leaf("float32", values.shape, values), chunk_elements=2)
    assert (summary.minimum, summary.maximum, summary.nan, summary.inf) == (-2.0, 4.0, 1, 1)
    assert summary.mean == pytest.approx(1.0)
    ints = summarize(_leaf(torch.tensor([3, 1, 2])))
    assert (ints.minimum, ints.maximum, ints.mean) == (1, 3, 2.0)
    empty = summarize(_leaf(torch.zeros(0)))
    assert (empty.count, empty.minimum, empty.mean) == (0, None, None)
    complex_values = summarize(_leaf(torch.tensor([1 + 1j, 3 - 1j])))
    assert complex_values.mean == 2 + 0j
    assert complex_values.minimum is None


def test_a_copy_on_write_mapping_keeps_its_private_changes(tmp_path: Path) -> None:
    path = tmp_path / "raw.bin"
    np.zeros(50_000, dtype=np.float32).tofile(path)
    private = np.memmap(path, dtype=np.float32, mode="c")
    private[:] = 3.0  # changes only this process's copy
    golden = Leaf("float32", private.shape, private)
    actual = Leaf("float32", private.shape, np.full(50_000, 3.0, np.float32))
    assert compare(actual, golden, EXACT, chunk_elements=2048).outcome == "equal"
    assert float(private.min()) == 3.0
