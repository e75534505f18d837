"""What kind of difference a drifted golden shows: precision, rounding or computation.

A failing comparison of floating values is classified, per key, so a model engineer knows
where to look before reading a number:

- **precision**: the two sides carry the precision of different types (every finite
  element of a side exactly representable in bfloat16, float16, or float32 for float64
  values, or none of these: the dtype's full precision), and the difference is within a
  few units in the last place (ulps) of the coarser one: the computation now runs in (or
  was recorded from) a narrower type and is cast back, as ``model.to(torch.bfloat16)`` or
  autocast do.
- **rounding**: the largest difference is at most :func:`rounding_ulps` ulps of the
  dtype at the key's magnitude (256 for 32- and 64-bit floats, 8 for 16-bit, 2 for
  8-bit): the same computation in another order (thread count, batch size or padding, a
  kernel or library version, TF32).
- **computation**: anything larger, or a NaN / infinity that appeared or went away: what
  is computed changed.

The magnitude of a key is the largest absolute finite golden value in it, not each
element's own: the rounding error of a sum is proportional to the size of its terms, so an
element that cancelled down to nearly zero still differs by a few ulps of the key's
magnitude, not of its own. The price is that a change confined to elements far smaller
than the key's largest one reads as rounding when it is below that resolution.

Integers and bools get no kind: their values are equal or not.

Everything here works chunk by chunk (:class:`DriftTally`) on values already decoded to
their compute dtype, so classifying costs no full-size temporary, and it runs only for a
key that failed its comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pytest_determinism.golden.dtypes import DTYPES

__all__ = [
    "PRECISION_ULPS",
    "ROUNDING_ULPS",
    "Drift",
    "DriftKind",
    "DriftTally",
    "format_ulps",
    "rounding_ulps",
    "ulp",
]

DriftKind = Literal["precision", "rounding", "computation"]

#: The largest difference, in ulps of the dtype at the key's magnitude, still called
#: rounding, per width of the dtype. Reordering a float32 sum moves it by a few ulps, and by
#: a hundred or more where its terms cancel (an 8-million-element sum here: 108 ulps
#: between 1 and 2 threads; torchvision RetinaNet boxes: 26); a real change of weights or
#: code is thousands to millions. 16- and 8-bit results are rounded from wider
#: accumulators, so a reordering moves them by a few of their own, much coarser, ulps.
ROUNDING_ULPS: dict[int, float] = {64: 256.0, 32: 256.0, 16: 8.0, 8: 2.0}

#: The largest difference, in ulps of the narrower type at the key's magnitude, for which
#: a precision change explains the whole difference. A network run in bfloat16 differs from
#: its float32 self by a few bfloat16 ulps; a real change on top of it by far more.
PRECISION_ULPS = 16.0

# Explicit mantissa bits and the smallest normal exponent of each floating dtype.
_FORMATS: dict[str, tuple[int, int]] = {
    "float64": (52, -1022),
    "float32": (23, -126),
    "float16": (10, -14),
    "bfloat16": (7, -126),
    "float8_e4m3fn": (3, -6),
    "float8_e4m3fnuz": (3, -7),
    "float8_e5m2": (2, -14),
    "float8_e5m2fnuz": (2, -15),
    "float8_e8m0fnu": (0, -127),
    "complex32": (10, -14),
    "complex64": (23, -126),
    "complex128": (52, -1022),
}

# The narrower types a dtype's values may have been computed in, fewest mantissa bits
# first: bfloat16 values in float16's range are float16 values too, and the narrower
# claim is the more specific one.
_NARROWER: dict[str, tuple[str, ...]] = {
    "float64": ("bfloat16", "float16", "float32"),
    "complex128": ("bfloat16", "float16", "float32"),
    "float32": ("bfloat16", "float16"),
    "complex64": ("bfloat16", "float16"),
}

Array = np.ndarray[Any, Any]


def rounding_ulps(dtype: str) -> float:
    """The most ulps of ``dtype`` a difference may span and still be called rounding."""
    info = DTYPES[dtype]
    # A complex number's parts count alone.
    return ROUNDING_ULPS[info.itemsize * 8 // (2 if info.kind == "complex" else 1)]


def ulp(dtype: str, magnitude: float) -> float:
    """The spacing of ``dtype``'s values at ``magnitude`` (subnormal spacing below the
    smallest normal number)."""
    mantissa, min_exponent = _FORMATS[dtype]
    exponent = math.frexp(magnitude)[1] - 1 if magnitude > 0 else min_exponent
    return math.ldexp(1.0, max(exponent, min_exponent) - mantissa)


def _fits(values: Array, narrower: str) -> bool:
    """Whether every value (finite, real, float32 or float64) is exactly a ``narrower``
    value."""
    if not values.size:
        return True
    with np.errstate(all="ignore"):
        if narrower == "float32":
            return bool(np.array_equal(values.astype(np.float32), values))
        if narrower == "float16":
            return bool(np.array_equal(values.astype(np.float16), values))
        single = values.astype(np.float32)
        if values.dtype == np.float64 and not np.array_equal(single, values):
            return False
        # bfloat16 is the upper half of a float32: the lower 16 bits must be zero.
        return not bool(np.any(single.view(np.uint32) & np.uint32(0xFFFF)))


def _uses_precision(values: Array, narrower: str) -> bool:
    """Whether some value (one that fits ``narrower``) needs more than all but the last
    three of ``narrower``'s mantissa bits.

    Round numbers (``1.0``, ``0.5``, ``3.0``) fit every type, so a key made of them says
    nothing about the precision it was computed in; an output of a real computation in a
    narrow type uses that type's last bits.
    """
    if not values.size:
        return False
    mantissa = _FORMATS[narrower][0]
    unused = np.uint32((1 << (23 - mantissa + 3)) - 1)
    with np.errstate(all="ignore"):
        return bool(np.any(values.astype(np.float32).view(np.uint32) & unused))


@dataclass(frozen=True)
class Drift:
    """The kind of one key's difference.

    ``ulps``: the largest difference in ulps of the key's dtype at ``magnitude`` (the
    largest absolute finite golden value). ``actual_precision`` and ``golden_precision``
    name the narrower type whose precision each side carries (``None``: the dtype's full
    precision); they differ for a precision difference, and may for a computation that
    also changed precision.
    """

    kind: DriftKind
    ulps: float | None = None
    magnitude: float | None = None
    actual_precision: str | None = None
    golden_precision: str | None = None

    def describe(self, dtype: str) -> str:
        """The kind, the figures behind it in parentheses, and what it means."""
        if self.kind == "precision":
            now, then = self.actual_precision, self.golden_precision
            if then is None:
                return (
                    f"precision (the values carry only {now} precision, the golden full "
                    f"{dtype}): the computation now runs in {now} and is cast back "
                    f"(model.to(torch.{now}), autocast)"
                )
            if now is None:
                return (
                    f"precision (the golden carries only {then} precision, the values full "
                    f"{dtype}): it was recorded from a {then} computation cast back "
                    f"(model.to(torch.{then}), autocast); now it runs in {dtype}"
                )
            return (
                f"precision (the values carry only {now} precision, the golden {then} "
                f"precision): the computation now runs in {now} where it ran in {then} "
                "(a model.to() or autocast dtype changed)"
            )
        if self.ulps is None:
            return (
                "computation (NaN or infinity where the golden had a number, or the reverse): "
                "what is computed changed"
            )
        scale = f"{format_ulps(self.ulps)} of {dtype} at magnitude {self.magnitude or 0.0:.4g}"
        if self.kind == "rounding":
            return (
                f"rounding ({scale}): the same computation summed in another order "
                "(thread count, batch size or padding, a kernel or library version, TF32)"
            )
        text = f"computation ({scale}): what is computed changed"
        if self.actual_precision != self.golden_precision:
            now = self.actual_precision or f"full {dtype}"
            then = self.golden_precision or f"full {dtype}"
            text += (
                f", beyond a precision change alone (the values carry {now} precision, the "
                f"golden {then})"
            )
        return text

    def atol_covering(self, dtype: str) -> float:
        """An absolute tolerance that covers this difference (its ulps at the magnitude,
        rounded up to two significant digits)."""
        needed = (self.ulps or 0.0) * ulp(dtype, self.magnitude or 0.0)
        if needed <= 0:
            return 0.0
        digits = 1 - math.floor(math.log10(needed))
        return float(math.ceil(needed * 10**digits) / 10**digits)


def format_ulps(value: float | None) -> str:
    """``"26 ulps"``, ``"1 ulp"``, ``"3.4e+05 ulps"``."""
    if value is None or not math.isfinite(value):
        return "inf ulps"
    return f"{value:.3g} ulp" + ("" if value == 1 else "s")


class DriftTally:
    """Running evidence for the kind of one failing key's difference, chunk by chunk.

    Feed :meth:`add` the decoded actual and golden values of each chunk; :meth:`result`
    classifies once the largest finite difference and the count of NaN / infinity
    mismatches are known.
    """

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.candidates = _NARROWER.get(dtype, ())
        self.magnitude = 0.0
        # Per narrower type, per side ("actual", "golden"): every finite value fits it,
        # and some value uses its last mantissa bits.
        self.fits = {(t, side): True for t in self.candidates for side in _SIDES}
        self.uses = {(t, side): False for t in self.candidates for side in _SIDES}

    def add(self, actual: Array, golden: Array, magnitude: float) -> None:
        """Account for one chunk of decoded values (complex ones as pairs of reals) whose
        largest absolute finite golden value is ``magnitude`` (the comparison has it)."""
        self.magnitude = max(self.magnitude, float(magnitude))
        # Once both sides hold a value that fits no narrower type (the first chunk, for most
        # real outputs), the rest of the key costs only the magnitude above.
        if not any(self.fits.values()):
            return
        if actual.dtype.kind == "c":
            actual, golden = _as_reals(actual), _as_reals(golden)
        finite = {"actual": actual[np.isfinite(actual)], "golden": golden[np.isfinite(golden)]}
        for narrower in self.candidates:
            for side in _SIDES:
                key = (narrower, side)
                if self.fits[key]:
                    self.fits[key] = _fits(finite[side], narrower)
                if self.fits[key] and not self.uses[key]:
                    self.uses[key] = _uses_precision(finite[side], narrower)

    def result(self, max_abs_diff: float | None, nonfinite_mismatches: int) -> Drift:
        """The kind, given the largest finite difference and the NaN / infinity mismatches.

        A difference of a few ulps is rounding even where one side happens to fit a
        narrower type: a few ulps of the dtype are far below any narrower type's rounding.
        """
        if nonfinite_mismatches:
            return Drift(kind="computation", magnitude=self.magnitude)
        diff = max_abs_diff or 0.0
        ulps = diff / ulp(self.dtype, self.magnitude)
        if ulps <= rounding_ulps(self.dtype):
            return Drift(kind="rounding", ulps=ulps, magnitude=self.magnitude)
        actual, golden = self._precision("actual"), self._precision("golden")
        coarser = max(
            (self.dtype if kind is None else kind for kind in (actual, golden)),
            key=lambda kind: ulp(kind, 1.0),
        )
        within = diff / ulp(coarser, self.magnitude) <= PRECISION_ULPS
        return Drift(
            kind="precision" if actual != golden and within else "computation",
            ulps=ulps,
            magnitude=self.magnitude,
            actual_precision=actual,
            golden_precision=golden,
        )

    def _precision(self, side: str) -> str | None:
        """The narrowest type every finite value of ``side`` fits while using its last bits;
        ``None``: the dtype's full precision."""
        for narrower in self.candidates:
            if self.fits[(narrower, side)] and self.uses[(narrower, side)]:
                return narrower
        return None


_SIDES = ("actual", "golden")


def _as_reals(values: Array) -> Array:
    real = np.float64 if values.dtype == np.complex128 else np.float32
    return np.ascontiguousarray(values).view(real)
