"""Streaming comparison of an actual leaf with a stored one: pure functions over arrays.

Both arrays are walked chunk by chunk, so a comparison with a memory-mapped golden needs a
few chunk-sized buffers, never a full-size temporary. The common outcomes are cheap:

* a chunk whose bytes are identical is accepted at memcmp speed;
* otherwise floats are checked against the tolerance with in-place arithmetic on reused
  buffers, and only a chunk that fails that quick test gets the exact NaN / infinity rules.

Where the values differ (how many elements, the largest differences and where) is only
worked out once a mismatch is known, in a second pass: a passing check never pays for them.

Semantics, for floats and complex numbers: an element matches where
``|actual - golden| <= atol + rtol * |golden|`` (NumPy's ``isclose``, computed in float32
for float16, bfloat16 and the float8 types, which are decoded without torch), or where both
are NaN and ``equal_nan``; infinities match only the same infinity. Integers, bools and
packed sub-byte types must be equal, and an exact tolerance means equal bits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from pytest_determinism.golden.drift import Drift, DriftTally
from pytest_determinism.golden.dtypes import (
    DTYPES,
    EXACT_KINDS,
    Array,
    Number,
    compute_dtype,
    decode,
    python_number,
    raw_view,
)
from pytest_determinism.golden.streaming import chunks, default_chunk, page_releaser
from pytest_determinism.golden.tolerances import Tolerance
from pytest_determinism.golden.values import Leaf

__all__ = ["Comparison", "LeavesComparison", "Spot", "compare", "compare_leaves"]

_LOCATE_CHUNK = 1 << 16


@dataclass(frozen=True)
class Spot:
    """One element worth showing: its index, both values there, and a difference."""

    index: tuple[int, ...]
    actual: Number
    golden: Number
    diff: float = 0.0


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing one actual leaf with its golden.

    ``outcome`` is ``"equal"`` (identical bits), ``"close"`` (within tolerance),
    ``"mismatch"`` (values differ), ``"dtype"`` (the dtype changed: not compared) or
    ``"shape"`` (the shape changed: not compared). Counts and spots are filled in for a
    mismatch only; ``max_abs`` / ``max_rel`` are over elements finite on both sides.
    ``max_abs_diff`` / ``max_rel_diff`` are the largest differences as numbers, known for
    every compared outcome except ``max_rel_diff`` of ``"close"`` (``None``: a passing
    check does not pay for it). ``drift`` says what kind of difference a mismatch of
    floating values is (:mod:`~pytest_determinism.golden.drift`); ``None`` otherwise.
    """

    outcome: str
    actual_dtype: str
    golden_dtype: str
    actual_shape: tuple[int, ...]
    golden_shape: tuple[int, ...]
    tolerance: Tolerance
    equal_nan: bool = True
    total: int = 0
    mismatched: int = 0
    first_mismatch: Spot | None = None
    max_abs: Spot | None = None
    max_rel: Spot | None = None
    nan_mismatches: int = 0
    first_nan_mismatch: Spot | None = None
    inf_mismatches: int = 0
    first_inf_mismatch: Spot | None = None
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    drift: Drift | None = None

    @property
    def passed(self) -> bool:
        """Whether the actual value matches its golden."""
        return self.outcome in ("equal", "close")


# ---------------------------------------------------------------------------------------
# The comparison


class _Buffers:
    """Chunk-sized scratch arrays, allocated once per comparison."""

    def __init__(self, dtype: str, chunk: int) -> None:
        work = compute_dtype(dtype)
        magnitude = np.dtype(np.float64 if work.itemsize >= 8 else np.float32)
        self.actual = np.empty(chunk, dtype=work)
        self.golden = np.empty(chunk, dtype=work)
        self.diff = np.empty(chunk, dtype=magnitude)
        self.limit = np.empty(chunk, dtype=magnitude)
        self.ok = np.empty(chunk, dtype=np.bool_)


