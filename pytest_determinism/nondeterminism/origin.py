"""The origin of a golden difference: where, in the module calls of a run, it started.

Two golden traces (:mod:`pytest_determinism.golden.golden_trace`) are lined up and read
the way a determinism debugger reads two logs: the first call whose output differs while
its inputs matched is where the difference came in.

- Alignment: ``difflib.SequenceMatcher`` over the calls' ``(qualified name, class)``, so a
  module added, removed or called in another order leaves the rest matched; the first
  place where the two sequences part is named.
- Each matched call's outputs are compared through their sketches
  (:func:`~pytest_determinism.nondeterminism.sketch.relative_difference`) against the
  ``rtol`` of their dtype (exact dtypes: any difference). Calls are read in the order they
  returned, so the innermost call that went beyond its tolerance comes before the blocks
  around it.
- The verdict: the call's own parameters or buffers differ from the recording: **the
  weights changed**; else the inputs of the outermost call differ: **the inputs to the
  model changed**; else **this module computes differently now**, with the drift kind its
  sampled elements show.
- The growth line (:mod:`pytest_determinism.nondeterminism.growth`): the estimated
  difference after each top-level block.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pytest_determinism.golden.drift import Drift
from pytest_determinism.golden.dtypes import DTYPES, EXACT_KINDS
from pytest_determinism.golden.golden_trace import MORE, GoldenTrace, TracedCall
from pytest_determinism.golden.tolerances import Tolerance
from pytest_determinism.nondeterminism.growth import (
    GrowthNode,
    format_difference,
    growth_line,
    growth_of,
)
from pytest_determinism.nondeterminism.sketch import drift_of, relative_difference

__all__ = ["CallDifference", "Origin", "Verdict", "find_origin"]

#: What changed, by the evidence at the first call beyond its tolerance.
Verdict = Literal["weights", "inputs", "computation"]

_VERDICTS: dict[str, str] = {
    "weights": "the weights changed (a checkpoint, an init, a parameter edit)",
    "inputs": (
        "the inputs to the model changed (data, preprocessing, an unseeded draw before the model)"
    ),
    "computation": (
        "this module computes differently now (an op, a dtype, a library version, a thread count)"
    ),
}


@dataclass(frozen=True)
class CallDifference:
    """One matched call: its index now and in the recording, the call as made now, the
    estimated relative difference of its outputs (the largest, relative to its tolerance),
    the dtype and tolerance of that output, and whether it is beyond the tolerance."""

    index: int
    recorded_index: int
    call: TracedCall
    difference: float
    dtype: str
    tolerance: float
    beyond: bool


@dataclass(frozen=True)
class Origin:
    """Where a difference between a recorded golden trace and the current one started.

    ``parting`` describes the first place where the two sequences of calls part (``None``
    when they are the same sequence), at call ``parting_index`` of the current trace.
    ``first`` is the first matched call beyond its tolerance, in the order calls returned
    (``None``: none is); ``inputs_match`` / ``params_match`` say whether its inputs and its
    own parameters and buffers are as recorded, ``model_inputs_match`` whether the inputs
    of its outermost call are; ``drift`` is the drift kind its sampled elements show (of
    ``first_changed`` where no call is beyond its tolerance).
    ``growth`` is the estimated difference after each top-level block, in call order.
    """

    recorded_calls: int
    current_calls: int
    differences: tuple[CallDifference, ...]
    parting: str | None = None
    parting_index: int | None = None
    first: CallDifference | None = None
    inputs_match: bool = True
    params_match: bool = True
    model_inputs_match: bool = True
    changed_params: tuple[str, ...] = ()
    verdict: Verdict | None = None
    drift: Drift | None = None
    #: Where no call is beyond its tolerance: the first whose bits differ at all.
    first_changed: CallDifference | None = None
    growth: tuple[GrowthNode, ...] = ()
    #: The current trace's call indices in the order the calls returned.
    returned: tuple[int, ...] = ()

    def message(self) -> str:
        """The analysis in words, one finding a line."""
        lines = [
            f"where the difference started (golden trace: {self.recorded_calls} module calls "
            f"recorded, {self.current_calls} made now):"
        ]
        if self.parting is not None:
            lines.append(f"  the sequences of module calls part at {self.parting}")
        first = self.first
        if first is None:
            lines.extend(self._within_tolerance())
        else:
            call = first.call
            tolerance = (
                "exact" if first.tolerance == 0 else f"rtol {format_difference(first.tolerance)}"
            )
            lines.append(
                f"  first module call beyond its tolerance: {call.display_name} ({call.cls}), "
                f"call {first.index + 1} of {self.current_calls}"
            )
            if math.isinf(first.difference):
                lines.append(
                    "    its output cannot be compared with the recording: another dtype, "
                    "shape or set of outputs, or a NaN or infinity that appeared or went away"
                )
            else:
                lines.append(
                    f"    estimated relative difference {format_difference(first.difference)} "
                    f"against {tolerance} ({first.dtype})"
                )
            lines.append(
                f"    its inputs: {_matched(self.inputs_match)}; its parameters and buffers: "
                f"{_matched(self.params_match)}"
            )
            lines.append(f"  verdict: {self._verdict_text()}")
        if self.growth:
            lines.append(f"  along the model: {growth_line(self.growth, self._first_node())}")
        return "\n".join(lines)

    def _within_tolerance(self) -> list[str]:
        """What to say when no call's output differs beyond its tolerance."""
        changed = self.first_changed
        if changed is None:
            return [
                "  every module call's output is as recorded, bit for bit: the difference "
                "comes from code outside the recorded module calls (after the model, or a "
                "value no module produced)"
            ]
        call = changed.call
        lines = [
            "  no module call's output differs beyond its tolerance; the first whose bits "
            f"differ: {call.display_name} ({call.cls}), call {changed.index + 1} of "
            f"{self.current_calls}",
            f"    estimated relative difference {format_difference(changed.difference)}, "
            f"within rtol {format_difference(changed.tolerance)} ({changed.dtype})",
        ]
        if self.drift is not None:
            lines.append(f"    drift kind of its output: {self.drift.describe(changed.dtype)}")
        lines.append(
            "  small differences that stay within tolerance through the model and exceed it "
            "only in the checked value (where large terms cancel to small results), or a "
            "larger one in elements the sketches do not sample"
        )
        return lines

    def _verdict_text(self) -> str:
        assert self.verdict is not None and self.first is not None
        text = _VERDICTS[self.verdict]
        if self.verdict == "weights":
            others = [n for n in self.changed_params if n != self.first.call.display_name]
            if others:
                shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
                text += f"; the parameters of {len(others)} other module(s) differ too: {shown}"
        elif self.verdict == "inputs":
            text += ": the inputs of the outermost module call differ from the recording"
        elif not self.inputs_match:
            text = (
                "the difference came in before this call: its inputs already differ (by less "
                "than their tolerance, or where the sequences part); this call is where it "
                "grew beyond the tolerance"
            )
        if self.verdict == "computation" and self.drift is not None:
            text += f"\n    drift kind of its output: {self.drift.describe(self.first.dtype)}"
        return text

    def _first_node(self) -> int | None:
        for number, node in enumerate(self.growth):
            value = node.difference
            if value is not None and self.first is not None and value > self.first.tolerance:
                return number
        return None


