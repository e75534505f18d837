"""Value statistics of a stored leaf, for ``python -m pytest_determinism show``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pytest_determinism.golden.dtypes import DTYPES, Number, decode, python_number
from pytest_determinism.golden.streaming import chunks, default_chunk, page_releaser
from pytest_determinism.golden.values import Leaf

__all__ = ["Statistics", "statistics_of"]


@dataclass(frozen=True)
class Statistics:
    """Value statistics of one stored leaf: over finite values for ``min`` / ``max`` /
    ``mean`` (``None`` when there are none or the dtype has no order)."""

    count: int
    minimum: Number | None
    maximum: Number | None
    mean: float | complex | None
    nan: int
    inf: int


def statistics_of(leaf: Leaf, *, chunk_elements: int | None = None) -> Statistics:
    """Streaming min, max, mean and NaN / Inf counts of a leaf."""
    kind = DTYPES[leaf.dtype].kind
    chunk = chunk_elements or default_chunk(leaf.dtype)
    flat = leaf.data.reshape(-1)
    if kind == "packed" or flat.size == 0:
        return Statistics(count=int(flat.size), minimum=None, maximum=None, mean=None, nan=0, inf=0)
    numeric = kind in ("float", "complex")
    accumulate = np.complex128 if kind == "complex" else np.float64
    nan = inf = finite = 0
    low: Any = None
    high: Any = None
    total: Any = 0.0
    release = page_releaser(flat)
    for start, stop in chunks(flat.size, chunk):
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
    return Statistics(
        count=int(flat.size),
        minimum=None if low is None else python_number(low),
        maximum=None if high is None else python_number(high),
        mean=mean,
        nan=nan,
        inf=inf,
    )
