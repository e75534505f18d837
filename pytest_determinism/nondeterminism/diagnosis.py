"""Why two runs differ: the first diverging module call, the likely cause and the fix.

:func:`diagnose` lines up two :class:`~pytest_determinism.nondeterminism.trace.Trace`
objects call by call and finds the first module call, in the order calls returned, whose output
fingerprint differs: the innermost culprit comes before the modules enclosing it. Then:

- its inputs were identical: the module itself made the difference. A changed buffer or
  parameter means state left by an earlier call (BatchNorm running statistics, caches, an
  optimizer step); changed torch settings mean the thread count, TF32 or the deterministic
  algorithms switch; in the seed probe run it is a draw from the RNG inside its forward (a
  stochastic layer in training mode, or random masking or sampling in eval mode); in a
  repeated run it is randomness outside the seeded RNGs or a kernel without a deterministic
  implementation.
- its inputs already differed: the difference arose before it, in the forward of the
  innermost enclosing call whose inputs were identical, or before the model was called.

Lining the traces up is :mod:`~pytest_determinism.nondeterminism.alignment`'s job, the
cause and fix of a module's own difference :mod:`~pytest_determinism.nondeterminism.causes`'.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pytest_determinism.nondeterminism.alignment import (
    agrees_until_stopped,
    first_output_difference,
    first_sequence_difference,
    origin_of,
    previous_sibling,
)
from pytest_determinism.nondeterminism.causes import (
    BEFORE_MODEL,
    CALL_SEQUENCE,
    OUTSIDE_MODULES,
    OUTSIDE_RNG,
    OUTSIDE_RNG_FIX,
    Pair,
    call_name,
    stochastic_inside,
)

if TYPE_CHECKING:
    from pytest_determinism.nondeterminism.runs import RunKind
    from pytest_determinism.nondeterminism.trace import CallRecord, Fingerprint, Trace

__all__ = ["Diagnosis", "diagnose"]


@dataclass(frozen=True)
class Diagnosis:
    """What made two runs differ.

    ``module`` / ``cls`` name the first diverging module call (``None`` when no module
    output differed): its qualified name (``encoder.stages.1.layers.0.drop_path``), or
    ``<root Class>`` for the outermost module itself; ``root`` is the class of the outermost
    module it belongs to.
    ``training`` is its mode, ``stochastic_inside`` the stochastic layers called inside it
    (``"name (Class, training)"``; the module itself when it is one), ``inputs_differed``
    whether its inputs were already different. ``origin`` names the module whose own code
    made the difference when that is an enclosing one. ``cause`` is one of the
    constants of :mod:`~pytest_determinism.nondeterminism.causes`; ``explanation`` and
    ``fix`` are sentences; ``text`` is the whole account, as the verdict's message quotes it.
    ``source`` is the entry index of the call whose own code made the difference (where to
    look for the op), ``-1`` when it arose outside every module call, ``None`` when unknown.
    ``calls_agree`` says that the other run made run 0's module calls with identical
    outputs for as long as it made calls (it may have stopped early, by raising): a
    failure of that run then did not come from the model.
    """

    kind: RunKind
    cause: str
    module: str | None
    cls: str | None
    root: str | None
    training: bool | None
    stochastic_inside: tuple[str, ...]
    inputs_differed: bool | None
    origin: str | None
    explanation: str
    fix: str
    text: str
    source: int | None = None
    calls_agree: bool = False


def _label(path: str) -> str:
    # Positional arguments have numeric paths (``0``, ``1.2``), keyword arguments and
    # output fields their names, a bare output none.
    if not path:
        return "the value"
    return f"argument {path}" if path[0].isdigit() else path


def _differing(a: Fingerprint | None, b: Fingerprint | None) -> list[str]:
    """The values that differ between two fingerprints."""
    if a is None or b is None:
        return ["the call raised in one run only"]
    left = {leaf[0]: leaf for leaf in a}
    right = {leaf[0]: leaf for leaf in b}
    paths = [path for path in left if left[path] != right.get(path)]
    paths += [path for path in right if path not in left]
    return [_label(path) for path in paths]


def _described_difference(a: Fingerprint | None, b: Fingerprint | None) -> str:
    paths = _differing(a, b)
    if not paths:
        return "identical"
    if paths == ["the value"]:
        return "differ"
    shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    return f"differ ({shown})"


def diagnose(first: Trace, other: Trace, *, kind: RunKind, other_name: str = "run 1") -> Diagnosis:
    """Explain why ``other`` differs from ``first``.

    ``kind`` is ``"repeat"`` (both runs seeded alike) or ``"seed"`` (``other`` is the seed
    probe run, where draws inside forward calls come from another seed and everything else
    is unchanged). ``other_name`` names the second run in sentences (``"run 2"``,
    ``"the probe run"``).
    """
    pair = Pair(first, other, kind, other_name)
    split = first_sequence_difference(first, other)
    index = first_output_difference(first, other, split)
    if index is not None:
        found = _diverging_call(pair, index)
    elif split is not None:
        found = _sequence(pair, split)
    else:
        found = _nothing(pair)
    return replace(found, calls_agree=agrees_until_stopped(first, other))


def _finish(
    pair: Pair,
    cause: str,
    explanation: str,
    fix: str,
    lines: list[str],
    *,
    record: CallRecord | None = None,
    inputs_differed: bool | None = None,
    origin: CallRecord | None = None,
    source: int | None = -1,
) -> Diagnosis:
    lines += [f"  likely cause: {cause}", f"  why: {explanation}", f"  fix: {fix}"]
    stochastic = () if record is None else stochastic_inside(pair.a, record)
    return Diagnosis(
        kind=pair.kind,
        cause=cause,
        module=None if record is None else record.display_name,
        cls=None if record is None else record.cls,
        root=None if record is None else record.root,
        training=None if record is None else record.training,
        stochastic_inside=stochastic,
        inputs_differed=inputs_differed,
        origin=None if origin is None else origin.display_name,
        explanation=explanation,
        fix=fix,
        text="\n".join(lines),
        source=source,
    )


def _compiled_note(record: CallRecord) -> str:
    if record.compiled is None:
        return ""
    return ", compiled (torch.compile): the module calls inside it are not seen"


def _diverging_call(pair: Pair, index: int) -> Diagnosis:
    a, b = pair.a, pair.b
    record, twin = a.calls[index], b.calls[index]
    inputs_differed = record.inputs != twin.inputs
    stochastic = stochastic_inside(a, record)
    lines = [
        "First module call whose output differed (in the order calls returned):",
        f"  module: {record.display_name}",
        f"  class: {record.cls}{_compiled_note(record)} (in {record.root}, call {index} of "
        f"{len(a)} in run 0)",
        f"  mode: {'training' if record.training else 'eval'}",
        f"  stochastic layers inside: {', '.join(stochastic) if stochastic else 'none'}",
        f"  inputs: {_described_difference(record.inputs, twin.inputs)}",
        f"  outputs: {_described_difference(record.outputs, twin.outputs)}",
    ]
    if not inputs_differed:
        lines.append("  so the difference arose inside this module")
        cause, explanation, fix = pair.module_cause(record, twin)
        return _finish(
            pair,
            cause,
            explanation,
            fix,
            lines,
            record=record,
            inputs_differed=False,
            source=record.index,
        )
    origin = origin_of(a, b, record)
    if origin is None:
        outer = a.calls[a.outermost[record.outer]]
        explanation = (
            f"the inputs of the outermost call {call_name(outer)} already differed in "
            f"{pair.other}, so the cause lies before the model: the data or inputs, "
            "built from an unseeded generator (numpy.random.default_rng() or "
            "torch.Generator() without a seed, os.urandom, the time), DataLoader workers "
            "without a worker_init_fn, or the caller's own state."
        )
        if pair.kind == "seed":
            explanation += (
                " In the probe run, only draws inside forward calls change, so these inputs "
                "were computed from an earlier forward call's outputs."
            )
        fix = (
            "build the inputs from the test's seed (the determinism fixture's .rng() or "
            ".generator(), or the seeded global RNGs), give DataLoaders the fixture's "
            "worker_init_fn, and check the code that prepares the batch"
        )
        return _finish(
            pair, BEFORE_MODEL, explanation, fix, lines, record=record, inputs_differed=True
        )
    previous = previous_sibling(a, origin, index)
    where = (
        f"after {call_name(previous)} returned identical outputs and before "
        f"{call_name(record)} was called"
        if previous is not None
        else f"before it called {call_name(record)}"
    )
    lines.append(
        f"  its inputs come from {call_name(origin)}, whose inputs were identical: the "
        f"difference arose in the forward code of {call_name(origin)} itself, {where}"
    )
    cause, explanation, fix = pair.module_cause(origin, b.calls[origin.index])
    return _finish(
        pair,
        cause,
        "It arose in an enclosing module's own code: " + explanation,
        fix,
        lines,
        record=record,
        inputs_differed=True,
        origin=origin,
        source=origin.index,
    )


def _sequence(pair: Pair, split: int) -> Diagnosis:
    a, b = pair.a, pair.b
    first_call = a.calls[split] if split < len(a) else None
    other_call = b.calls[split] if split < len(b) else None
    described = [
        f"run 0 called {call_name(first_call)}" if first_call else "run 0 stopped",
        f"{pair.other} called {call_name(other_call)}" if other_call else f"{pair.other} stopped",
    ]
    lines = [
        f"The runs made a different sequence of module calls from call {split} on: "
        f"{'; '.join(described)}; all earlier calls returned identical outputs."
    ]
    known = first_call or other_call
    parent_index = -1 if known is None else known.parent
    if parent_index < 0:
        explanation = (
            "the number or order of outermost forward calls changed, so the test's own code "
            "chose differently: a loop whose length depends on randomness (sampling until an "
            "end token) or on values computed outside forward calls."
        )
        if pair.kind == "seed":
            explanation += (
                " In the probe run only draws inside forward calls change, so that choice "
                "depends on random draws made inside the model."
            )
        fix = (
            "make the decision deterministic (greedy decoding, a fixed number of steps), pass "
            "the sampling a torch.Generator, or mark the test stochastic=True if sampling is "
            "the point"
        )
        return _finish(pair, CALL_SEQUENCE, explanation, fix, lines)
    parent = a.calls[parent_index]
    twin = b.calls[parent_index]
    lines.append(
        f"  the calls were made by {call_name(parent)}, in "
        f"{'training' if parent.training else 'eval'} mode, whose inputs were "
        f"{_described_difference(parent.inputs, twin.inputs)}"
    )
    if parent.inputs != twin.inputs:
        origin = origin_of(a, b, parent)
        if origin is None:
            return _finish(
                pair,
                BEFORE_MODEL,
                "the inputs of the outermost call already differed, so the cause lies before "
                "the model (the data, an unseeded generator, the caller).",
                "build the inputs from the test's seed (the determinism fixture's .rng() or "
                ".generator()) and check the code that prepares the batch",
                lines,
                record=parent,
                inputs_differed=True,
            )
        parent, twin = origin, b.calls[origin.index]
    cause, explanation, fix = pair.module_cause(parent, twin)
    explanation = (
        f"{call_name(parent)} decided differently which modules to call (random layer drop / "
        f"stochastic depth by skipping, or data-dependent control flow). " + explanation
    )
    return _finish(
        pair,
        cause,
        explanation,
        fix,
        lines,
        record=parent,
        inputs_differed=False,
        source=parent.index,
    )


def _nothing(pair: Pair) -> Diagnosis:
    if not len(pair.a):
        lines = [
            "No torch module was called through Module.__call__, so no module can be named "
            "(calls such as module.forward(x) or compiled code are not seen)."
        ]
    else:
        lines = [
            f"All {len(pair.a)} module calls returned identical outputs in both runs, so "
            "the difference arose outside module forward calls."
        ]
    if pair.kind == "seed":
        explanation = (
            "in the probe run only random draws inside forward calls change: they reached the "
            "checked values without changing any module's output (a forward hook, or a "
            "module called through module.forward(x), which the probe does not see)."
        )
        fix = (
            "call modules as module(x) so they can be traced, and keep random draws out of "
            "inference code; mark the test stochastic=True if its outputs are meant to depend "
            "on the seed"
        )
        cause = OUTSIDE_MODULES
    else:
        explanation = (
            "the test's own code after or between the forward calls draws randomness outside "
            "the seeded RNGs (an unseeded numpy.random.default_rng(), os.urandom, the time, "
            "iteration over a set of strings with PYTHONHASHSEED unset) or runs a "
            "nondeterministic op outside any module."
        )
        fix = OUTSIDE_RNG_FIX
        cause = OUTSIDE_RNG
    return _finish(pair, cause, explanation, fix, lines)