def _quick_close(a: Array, g: Array, tol: Tolerance, buf: _Buffers) -> tuple[bool, float]:
    """Whether every element is within tolerance and finite on both sides (``False`` is
    not final: NaNs and infinities need :func:`_close_mask`), and the largest difference."""
    n = a.size
    diff, limit, ok = buf.diff[:n], buf.limit[:n], buf.ok[:n]
    with np.errstate(all="ignore"):
        if a.dtype.kind == "c":
            np.abs(np.subtract(a, g, out=buf.actual[:n]), out=diff)
        else:
            np.subtract(a, g, out=diff)
            np.abs(diff, out=diff)
        np.abs(g, out=limit)
        np.multiply(limit, tol.rtol, out=limit)
        np.add(limit, tol.atol, out=limit)
        np.less_equal(diff, limit, out=ok)
        # NaNs fail the comparison above; an infinite golden passes it with an infinite
        # difference, hence the second test.
        largest = float(diff.max()) if n else 0.0
        return bool(ok.all()) and largest < np.inf, largest


def _close_mask(a: Array, g: Array, tol: Tolerance, equal_nan: bool) -> Array:
    with np.errstate(all="ignore"):
        limit = np.abs(g) * tol.rtol + tol.atol
        close: Array = np.abs(a - g) <= limit
        close &= np.isfinite(a) & np.isfinite(g)
        close |= a == g
        if equal_nan:
            close |= np.isnan(a) & np.isnan(g)
    return close


def compare(
    actual: Leaf,
    golden: Leaf,
    tolerance: Tolerance,
    *,
    equal_nan: bool = True,
    chunk_elements: int | None = None,
) -> Comparison:
    """Compare ``actual`` with ``golden`` (whose data may be memory-mapped), streaming.

    A changed dtype or shape is reported as such and not compared further. Extra memory
    is a few buffers of ``chunk_elements`` elements (by default
    :data:`~pytest_determinism.golden.streaming.CHUNK_BYTES` worth), whatever the size of
    the leaves.
    """
    base = Comparison(
        outcome="equal",
        actual_dtype=actual.dtype,
        golden_dtype=golden.dtype,
        actual_shape=actual.shape,
        golden_shape=golden.shape,
        tolerance=tolerance,
        equal_nan=equal_nan,
        total=actual.size,
    )
    if actual.dtype != golden.dtype:
        return replace(base, outcome="dtype")
    if actual.shape != golden.shape or actual.data.size != golden.data.size:
        return replace(base, outcome="shape")
    if chunk_elements is None:
        chunk_elements = default_chunk(actual.dtype)
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be positive, got {chunk_elements}")
    kind = DTYPES[actual.dtype].kind
    exact = tolerance.exact or kind in EXACT_KINDS
    a_flat = actual.data.reshape(-1)
    g_flat = golden.data.reshape(-1)
    chunk = min(chunk_elements, max(a_flat.size, 1))
    release = page_releaser(g_flat)
    buf: _Buffers | None = None
    # With equal_nan off, a NaN does not even match its own bits, so identical bytes prove
    # nothing for floats.
    trust_bits = exact or equal_nan
    bitwise = trust_bits
    largest_abs = 0.0
    check_bits = trust_bits
    failed = False
    for start, stop in chunks(a_flat.size, chunk):
        a_bits, g_bits = a_flat[start:stop], g_flat[start:stop]
        if check_bits and np.array_equal(raw_view(a_bits), raw_view(g_bits)):
            pass
        elif exact:
            failed = True
        else:
            if buf is None:
                buf = _Buffers(actual.dtype, chunk)
            # After a chunk that differed the next one most likely differs too: skip the
            # byte test there, it would be wasted work.
            bitwise = False
            n = stop - start
            a = decode(actual.dtype, a_bits, buf.actual[:n])
            g = decode(actual.dtype, g_bits, buf.golden[:n])
            close, largest = _quick_close(a, g, tolerance, buf)
            # Equal values again: the byte test is likely to pay off from here on.
            check_bits = trust_bits and largest == 0
            if not close:
                # NaNs or infinities: the largest difference is over finite ones.
                diff = buf.diff[:n]
                finite = diff[np.isfinite(diff)]
                largest = float(finite.max()) if finite.size else 0.0
                # _quick_close may have used the decode buffer of `a` as scratch.
                a = decode(actual.dtype, a_bits, buf.actual[:n])
                failed = not bool(_close_mask(a, g, tolerance, equal_nan).all())
            largest_abs = max(largest_abs, largest)
        if release is not None:
            release(stop * g_flat.itemsize)
        if failed:
            break
    if not failed:
        if bitwise:
            return replace(base, outcome="equal", max_abs_diff=0.0, max_rel_diff=0.0)
        return replace(base, outcome="close", max_abs_diff=largest_abs)
    # Locating differences makes several temporaries per element: smaller chunks keep them small,
    # and the quick path's buffers are no longer needed.
    del buf
    return _locate_differences(base, actual, golden, exact, min(chunk, _LOCATE_CHUNK))


