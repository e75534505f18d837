"""Recording a golden trace: the module calls of one run, with sketches of their outputs
and digests of their parameters, as a golden file stores them.

It rides on the module tracer (:func:`~pytest_determinism.nondeterminism.trace.tracing`),
so names, classes, nesting and compiled modules are what the CI mode sees; unlike the CI
mode it records the pass-through classes too (``ReLU``, ``GELU``, ...). On top, as each
call returns, it takes the sketch of each floating output
(:mod:`pytest_determinism.nondeterminism.sketch`) and a digest of the module's own
parameters and buffers, of every byte: a golden trace is compared with runs of another
process, another version, another checkpoint, where a version counter means nothing. A
module's digest is taken once per recording while its tensors stand still, so a model costs
one pass over its weights, however often its modules are called.
"""

from __future__ import annotations

import ctypes
import dataclasses
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pytest_determinism.golden.dtypes import DTYPES
from pytest_determinism.golden.golden_trace import (
    MAX_OUTPUTS,
    MORE,
    GoldenTrace,
    TracedCall,
    TracedOutput,
)
from pytest_determinism.nondeterminism.blocks import enclosing_observer
from pytest_determinism.nondeterminism.digest import tensor_digest
from pytest_determinism.nondeterminism.sketch import take_sketch
from pytest_determinism.nondeterminism.trace import Fingerprint, Trace, tracing

__all__ = ["GoldenTraceRecorder", "recording"]

# Containers nested deeper than this in a module's result are not looked into.
_MAX_DEPTH = 4
# Value types whose digest in a fingerprint is the same in every process: str, bytes and
# None hash differently per process (or per object), and are left out of input digests.
_STABLE_TYPES = frozenset({"int", "float", "bool", "complex"})


