"""Walking large, possibly memory-mapped arrays chunk by chunk in bounded memory.

Comparisons and statistics read a golden once, front to back: a few chunk-sized buffers
stay in the CPU's cache, and the pages of a memory-mapped golden already read are dropped
from the process as the walk goes on.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Callable, Iterator

import numpy as np

from pytest_determinism.golden.dtypes import Array, compute_dtype

__all__ = ["CHUNK_BYTES", "chunks", "default_chunk", "page_releaser"]

#: Bytes of compute-dtype values per chunk: a few buffers of this size stay in the CPU's
#: L2 cache, and bound the extra memory of a comparison.
CHUNK_BYTES = 1 << 20


def chunks(size: int, chunk: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of each chunk of ``chunk`` elements of ``size`` elements, in order."""
    for start in range(0, size, chunk):
        yield start, min(start + chunk, size)


def default_chunk(dtype: str) -> int:
    """Elements of ``dtype`` per chunk: :data:`CHUNK_BYTES` worth of its compute dtype."""
    return max(CHUNK_BYTES // compute_dtype(dtype).itemsize, 1)


def page_releaser(array: Array) -> Callable[[int], None] | None:
    """For a read-only array backed by an ``mmap``, a function that drops the pages
    before a byte offset from this process (they stay in the page cache), so the resident
    size of a long walk over the array stays bounded; ``None`` for other arrays."""
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
