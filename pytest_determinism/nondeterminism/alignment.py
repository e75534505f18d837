"""Lining up the traces of two runs: where their module calls part.

Two traces of the same code are compared by call index: calls are made in the same order
until the runs choose differently which modules to call, so index ``i`` of one trace is
call ``i`` of the other up to :func:`first_sequence_difference`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_determinism.nondeterminism.trace import CallRecord, Trace

__all__ = [
    "agrees_until_stopped",
    "first_output_difference",
    "first_sequence_difference",
    "origin_of",
    "previous_sibling",
]


def first_sequence_difference(a: Trace, b: Trace) -> int | None:
    """Entry index of the first call that differs in name or nesting, or ``None``."""
    for left, right in zip(a.calls, b.calls, strict=False):
        if (left.parent, left.qualname, left.cls) != (right.parent, right.qualname, right.cls):
            return left.index
    return None if len(a) == len(b) else min(len(a), len(b))


def agrees_until_stopped(a: Trace, b: Trace) -> bool:
    """Whether ``b`` made ``a``'s module calls, in order, for as long as it made any, each
    returning identical outputs, or raising on the same positional inputs (the call that
    ``b`` stopped in): no module behaved differently before ``b`` failed."""
    if len(b) > len(a):
        return False
    for left, right in zip(a.calls, b.calls, strict=False):
        if (left.parent, left.qualname, left.cls) != (right.parent, right.qualname, right.cls):
            return False
        if right.outputs is None:
            # Keyword arguments are fingerprinted when a call returns, so a call that
            # raised holds only its positional inputs.
            if left.inputs[: len(right.inputs)] != right.inputs:
                return False
        elif right.outputs != left.outputs:
            return False
    return True


def first_output_difference(a: Trace, b: Trace, limit: int | None) -> int | None:
    """Entry index of the first call, in return order, whose outputs differ."""
    other = b.calls
    for record in a.by_exit():
        if limit is not None and record.last >= limit:
            # From here on calls enclose or follow the point where the sequences part.
            return None
        if record.outputs != other[record.index].outputs:
            return record.index
    return None


def origin_of(a: Trace, b: Trace, record: CallRecord) -> CallRecord | None:
    """The innermost call enclosing ``record`` whose inputs were identical."""
    calls, other = a.calls, b.calls
    parent = record.parent
    while parent >= 0:
        if calls[parent].inputs == other[parent].inputs:
            return calls[parent]
        parent = calls[parent].parent
    return None


def previous_sibling(trace: Trace, origin: CallRecord, index: int) -> CallRecord | None:
    """The last call made directly by ``origin`` that returned before call ``index`` began."""
    previous = None
    for call in trace.nested(origin):
        if call.index >= index:
            break
        if call.parent == origin.index and call.last < index:
            previous = call
    return previous
