"""The golden trace: the module calls a test's body made, as its golden file stores them.

Under ``--update-golden`` a test that uses ``golden_tensor`` records, beside its values, the
torch module calls of its body in call order (see
:mod:`pytest_determinism.nondeterminism.recorder`). Each call keeps its qualified name,
class, the index of the call it was made in, a digest of its inputs, a digest of its own
parameters and buffers, and per tensor output its dtype, shape, a digest of its bits and,
for floating outputs, a sketch (:mod:`pytest_determinism.nondeterminism.sketch`): a few
elements at fixed positions and the norm, from which the relative difference to another
run's output is estimated. The size grows with the number of calls, never with tensor
sizes: at most :data:`MAX_OUTPUTS` outputs are kept per call (the rest share one digest).

The golden trace is stored as compact JSON in the file's metadata under :data:`TRACE_KEY`,
serialised deterministically (fixed key order, no floating text but ``repr``), so an
unchanged golden stays byte-identical. It is a different thing from the in-process
:class:`~pytest_determinism.nondeterminism.trace.Trace`: persisted, compared across
processes and versions, and so free of anything a process salts (``hash()`` of strings).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pytest_determinism.golden.dtypes import DTYPES

__all__ = [
    "MAX_OUTPUTS",
    "TRACE_FORMAT",
    "TRACE_KEY",
    "GoldenTrace",
    "TracedCall",
    "TracedOutput",
    "decode_trace",
    "encode_trace",
    "stored_trace",
]

#: Metadata key of the golden trace in a golden file.
TRACE_KEY = "trace"

#: Version of the golden trace's layout, stored with it.
TRACE_FORMAT = 1

#: Tensor outputs kept per call; further ones are summarised by one combined digest, so a
#: call returning every hidden state still costs about a kilobyte.
MAX_OUTPUTS = 4

#: The dtype noted for the combined entry of outputs past :data:`MAX_OUTPUTS`.
MORE = "more"


@dataclass(frozen=True)
class TracedOutput:
    """One tensor output of a call: where it is in the result (``""`` for a bare tensor,
    ``"0"``, ``"last_hidden_state"``), its dtype and shape, a digest of its bits and, for a
    floating one, its sketch (``samples``: the raw little-endian bits of a few elements at
    fixed positions; ``norm``: its L2 norm, ``None`` where not finite)."""

    path: str
    dtype: str
    shape: tuple[int, ...]
    digest: int
    samples: bytes | None = None
    norm: float | None = None


@dataclass(frozen=True)
class TracedCall:
    """One module call: its qualified name within the outermost module (``""`` for the
    outermost module itself), class, the index of the call it was made in (``-1`` for an
    outermost call), digests of its inputs and of its own parameters and buffers, and its
    tensor outputs (empty when it raised or returned none)."""

    qualname: str
    cls: str
    parent: int
    inputs: int
    params: int
    outputs: tuple[TracedOutput, ...]

    @property
    def display_name(self) -> str:
        """The qualified name, or ``<root Class>`` for an outermost call."""
        return self.qualname or f"<root {self.cls}>"


@dataclass(frozen=True)
class GoldenTrace:
    """The module calls of one run of a test body, in call order."""

    calls: tuple[TracedCall, ...]

    def __len__(self) -> int:
        return len(self.calls)

    def exit_order(self) -> list[int]:
        """Call indices in the order the calls returned: every call after the calls made
        inside it, siblings in call order."""
        children: dict[int, list[int]] = {}
        for index, call in enumerate(self.calls):
            children.setdefault(call.parent, []).append(index)
        order: list[int] = []
        # Iterative post-order: call stacks of deep models would exceed recursion limits.
        stack: list[tuple[int, bool]] = [(i, False) for i in reversed(children.get(-1, []))]
        while stack:
            index, expanded = stack.pop()
            if expanded:
                order.append(index)
                continue
            stack.append((index, True))
            stack.extend((i, False) for i in reversed(children.get(index, [])))
        return order


def encode_trace(trace: GoldenTrace) -> str:
    """The golden trace as the compact JSON text a golden file stores (deterministic)."""
    calls = [
        [
            call.qualname,
            call.cls,
            call.parent,
            call.inputs,
            call.params,
            [
                [
                    out.path,
                    out.dtype,
                    list(out.shape),
                    out.digest,
                    None if out.samples is None else base64.b64encode(out.samples).decode(),
                    out.norm,
                ]
                for out in call.outputs
            ],
        ]
        for call in trace.calls
    ]
    return json.dumps(
        {"format": TRACE_FORMAT, "calls": calls},
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )


def decode_trace(text: str) -> GoldenTrace:
    """Parse a stored golden trace; ``ValueError`` saying what is wrong where."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"it is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != TRACE_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"its format is {found!r}, not {TRACE_FORMAT} (written by another version?)"
        )
    rows = data.get("calls")
    if not isinstance(rows, list):
        raise ValueError("it holds no list of calls")
    calls = []
    for number, row in enumerate(rows):
        try:
            calls.append(_call(row, number))
        except (TypeError, ValueError, binascii.Error) as exc:
            raise ValueError(f"call {number} is malformed ({exc})") from None
    return GoldenTrace(tuple(calls))


def stored_trace(metadata: Mapping[str, str]) -> GoldenTrace | None:
    """The golden trace a golden file's ``metadata`` holds, ``None`` where it holds none (a
    golden recorded before traces, or with ``golden_trace = false``); ``ValueError`` when
    it cannot be read."""
    text = metadata.get(TRACE_KEY)
    return None if text is None else decode_trace(text)


def _call(row: Any, number: int) -> TracedCall:
    if not isinstance(row, list) or len(row) != 6:
        raise ValueError("not a list of 6 fields")
    qualname, cls, parent, inputs, params, outputs = row
    if not isinstance(qualname, str) or not isinstance(cls, str):
        raise ValueError("name and class must be strings")
    for value in (parent, inputs, params):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("parent and digests must be integers")
    if not -1 <= parent < number:
        raise ValueError(f"parent {parent} is not an earlier call")
    if not isinstance(outputs, list) or len(outputs) > MAX_OUTPUTS + 1:
        raise ValueError("outputs must be a list of at most 5")
    return TracedCall(qualname, cls, parent, inputs, params, tuple(map(_output, outputs)))


def _output(row: Any) -> TracedOutput:
    if not isinstance(row, list) or len(row) != 6:
        raise ValueError("an output is not a list of 6 fields")
    path, dtype, shape, digest, samples, norm = row
    if not isinstance(path, str) or not isinstance(dtype, str):
        raise ValueError("an output's path and dtype must be strings")
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise ValueError("an output's shape must be a list of sizes")
    if not isinstance(digest, int) or isinstance(digest, bool):
        raise ValueError("an output's digest must be an integer")
    raw = None
    if samples is not None:
        if not isinstance(samples, str):
            raise ValueError("an output's samples must be base64 text")
        if dtype not in DTYPES or DTYPES[dtype].kind != "float":
            raise ValueError(f"samples of an output of dtype {dtype!r}")
        raw = base64.b64decode(samples, validate=True)
        if len(raw) % DTYPES[dtype].itemsize:
            raise ValueError("an output's samples are not whole elements")
    if norm is not None and not (
        isinstance(norm, int | float) and not isinstance(norm, bool) and math.isfinite(norm)
    ):
        raise ValueError("an output's norm must be a finite number")
    return TracedOutput(
        path, dtype, tuple(shape), digest, raw, None if norm is None else float(norm)
    )