@dataclass(frozen=True)
class LeavesComparison:
    """The outcome of comparing a set of actual leaves with a set of golden ones, key by key.

    ``comparisons`` holds every key both sides have, in the actual side's order;
    ``missing`` the golden keys the actual side lacks, in the golden's order; ``extra``
    the actual keys the golden lacks, in the actual side's order.
    """

    comparisons: Mapping[str, Comparison]
    missing: tuple[str, ...]
    extra: tuple[str, ...]

    @property
    def passed(self) -> bool:
        """Whether both sides have the same keys and every value matches its golden."""
        return (
            not self.missing and not self.extra and all(c.passed for c in self.comparisons.values())
        )


def compare_leaves(
    actual: Mapping[str, Leaf],
    golden: Mapping[str, Leaf],
    tolerance_for: Callable[[Leaf], Tolerance],
    *,
    equal_nan: bool = True,
) -> LeavesComparison:
    """Compare each actual leaf with the golden one of the same key (:func:`compare`, with
    the tolerance ``tolerance_for`` gives the actual leaf), and list the keys only one side
    has. Golden leaves are looked up one at a time, so a lazy mapping keeps one mapped."""
    comparisons = {
        key: compare(leaf, golden[key], tolerance_for(leaf), equal_nan=equal_nan)
        for key, leaf in actual.items()
        if key in golden
    }
    return LeavesComparison(
        comparisons=comparisons,
        missing=tuple(key for key in golden if key not in actual),
        extra=tuple(key for key in actual if key not in golden),
    )


# ---------------------------------------------------------------------------------------
# Locating the differences, on failure only