class GoldenTraceRecorder:
    """What a :func:`recording` block collects; :meth:`golden_trace` once it has ended."""

    def __init__(self, torch: Any) -> None:
        self._torch = torch
        self._outputs: dict[int, tuple[TracedOutput, ...]] = {}
        self._params: dict[int, int] = {}
        # id(module) -> (the state's identity: (id, version, pointer) per tensor, digest).
        self._state_digests: dict[int, tuple[tuple[Any, ...], int]] = {}
        #: The tracer's trace of the block, once it has begun.
        self.trace: Trace | None = None

    def returned(self, index: int, module: Any, result: Any) -> None:
        """The tracer's callback: sketch the outputs of call ``index``, digest its state."""
        tensors: list[tuple[str, Any]] = []
        self._tensors(result, "", tensors, 0)
        outputs = [self._output(path, tensor) for path, tensor in tensors[:MAX_OUTPUTS]]
        if len(tensors) > MAX_OUTPUTS:
            combined = 0
            for path, tensor in tensors[MAX_OUTPUTS:]:
                combined = zlib.crc32(
                    f"{path}:{tensor_digest(self._torch, tensor)};".encode(), combined
                )
            outputs.append(TracedOutput(f"+{len(tensors) - MAX_OUTPUTS}", MORE, (), combined))
        self._outputs[index] = tuple(outputs)
        try:
            self._params[index] = self._state_digest(module)
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            # Meta, sparse or storage-less state has no bytes to read: it counts as unknown.
            self._params[index] = -1

    def golden_trace(self) -> GoldenTrace:
        """The calls recorded, in call order."""
        calls = []
        for record in self.trace.calls if self.trace is not None else ():
            calls.append(
                TracedCall(
                    qualname=record.qualname,
                    cls=record.cls,
                    parent=record.parent,
                    inputs=input_digest(record.inputs),
                    params=self._params.get(record.index, 0),
                    outputs=self._outputs.get(record.index, ()),
                )
            )
        return GoldenTrace(tuple(calls))

    def _output(self, path: str, tensor: Any) -> TracedOutput:
        torch = self._torch
        dtype = str(tensor.dtype).removeprefix("torch.")
        shape = tuple(int(n) for n in tensor.shape)
        digest = tensor_digest(torch, tensor)
        if (
            digest == -1
            or dtype not in DTYPES
            or not tensor.is_floating_point()
            or tensor.layout != torch.strided
        ):
            return TracedOutput(path, dtype, shape, digest)
        try:
            samples, norm = take_sketch(torch, tensor)
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            # A tensor whose elements cannot be read (a subclass without storage): its
            # digest alone says whether it changed.
            return TracedOutput(path, dtype, shape, digest)
        return TracedOutput(path, dtype, shape, digest, samples, norm)

    def _tensors(self, value: Any, path: str, out: list[tuple[str, Any]], depth: int) -> None:
        if isinstance(value, self._torch.Tensor):
            out.append((path, value))
        elif depth >= _MAX_DEPTH:
            return
        elif isinstance(value, tuple | list):
            for i, item in enumerate(value):
                self._tensors(item, f"{path}.{i}" if path else str(i), out, depth + 1)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                self._tensors(item, f"{path}.{key}" if path else str(key), out, depth + 1)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for item in dataclasses.fields(value):
                name = item.name
                child = f"{path}.{name}" if path else name
                self._tensors(getattr(value, name), child, out, depth + 1)

    def _state_digest(self, module: Any) -> int:
        tensors = [
            (name, tensor)
            for table in (module._parameters, module._buffers)
            for name, tensor in table.items()
            if tensor is not None
        ]
        if not tensors:
            return 0
        identity = tuple((id(t), t._version, t.data_ptr()) for _, t in tensors)
        kept = self._state_digests.get(id(module))
        if kept is not None and kept[0] == identity:
            return kept[1]
        digest = 0
        for name, tensor in tensors:
            digest = zlib.crc32(f"{name}:{tensor.dtype!s}:{tuple(tensor.shape)};".encode(), digest)
            if tensor.numel():
                digest = zlib.crc32(self._bytes(tensor), digest)
        self._state_digests[id(module)] = (identity, digest)
        return digest

    def _bytes(self, tensor: Any) -> Any:
        """Every byte of ``tensor``, read in place where it is a contiguous CPU tensor
        (every weight of a model on the CPU: one pass, no copy)."""
        torch = self._torch
        if (
            type(tensor) in (torch.Tensor, torch.nn.Parameter)
            and tensor.is_cpu
            and tensor.is_contiguous()
            and not tensor.is_neg()
            and not tensor.is_conj()
        ):
            return (ctypes.c_char * tensor.nbytes).from_address(tensor.data_ptr())
        data = tensor.detach().cpu().contiguous().reshape(-1)
        return data.view(torch.uint8).numpy()


def input_digest(inputs: Fingerprint) -> int:
    """One digest of a call's input fingerprint, the same in every process: tensors and
    numbers count, strings and other objects (hashed per process) do not."""
    digest = 0
    for path, kind, shape, value in inputs:
        if kind in _STABLE_TYPES or kind in DTYPES:
            digest = zlib.crc32(f"{path}|{kind}|{tuple(shape)}|{value};".encode(), digest)
    return digest


@contextmanager
def recording() -> Iterator[GoldenTraceRecorder]:
    """Record the golden trace of the module calls made inside the block; read it with
    :meth:`GoldenTraceRecorder.golden_trace` after the block. Nests like
    :func:`~pytest_determinism.nondeterminism.trace.tracing` (the innermost block
    records), and tells the enclosing block's observer of the outermost calls, as that
    block would have."""
    import torch

    recorder = GoldenTraceRecorder(torch)
    # The seed probe of a CI-mode run listens to the outermost calls: it keeps hearing them.
    # Every class is recorded: an activation swapped for another (ReLU for GELU) is a
    # change between two versions that the golden trace should name.
    with tracing(enclosing_observer(), returned=recorder.returned, every_class=True) as trace:
        recorder.trace = trace
        yield recorder
