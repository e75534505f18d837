"""The kind of a golden's drift: precision, rounding or computation (pure functions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pytest_determinism.golden.drift import DriftTally, rounding_ulps, ulp

# Values of a real computation: signed, of mixed magnitudes, using every mantissa bit.
VALUES = hnp.arrays(
    np.float32,
    st.integers(16, 300),
    elements=st.builds(
        lambda sign, size: sign * size,
        st.sampled_from([-1.0, 1.0]),
        st.floats(2.0**-10, 2.0**10, width=32),
    ),
)


def _classify(actual: np.ndarray, golden: np.ndarray, dtype: str = "float32"):
    tally = DriftTally(dtype)
    # Two chunks, so the running tally is exercised.
    half = actual.size // 2
    for part in (slice(None, half), slice(half, None)):
        a, g = actual[part], golden[part]
        finite = np.abs(g[np.isfinite(g) & np.isfinite(a)])
        tally.add(a, g, float(finite.max()) if finite.size else 0.0)
    finite = np.isfinite(actual) & np.isfinite(golden)
    wide = np.complex128 if actual.dtype.kind == "c" else np.float64
    with np.errstate(all="ignore"):
        diff = np.abs(actual.astype(wide) - golden.astype(wide))[finite]
    nonfinite = int(
        np.count_nonzero(~finite & ~(actual == golden) & ~(np.isnan(actual) & np.isnan(golden)))
    )
    return tally.result(float(diff.max()) if diff.size else 0.0, nonfinite)


def _bf16(values: np.ndarray) -> np.ndarray:
    # Round to nearest even on the upper half of a float32, as torch's cast does.
    bits = values.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


@given(st.floats(2.0**-100, 2.0**100, width=32))
def test_ulp_is_numpys_spacing_for_float32(value: float) -> None:
    assert ulp("float32", value) == float(np.spacing(np.float32(value)))


@given(st.floats(1e-300, 1e300))
def test_ulp_is_numpys_spacing_for_float64(value: float) -> None:
    assert ulp("float64", value) == float(np.spacing(np.float64(value)))


@given(st.floats(2.0**-24, 6e4, width=16))
def test_ulp_is_numpys_spacing_for_float16(value: float) -> None:
    assert ulp("float16", value) == float(np.spacing(np.float16(value)))


def test_ulp_of_bfloat16_has_eight_significant_bits() -> None:
    assert ulp("bfloat16", 1.0) == 2.0**-7
    assert ulp("bfloat16", 49.3) == 2.0**-2


@settings(max_examples=60, deadline=None)
@given(VALUES)
def test_a_bfloat16_cast_back_is_precision_never_computation(golden: np.ndarray) -> None:
    drift = _classify(_bf16(golden), golden)
    assert drift.kind in ("precision", "rounding")
    if drift.kind == "precision":
        assert (drift.actual_precision, drift.golden_precision) == ("bfloat16", None)
    reverse = _classify(golden, _bf16(golden))
    assert reverse.kind in ("precision", "rounding")
    if reverse.kind == "precision":
        assert (reverse.actual_precision, reverse.golden_precision) == (None, "bfloat16")


@settings(max_examples=60, deadline=None)
@given(VALUES)
def test_a_float16_cast_back_is_float16_or_bfloat16_precision(golden: np.ndarray) -> None:
    drift = _classify(golden.astype(np.float16).astype(np.float32), golden)
    assert drift.kind in ("precision", "rounding")
    if drift.kind == "precision":
        assert drift.actual_precision == "float16"


@settings(max_examples=60, deadline=None)
@given(VALUES, st.data())
def test_a_few_ulps_at_the_magnitude_is_rounding(golden: np.ndarray, data: st.DataObject) -> None:
    magnitude = float(np.abs(golden).max())
    steps = data.draw(st.integers(1, int(rounding_ulps("float32"))))
    index = data.draw(st.integers(0, golden.size - 1))
    actual = golden.copy()
    actual[index] = np.float32(float(golden[index]) + steps * ulp("float32", magnitude) * 0.999)
    drift = _classify(actual, golden)
    assert drift.kind == "rounding"
    assert drift.ulps is not None and drift.ulps <= steps + 1


@settings(max_examples=60, deadline=None)
@given(VALUES, st.floats(1e-2, 1.0))
def test_a_changed_bias_is_computation_never_rounding(golden: np.ndarray, bias: float) -> None:
    # A shift of at least 1% of the magnitude is some 80,000 float32 ulps.
    shift = bias * float(np.abs(golden).max())
    drift = _classify((golden + np.float32(shift)).astype(np.float32), golden)
    assert drift.kind == "computation"
    assert drift.ulps is not None and drift.ulps > rounding_ulps("float32")


def test_round_numbers_claim_no_precision() -> None:
    # [1, 2, 3] fits every type: a real change of it is no precision change.
    golden = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    drift = _classify(golden + np.float32(1e-3), golden)
    assert drift.kind == "computation"


def test_a_nan_that_appeared_is_computation() -> None:
    golden = np.linspace(-1, 1, 64, dtype=np.float32)
    actual = golden.copy()
    actual[3] = np.nan
    assert _classify(actual, golden).kind == "computation"


def test_nans_in_the_same_places_do_not_hide_rounding() -> None:
    golden = np.linspace(-1, 1, 64, dtype=np.float32)
    golden[5] = np.nan
    actual = golden.copy()
    actual[7] = np.nextafter(actual[7], np.float32(2))
    drift = _classify(actual, golden)
    assert drift.kind == "rounding"
    assert drift.ulps is not None and 0 < drift.ulps <= 1


def test_bfloat16_values_have_no_narrower_type() -> None:
    golden = _bf16(np.linspace(-3, 3, 64, dtype=np.float32))
    actual = _bf16(golden * np.float32(1.5))
    assert _classify(actual, golden, "bfloat16").kind == "computation"
    nudged = golden.copy()
    nudged[10] = nudged[10] + np.float32(ulp("bfloat16", 3.0))
    drift = _classify(nudged, golden, "bfloat16")
    assert drift.kind == "rounding" and drift.ulps == pytest.approx(1.0)


def test_float64_values_computed_in_float32_are_float32_precision() -> None:
    golden = np.random.default_rng(0).standard_normal(256)
    drift = _classify(golden.astype(np.float32).astype(np.float64), golden, "float64")
    assert (drift.kind, drift.actual_precision, drift.golden_precision) == (
        "precision",
        "float32",
        None,
    )


def test_complex_values_are_classified_on_their_parts() -> None:
    rng = np.random.default_rng(1)
    golden = (rng.standard_normal(128) + 1j * rng.standard_normal(128)).astype(np.complex64)
    actual = _bf16(golden.view(np.float32)).view(np.complex64)
    drift = _classify(actual, golden, "complex64")
    assert (drift.kind, drift.actual_precision) == ("precision", "bfloat16")
    assert math.isfinite(drift.magnitude or math.nan)


def test_the_words_name_the_kind_the_type_and_the_ulps() -> None:
    golden = np.random.default_rng(2).standard_normal(256).astype(np.float32)
    text = _classify(_bf16(golden), golden).describe("float32")
    assert text.startswith("precision (the values carry only bfloat16 precision")
    assert "model.to(torch.bfloat16)" in text
    actual = golden.copy()
    actual[0] = np.nextafter(actual[0], np.float32(10))
    text = _classify(actual, golden).describe("float32")
    assert text.startswith("rounding (0.0625 ulps of float32 at magnitude 2.8")
    assert "ulp" in text and "thread count" in text


def test_float16_values_against_a_bfloat16_golden_name_both_types() -> None:
    # bf16 autocast recorded, fp16 autocast now: both cast back to float32.
    golden_source = np.random.default_rng(3).standard_normal(512).astype(np.float32)
    golden = _bf16(golden_source)
    actual = golden_source.astype(np.float16).astype(np.float32)
    drift = _classify(actual, golden)
    assert (drift.kind, drift.actual_precision, drift.golden_precision) == (
        "precision",
        "float16",
        "bfloat16",
    )
    assert "the values carry only float16 precision, the golden bfloat16 precision" in (
        drift.describe("float32")
    )
