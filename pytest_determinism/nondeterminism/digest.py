"""Digests of tensor and array bytes, cheap enough to take at every module call.

A digest is a CRC-32 of a value's logical bytes, read in place where the tensor allows it
(a contiguous CPU tensor is read straight from its storage). Tensors up to 8 KiB are hashed
whole; larger ones by a fixed sample of 256 of their 64-bit words spread evenly over them
plus their last bytes, so a digest costs the same whatever the size of the tensor. Tensors
off the CPU are sampled on their device; only the sample is copied to the CPU, which
synchronises the device.
"""

from __future__ import annotations

import ctypes
import sys
import zlib
from collections.abc import Callable
from typing import Any

__all__ = ["array_digest", "tensor_digest"]

# Tensors up to this size are hashed whole, by CRC-32. Larger ones are fingerprinted by a
# fixed sample of their 64-bit words spread evenly over them, and their last word and
# trailing bytes, so a call costs the same whatever the size of its tensors: hashing every
# byte of a small transformer's activations took longer than its forward pass. A
# difference confined to a few elements of a large tensor can go unseen at the call that
# made it and show at the next call it spreads to; values checked with golden_tensor are
# compared in full.
_SAMPLE_FROM = 1 << 13
_SAMPLE_WORDS = 256


def _sample_layout(count: int) -> tuple[int, int]:
    """Where the sample of ``count`` 64-bit words starts, and its step, both in words.

    The sample ends on the last word, so a change at the very end of a tensor (the last
    sample of a batch, the last token) is always seen.
    """
    step = (count - 1) // (_SAMPLE_WORDS - 1)
    return count - 1 - (_SAMPLE_WORDS - 1) * step, step


#: A buffer's size -> (the ctypes array type of that size, the digest of such a buffer).
#: Working these out once per size saves most of the cost of a digest, which runs for
#: almost every module call. Emptied when full: sizes are few in a model, but a test that
#: grows a cache token by token sees a new one per step.
_digesters: dict[int, tuple[Any, Callable[[Any], int]]] = {}
_DIGESTERS_KEPT = 1024


def _digester(size: int) -> tuple[Any, Callable[[Any], int]]:
    entry = _digesters.get(size)
    if entry is not None:
        return entry
    if len(_digesters) >= _DIGESTERS_KEPT:
        _digesters.clear()
    entry = _digesters[size] = (ctypes.c_char * size, _make_digest(size))
    return entry


def _make_digest(size: int) -> Callable[[Any], int]:
    crc32 = zlib.crc32
    if size <= _SAMPLE_FROM:
        return crc32
    import numpy

    count = size // 8
    start, step = _sample_layout(count)
    array, shape, uint64 = numpy.ndarray, (_SAMPLE_WORDS,), numpy.dtype(numpy.uint64)
    offset, strides = start * 8, (step * 8,)
    if size % 8 == 0:

        def sampled(buffer: Any) -> int:
            # A strided view straight on the buffer: NumPy gathers the sample in one call.
            return crc32(array(shape, uint64, buffer, offset, strides).tobytes())

        return sampled
    tail = count * 8

    def sampled_with_tail(buffer: Any) -> int:
        digest = crc32(array(shape, uint64, buffer, offset, strides).tobytes())
        return crc32(memoryview(buffer).cast("B")[tail:], digest)

    return sampled_with_tail


def _buffer_digest(buffer: Any, size: int) -> int:
    return _digester(size)[1](buffer)


def _device_digest(torch: Any, flat: Any, size: int) -> int:
    """Digest of a contiguous tensor off the CPU: only the sample crosses to the CPU."""
    raw = flat.reshape(-1).view(torch.uint8)
    if size <= _SAMPLE_FROM:
        return _buffer_digest(raw.cpu().numpy(), size)
    if raw.storage_offset() % 8:
        # Viewing bytes as int64 needs an aligned start.
        raw = raw.clone()
    count = size // 8
    start, step = _sample_layout(count)
    sample = raw[: count * 8].view(torch.int64)[start::step].cpu().numpy()
    digest = zlib.crc32(sample.tobytes())
    if size % 8:
        digest = zlib.crc32(raw[count * 8 :].cpu().numpy(), digest)
    return digest


def tensor_digest(torch: Any, tensor: Any) -> int:
    """A digest of a tensor's logical bytes, read in place when the tensor allows it."""
    try:
        # The common case first, in as few calls into torch as it takes: this runs for
        # almost every module call.
        if (
            type(tensor) is torch.Tensor
            and tensor.is_cpu
            and tensor.is_contiguous()
            and not tensor.is_neg()
            and not tensor.is_conj()
        ):
            size = tensor.nbytes
            if not size:
                return 0
            # Reading the storage through ctypes avoids building a NumPy view of it.
            array_type, digest = _digester(size)
            return digest(array_type.from_address(tensor.data_ptr()))
        flat = tensor
        if flat.is_conj() or flat.is_neg():
            flat = flat.detach().resolve_conj().resolve_neg()
        if not flat.is_contiguous():
            flat = flat.detach().contiguous()
        size = flat.nbytes
        if size == 0:
            return 0
        if not flat.is_cpu:
            return _device_digest(torch, flat.detach(), size)
        # The rest (a contiguous copy, a Parameter, a subclass, which may not own the
        # memory its pointer names) is read through NumPy.
        return _buffer_digest(flat.detach().reshape(-1).view(torch.uint8).numpy(), size)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return -1


def array_digest(value: Any) -> int:
    """A digest of a NumPy array of numbers, hashed whole; ``0`` for anything else."""
    numpy = sys.modules.get("numpy")
    if numpy is None or not isinstance(value, numpy.ndarray) or value.dtype.kind not in "biufc":
        return 0
    return zlib.crc32(numpy.ascontiguousarray(value).reshape(-1).view(numpy.uint8))