class _DifferenceCounts:
    """Running counts and extremes over the chunks of one comparison."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.mismatched = 0
        self.nan = 0
        self.inf = 0
        self.first: int | None = None
        self.first_nan: int | None = None
        self.first_inf: int | None = None
        self.abs_at: int | None = None
        self.abs_value = -1.0
        self.rel_at: int | None = None
        self.rel_value = -1.0

    def count(self, mask: Array, offset: int, attr: str, first_attr: str) -> None:
        hits = int(np.count_nonzero(mask))
        if not hits:
            return
        setattr(self, attr, getattr(self, attr) + hits)
        if getattr(self, first_attr) is None:
            setattr(self, first_attr, offset + int(np.argmax(mask)))

    def extreme(self, values: Array, offset: int, which: str) -> None:
        if not values.size:
            return
        at = int(np.argmax(values))
        value = float(values[at])
        if value > getattr(self, f"{which}_value"):
            setattr(self, f"{which}_value", value)
            setattr(self, f"{which}_at", offset + at)


def _locate_differences(
    base: Comparison, actual: Leaf, golden: Leaf, exact: bool, chunk: int
) -> Comparison:
    dtype = actual.dtype
    kind = DTYPES[dtype].kind
    tol = base.tolerance
    a_flat = actual.data.reshape(-1)
    g_flat = golden.data.reshape(-1)
    counts = _DifferenceCounts(actual.shape)
    drift = DriftTally(dtype) if kind in ("float", "complex") else None
    release = page_releaser(g_flat)
    for start, stop in chunks(a_flat.size, chunk):
        a_bits, g_bits = a_flat[start:stop], g_flat[start:stop]
        differs = _bits_differ(a_bits, g_bits)
        if kind in ("bool", "packed"):
            counts.count(differs, start, "mismatched", "first")
        elif kind in ("int", "uint"):
            counts.count(differs, start, "mismatched", "first")
            with np.errstate(all="ignore"):
                diff = np.abs(a_bits.astype(np.float64) - g_bits.astype(np.float64))
                counts.extreme(diff, start, "abs")
                counts.extreme(_relative(diff, np.abs(g_bits.astype(np.float64))), start, "rel")
        else:
            a = decode(dtype, a_bits)
            g = decode(dtype, g_bits)
            mismatch = differs if exact else ~_close_mask(a, g, tol, base.equal_nan)
            counts.count(mismatch, start, "mismatched", "first")
            nan = np.isnan(a) | np.isnan(g)
            counts.count(mismatch & nan, start, "nan", "first_nan")
            finite = np.isfinite(a) & np.isfinite(g)
            counts.count(mismatch & ~nan & ~finite, start, "inf", "first_inf")
            with np.errstate(all="ignore"):
                wide = np.complex128 if a.dtype.kind == "c" else np.float64
                diff = np.abs(a.astype(wide) - g.astype(wide))
                diff[~finite] = -1.0
                counts.extreme(diff, start, "abs")
                magnitude = np.abs(g.astype(wide))
                rel = _relative(diff, magnitude)
                rel[~finite] = -1.0
                counts.extreme(rel, start, "rel")
                if drift is not None:
                    # A masked max is several times slower than a plain one.
                    magnitude[~finite] = 0.0
                    drift.add(a, g, float(magnitude.max()) if magnitude.size else 0.0)
        if release is not None:
            release(stop * g_flat.itemsize)
    max_abs = _spot_at(actual, golden, counts.abs_at, counts.abs_value, absolute=True)
    return replace(
        base,
        outcome="mismatch",
        mismatched=counts.mismatched,
        first_mismatch=_spot_at(actual, golden, counts.first),
        max_abs=max_abs,
        max_rel=_spot_at(actual, golden, counts.rel_at, counts.rel_value),
        nan_mismatches=counts.nan,
        first_nan_mismatch=_spot_at(actual, golden, counts.first_nan),
        inf_mismatches=counts.inf,
        first_inf_mismatch=_spot_at(actual, golden, counts.first_inf),
        max_abs_diff=max_abs.diff if max_abs is not None else None,
        max_rel_diff=counts.rel_value if counts.rel_at is not None else None,
        drift=(
            drift.result(max_abs.diff if max_abs is not None else None, counts.nan + counts.inf)
            if drift is not None
            else None
        ),
    )


def _bits_differ(a: Array, b: Array) -> Array:
    """Per element: whether the bits differ (``0.0`` vs ``-0.0`` and NaN payloads count)."""
    if a.itemsize in (1, 2, 4, 8):
        unsigned = np.dtype(f"u{a.itemsize}")
        differs: Array = a.view(unsigned) != b.view(unsigned)
        return differs
    words = a.itemsize // 8
    wide_a = a.view(np.uint64).reshape(a.size, words)
    wide_b = b.view(np.uint64).reshape(b.size, words)
    wide: Array = np.any(wide_a != wide_b, axis=1)
    return wide


def _relative(diff: Array, magnitude: Array) -> Array:
    # A difference from a golden of zero is infinitely large relative to it.
    with np.errstate(all="ignore"):
        rel: Array = diff / magnitude
    rel[(magnitude == 0) & (diff == 0)] = 0.0
    return rel


def _value_at(leaf: Leaf, flat: int) -> Number:
    bits = leaf.data.reshape(-1)[flat : flat + 1]
    kind = DTYPES[leaf.dtype].kind
    if kind in ("float", "complex"):
        return python_number(decode(leaf.dtype, bits)[0])
    return python_number(bits[0])


def _spot_at(
    actual: Leaf, golden: Leaf, flat: int | None, diff: float = 0.0, *, absolute: bool = False
) -> Spot | None:
    if flat is None:
        return None
    index = tuple(int(i) for i in np.unravel_index(flat, actual.shape)) if actual.shape else ()
    a = _value_at(actual, flat)
    g = _value_at(golden, flat)
    if absolute and isinstance(a, int) and isinstance(g, int) and not isinstance(a, bool):
        # Exact for 64-bit integers, which the float64 search only located.
        diff = float(abs(a - g))
    return Spot(index=index, actual=a, golden=g, diff=diff)
