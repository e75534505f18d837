"""Streaming comparison of an actual leaf with a stored one: pure functions over arrays.

Both arrays are walked chunk by chunk, so a comparison with a memory-mapped golden needs a
few chunk-sized buffers, never a full-size temporary. The common outcomes are cheap:

* a chunk whose bytes are identical is accepted at memcmp speed;
* otherwise floats are checked against the tolerance with in-place arithmetic on reused
  buffers, and only a chunk that fails that quick test gets the exact NaN / infinity rules.

Diagnostics (how many elements differ, the largest differences and where) are only worked
out once a mismatch is known, in a second pass: a passing check never pays for them.

Semantics, for floats and complex numbers: an element matches where
``|actual - golden| <= atol + rtol * |golden|`` (NumPy's ``isclose``, computed in float32
for float16, bfloat16 and the float8 types, which are decoded without torch), or where both
are NaN and ``equal_nan``; infinities match only the same infinity. Integers, bools and
packed sub-byte types must be equal, and an exact tolerance means equal bits.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import numpy as np

from pytest_determinism.golden.tolerances import Tolerance
from pytest_determinism.golden.values import DTYPES, EXACT_KINDS, Leaf, raw_view

__all__ = [
    "CHUNK_BYTES",
    "Comparison",
    "Spot",
    "Summary",
    "compare",
    "compute_dtype",
    "decode",
    "summarize",
]

#: Bytes of compute-dtype values per chunk: a few buffers of this size stay in the CPU's
#: L2 cache, and bound the extra memory of a comparison.
CHUNK_BYTES = 1 << 20
_DIAGNOSE_CHUNK = 1 << 16

Number = bool | int | float | complex
Array = np.ndarray[Any, Any]


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
    check does not pay for it).
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

    @property
    def passed(self) -> bool:
        """Whether the actual value matches its golden."""
        return self.outcome in ("equal", "close")

    @property
    def percent(self) -> float:
        """Share of differing elements, in percent."""
        return 100.0 * self.mismatched / self.total if self.total else 0.0


# ---------------------------------------------------------------------------------------
# Decoding the dtypes NumPy lacks


def _minifloat_table(exp_bits: int, man_bits: int, bias: int, style: str) -> Array:
    """float32 value of each of the 256 codes of an 8-bit float format.

    ``style``: ``"ieee"`` (all-ones exponent: infinity or NaN), ``"fn"`` (no infinity;
    only all-ones exponent and mantissa is NaN), ``"fnuz"`` (no infinity, no negative
    zero; the negative-zero code is the one NaN).
    """
    codes = np.arange(256, dtype=np.int64)
    sign = codes >> 7
    exponent = (codes >> man_bits) & ((1 << exp_bits) - 1)
    mantissa = (codes & ((1 << man_bits) - 1)).astype(np.float64) / (1 << man_bits)
    magnitude = np.where(
        exponent == 0,
        mantissa * 2.0 ** (1 - bias),
        (1.0 + mantissa) * np.exp2((exponent - bias).astype(np.float64)),
    )
    values = np.where(sign == 1, -magnitude, magnitude)
    top = (1 << exp_bits) - 1
    if style == "ieee":
        values[(exponent == top) & (mantissa == 0)] = np.inf
        values[(exponent == top) & (mantissa == 0) & (sign == 1)] = -np.inf
        values[(exponent == top) & (mantissa != 0)] = np.nan
    elif style == "fn":
        values[(exponent == top) & (codes & ((1 << man_bits) - 1) == (1 << man_bits) - 1)] = np.nan
    else:
        values[0x80] = np.nan
    return values.astype(np.float32)


@cache
def _table(dtype: str) -> Array:
    if dtype == "float8_e4m3fn":
        return _minifloat_table(4, 3, 7, "fn")
    if dtype == "float8_e4m3fnuz":
        return _minifloat_table(4, 3, 8, "fnuz")
    if dtype == "float8_e5m2":
        return _minifloat_table(5, 2, 15, "ieee")
    if dtype == "float8_e5m2fnuz":
        return _minifloat_table(5, 2, 16, "fnuz")
    if dtype == "float8_e8m0fnu":
        values = np.exp2(np.arange(256, dtype=np.float64) - 127)
        values[255] = np.nan
        return values.astype(np.float32)
    raise KeyError(dtype)


def compute_dtype(dtype: str) -> np.dtype[Any]:
    """The NumPy dtype values of ``dtype`` are compared in (their storage for exact kinds)."""
    info = DTYPES[dtype]
    if info.kind == "float":
        return np.dtype(np.float64 if dtype == "float64" else np.float32)
    if info.kind == "complex":
        return np.dtype(np.complex128 if dtype == "complex128" else np.complex64)
    return info.storage


def decode(dtype: str, bits: Array, out: Array | None = None) -> Array:
    """Decode stored bits of ``dtype`` into :func:`compute_dtype` values (1-d or any shape).

    Dtypes NumPy holds natively in their compute dtype are returned as they are; ``out``,
    when given, is a buffer of the compute dtype and the input's size to decode into.
    """
    target = compute_dtype(dtype)
    if bits.dtype == target:
        return bits
    if out is None:
        out = np.empty(bits.shape, dtype=target)
    if dtype == "bfloat16":
        # bfloat16 is the upper half of a float32.
        wide = out.view(np.uint32)
        np.copyto(wide, bits, casting="safe")
        np.left_shift(wide, 16, out=wide)
    elif dtype == "complex32":
        halves = bits.view(np.float16).reshape((*bits.shape, 2))
        np.copyto(out.view(np.float32).reshape((*bits.shape, 2)), halves)
    elif dtype.startswith("float8"):
        np.take(_table(dtype), bits, out=out)
    else:
        np.copyto(out, bits, casting="unsafe")
    return out


# ---------------------------------------------------------------------------------------
# Releasing the pages of a memory-mapped golden once read


def _page_releaser(array: Array) -> Callable[[int], None] | None:
    """For a read-only array backed by an ``mmap``, a function that drops the pages
    before a byte offset from this process (they stay in the page cache), so the resident
    size of a long comparison stays bounded; ``None`` for other arrays."""
    madvise = getattr(mmap, "MADV_DONTNEED", None)
    base: object = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    if madvise is None or not isinstance(base, mmap.mmap):
        return None
    try:
        # Only a read-only (shared) mapping: dropping pages of a copy-on-write one would
        # lose its private changes.
        if not memoryview(base).readonly:
            return None
        origin = np.frombuffer(base, dtype=np.uint8).__array_interface__["data"][0]
    except (ValueError, TypeError, BufferError):
        return None
    mapping = base
    start = int(array.__array_interface__["data"][0]) - int(origin)
    released = [-(-start // mmap.PAGESIZE) * mmap.PAGESIZE]

    def release(consumed: int) -> None:
        end = (start + consumed) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > released[0]:
            with contextlib.suppress(ValueError, OSError):
                mapping.madvise(madvise, released[0], end - released[0])
            released[0] = end

    return release


# ---------------------------------------------------------------------------------------
# The comparison


def _chunks(size: int, chunk: int) -> Iterator[tuple[int, int]]:
    for start in range(0, size, chunk):
        yield start, min(start + chunk, size)


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
    is a few buffers of ``chunk_elements`` elements (by default :data:`CHUNK_BYTES` worth),
    whatever the size of the leaves.
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
        chunk_elements = _default_chunk(actual.dtype)
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be positive, got {chunk_elements}")
    kind = DTYPES[actual.dtype].kind
    exact = tolerance.exact or kind in EXACT_KINDS
    a_flat = actual.data.reshape(-1)
    g_flat = golden.data.reshape(-1)
    chunk = min(chunk_elements, max(a_flat.size, 1))
    release = _page_releaser(g_flat)
    buf: _Buffers | None = None
    # With equal_nan off, a NaN does not even match its own bits, so identical bytes prove
    # nothing for floats.
    trust_bits = exact or equal_nan
    bitwise = trust_bits
    largest_abs = 0.0
    check_bits = trust_bits
    failed = False
    for start, stop in _chunks(a_flat.size, chunk):
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
    # Diagnostics make several temporaries per element: smaller chunks keep them small,
    # and the quick path's buffers are no longer needed.
    del buf
    return _diagnose(base, actual, golden, exact, min(chunk, _DIAGNOSE_CHUNK))


def _default_chunk(dtype: str) -> int:
    return max(CHUNK_BYTES // compute_dtype(dtype).itemsize, 1)


# ---------------------------------------------------------------------------------------
# Diagnostics, on failure only


def _python(value: Any) -> Number:
    item = value.item() if hasattr(value, "item") else value
    if isinstance(item, bool | int | float | complex):
        return item
    return float(item)


class _Tally:
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


def _diagnose(base: Comparison, actual: Leaf, golden: Leaf, exact: bool, chunk: int) -> Comparison:
    dtype = actual.dtype
    kind = DTYPES[dtype].kind
    tol = base.tolerance
    a_flat = actual.data.reshape(-1)
    g_flat = golden.data.reshape(-1)
    tally = _Tally(actual.shape)
    release = _page_releaser(g_flat)
    for start, stop in _chunks(a_flat.size, chunk):
        a_bits, g_bits = a_flat[start:stop], g_flat[start:stop]
        differs = _bits_differ(a_bits, g_bits)
        if kind in ("bool", "packed"):
            tally.count(differs, start, "mismatched", "first")
        elif kind in ("int", "uint"):
            tally.count(differs, start, "mismatched", "first")
            with np.errstate(all="ignore"):
                diff = np.abs(a_bits.astype(np.float64) - g_bits.astype(np.float64))
                tally.extreme(diff, start, "abs")
                tally.extreme(_relative(diff, np.abs(g_bits.astype(np.float64))), start, "rel")
        else:
            a = decode(dtype, a_bits)
            g = decode(dtype, g_bits)
            mismatch = differs if exact else ~_close_mask(a, g, tol, base.equal_nan)
            tally.count(mismatch, start, "mismatched", "first")
            nan = np.isnan(a) | np.isnan(g)
            tally.count(mismatch & nan, start, "nan", "first_nan")
            finite = np.isfinite(a) & np.isfinite(g)
            tally.count(mismatch & ~nan & ~finite, start, "inf", "first_inf")
            with np.errstate(all="ignore"):
                wide = np.complex128 if a.dtype.kind == "c" else np.float64
                diff = np.abs(a.astype(wide) - g.astype(wide))
                diff[~finite] = -1.0
                tally.extreme(diff, start, "abs")
                rel = _relative(diff, np.abs(g.astype(wide)))
                rel[~finite] = -1.0
                tally.extreme(rel, start, "rel")
        if release is not None:
            release(stop * g_flat.itemsize)
    max_abs = _spot(actual, golden, tally.abs_at, tally.abs_value, absolute=True)
    return replace(
        base,
        outcome="mismatch",
        mismatched=tally.mismatched,
        first_mismatch=_spot(actual, golden, tally.first),
        max_abs=max_abs,
        max_rel=_spot(actual, golden, tally.rel_at, tally.rel_value),
        nan_mismatches=tally.nan,
        first_nan_mismatch=_spot(actual, golden, tally.first_nan),
        inf_mismatches=tally.inf,
        first_inf_mismatch=_spot(actual, golden, tally.first_inf),
        max_abs_diff=max_abs.diff if max_abs is not None else None,
        max_rel_diff=tally.rel_value if tally.rel_at is not None else None,
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
        return _python(decode(leaf.dtype, bits)[0])
    return _python(bits[0])


def _spot(
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


# ---------------------------------------------------------------------------------------
# Statistics for `show`


@dataclass(frozen=True)
class Summary:
    """Value statistics of one stored leaf: over finite values for ``min`` / ``max`` /
    ``mean`` (``None`` when there are none or the dtype has no order)."""

    count: int
    minimum: Number | None
    maximum: Number | None
    mean: float | complex | None
    nan: int
    inf: int


def summarize(leaf: Leaf, *, chunk_elements: int | None = None) -> Summary:
    """Streaming min, max, mean and NaN / Inf counts of a leaf."""
    kind = DTYPES[leaf.dtype].kind
    chunk = chunk_elements or _default_chunk(leaf.dtype)
    flat = leaf.data.reshape(-1)
    if kind == "packed" or flat.size == 0:
        return Summary(count=int(flat.size), minimum=None, maximum=None, mean=None, nan=0, inf=0)
    numeric = kind in ("float", "complex")
    accumulate = np.complex128 if kind == "complex" else np.float64
    nan = inf = finite = 0
    low: Any = None
    high: Any = None
    total: Any = 0.0
    release = _page_releaser(flat)
    for start, stop in _chunks(flat.size, chunk):
        values = flat[start:stop]
        if numeric:
            values = decode(leaf.dtype, values)
            nans = int(np.count_nonzero(np.isnan(values)))
            good = np.isfinite(values)
            nan += nans
            inf += int(values.size - np.count_nonzero(good)) - nans
            values = values[good]
        if values.size:
            finite += int(values.size)
            total += values.sum(dtype=accumulate)
            if kind != "complex":
                low = values.min() if low is None else min(low, values.min())
                high = values.max() if high is None else max(high, values.max())
        if release is not None:
            release(stop * flat.itemsize)
    mean: float | complex | None = None
    if finite:
        mean = complex(total) / finite if kind == "complex" else float(total) / finite
    return Summary(
        count=int(flat.size),
        minimum=None if low is None else _python(low),
        maximum=None if high is None else _python(high),
        mean=mean,
        nan=nan,
        inf=inf,
    )