def _matched(same: bool) -> str:
    return "as recorded" if same else "differ from the recording"


def _call_difference(
    now: TracedCall, recorded: TracedCall, tolerance_for: Callable[[str], Tolerance]
) -> tuple[float, str, float]:
    """The output with the largest difference relative to its tolerance: (difference,
    dtype, tolerance)."""
    stored = {out.path: out for out in recorded.outputs if out.dtype != MORE}
    worst = (0.0, "", 0.0)
    worst_ratio = -1.0
    outputs = [out for out in now.outputs if out.dtype != MORE]
    if sorted(stored) != sorted(out.path for out in outputs):
        dtype = (
            outputs[0].dtype if outputs else (next(iter(stored.values())).dtype if stored else "")
        )
        return math.inf, dtype, 0.0
    for out in outputs:
        difference = relative_difference(out, stored[out.path])
        info = DTYPES.get(out.dtype)
        exact = info is None or info.kind in EXACT_KINDS
        tolerance = 0.0 if exact else tolerance_for(out.dtype).rtol
        ratio = math.inf if difference and not tolerance else difference / (tolerance or 1.0)
        if ratio > worst_ratio:
            worst, worst_ratio = (difference, out.dtype, tolerance), ratio
    return worst


def find_origin(
    recorded: GoldenTrace,
    current: GoldenTrace,
    tolerance_for: Callable[[str], Tolerance],
) -> Origin:
    """Line ``current`` up with ``recorded`` and find where their difference started;
    ``tolerance_for(dtype)`` gives each output's tolerance."""
    keys_then = [(c.qualname, c.cls) for c in recorded.calls]
    keys_now = [(c.qualname, c.cls) for c in current.calls]
    matcher = difflib.SequenceMatcher(None, keys_then, keys_now, autojunk=False)
    parting = parting_index = None
    for tag, i1, _, j1, _ in matcher.get_opcodes():
        if tag != "equal":
            parting, parting_index = _parting(tag, recorded, current, i1, j1), j1
            break
    pairs: dict[int, int] = {}
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            pairs[block.b + k] = block.a + k
    differences: dict[int, CallDifference] = {}
    for now_index, then_index in sorted(pairs.items()):
        call = current.calls[now_index]
        difference, dtype, tolerance = _call_difference(
            call, recorded.calls[then_index], tolerance_for
        )
        differences[now_index] = CallDifference(
            index=now_index,
            recorded_index=then_index,
            call=call,
            difference=difference,
            dtype=dtype,
            tolerance=tolerance,
            beyond=difference > tolerance,
        )
    changed_params = tuple(
        dict.fromkeys(
            d.call.display_name
            for d in differences.values()
            if d.call.params != recorded.calls[d.recorded_index].params
        )
    )
    returned = tuple(current.exit_order())
    origin = Origin(
        recorded_calls=len(recorded),
        current_calls=len(current),
        differences=tuple(differences[i] for i in sorted(differences)),
        parting=parting,
        parting_index=parting_index,
        changed_params=changed_params,
        growth=growth_of(current, {i: d.difference for i, d in differences.items()}),
        returned=returned,
    )
    first = next(
        (differences[i] for i in returned if i in differences and differences[i].beyond),
        None,
    )
    if first is None:
        changed = next(
            (
                differences[i]
                for i in returned
                if i in differences and differences[i].difference > 0
            ),
            None,
        )
        if changed is None:
            return origin
        then = recorded.calls[changed.recorded_index]
        return dataclasses.replace(origin, first_changed=changed, drift=_drift(changed.call, then))
    then = recorded.calls[first.recorded_index]
    inputs_match = first.call.inputs == then.inputs
    params_match = first.call.params == then.params
    root = first.index
    while current.calls[root].parent != -1:
        root = current.calls[root].parent
    model_inputs_match = root not in pairs or (
        current.calls[root].inputs == recorded.calls[pairs[root]].inputs
    )
    verdict: Verdict = (
        "weights" if not params_match else "inputs" if not model_inputs_match else "computation"
    )
    drift = None
    if verdict == "computation":
        drift = _drift(first.call, then)
    return dataclasses.replace(
        origin,
        first=first,
        inputs_match=inputs_match,
        params_match=params_match,
        model_inputs_match=model_inputs_match,
        verdict=verdict,
        drift=drift,
    )


def _drift(now: TracedCall, then: TracedCall) -> Drift | None:
    stored = {out.path: out for out in then.outputs}
    for out in now.outputs:
        golden = stored.get(out.path)
        if golden is not None and golden.digest != out.digest:
            drift = drift_of(out, golden)
            if drift is not None:
                return drift
    return None


def _describe(call: TracedCall, index: int) -> str:
    return f"{call.display_name} ({call.cls}, call {index + 1})"


def _parting(tag: str, recorded: GoldenTrace, current: GoldenTrace, i: int, j: int) -> str:
    if tag == "insert":
        return f"call {j + 1}: {_describe(current.calls[j], j)} is new (not in the recording)"
    if tag == "delete":
        then = recorded.calls[i]
        return (
            f"call {j + 1}: the recording's {then.display_name} ({then.cls}, call {i + 1}) "
            "is not made now"
        )
    then, now = recorded.calls[i], current.calls[j]
    return (
        f"call {j + 1}: recorded {then.display_name} ({then.cls}), now "
        f"{now.display_name} ({now.cls})"
    )
