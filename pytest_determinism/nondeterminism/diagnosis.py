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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_determinism.nondeterminism.runs import RunKind
    from pytest_determinism.nondeterminism.trace import CallRecord, Fingerprint, Trace
    from pytest_determinism.state.snapshot import TorchFlags

__all__ = [
    "BEFORE_MODEL",
    "CALL_SEQUENCE",
    "DIFFERENT_SETTINGS",
    "NONDETERMINISTIC_KERNEL",
    "OUTSIDE_MODULES",
    "OUTSIDE_RNG",
    "RNG_IN_EVAL",
    "RNG_IN_TRAINING",
    "STATE_LEFT",
    "STOCHASTIC_LAYER",
    "Diagnosis",
    "diagnose",
]

# Verdicts (``Diagnosis.cause``).
STOCHASTIC_LAYER = "stochastic layer in training mode"
RNG_IN_TRAINING = "draw from the RNG inside forward in training mode"
RNG_IN_EVAL = "draw from the RNG in eval mode"
STATE_LEFT = "state left by an earlier call"
DIFFERENT_SETTINGS = "torch settings changed between runs (TF32 or thread count)"
OUTSIDE_RNG = "randomness outside the seeded RNGs"
NONDETERMINISTIC_KERNEL = "an op without a deterministic implementation"
BEFORE_MODEL = "the inputs already differed before the model was called"
CALL_SEQUENCE = "a different sequence of module calls"
OUTSIDE_MODULES = "no module output differed"

_EVAL_FIX = (
    "call model.eval() before inference (and use torch.no_grad() or torch.inference_mode()); "
    "a test marked deterministic with the default eval_mode=True does this for you. If the "
    "randomness is intended (a training step, sampling), mark the test stochastic=True"
)
_RNG_IN_EVAL_FIX = (
    "a module must not draw random numbers at inference time: pass the forward a "
    "torch.Generator (the determinism fixture's .generator()) so callers control the draws, "
    "make the draw conditional on self.training, or disable the random masking or sampling "
    "in the model's config; if the output is meant to be random, mark the test stochastic=True"
)
_OUTSIDE_RNG_FIX = (
    "draw only from seeded sources: the global RNGs the plugin seeds, "
    "numpy.random.default_rng(seed) or torch.Generator().manual_seed(seed) built from the "
    "test's seed (the determinism fixture's .rng() and .generator()); never "
    "numpy.random.default_rng() without a seed, os.urandom, uuid or the time"
)


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
    made the difference when that is an enclosing one. ``cause`` is one of this module's
    verdict constants; ``explanation`` and ``fix`` are sentences; ``text`` is the whole
    account, as the verdict's message quotes it.
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


def _name(record: CallRecord) -> str:
    if not record.qualname:
        return f"{record.cls} (the outermost module)"
    return f"{record.qualname} ({record.cls})"


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


def _settings_changes(a: TorchFlags | None, b: TorchFlags | None) -> list[str]:
    if a is None or b is None or a == b:
        return []
    names = (
        "threads",
        "deterministic",
        "warn_only",
        "matmul_tf32",
        "cudnn_tf32",
        "cudnn_deterministic",
        "cudnn_benchmark",
    )
    return [
        f"{name}: {getattr(a, name)} -> {getattr(b, name)}"
        for name in names
        if getattr(a, name) != getattr(b, name)
    ]


def _stochastic_inside(trace: Trace, record: CallRecord) -> tuple[str, ...]:
    found = [record, *trace.nested(record)]
    return tuple(
        f"{call.display_name} ({call.cls}, {'training' if call.training else 'eval'})"
        for call in found
        if call.stochastic
    )


def _first_sequence_difference(a: Trace, b: Trace) -> int | None:
    """Entry index of the first call that differs in name or nesting, or ``None``."""
    for left, right in zip(a.calls, b.calls, strict=False):
        if (left.parent, left.qualname, left.cls) != (right.parent, right.qualname, right.cls):
            return left.index
    return None if len(a) == len(b) else min(len(a), len(b))


def _first_output_difference(a: Trace, b: Trace, limit: int | None) -> int | None:
    """Entry index of the first call, in return order, whose outputs differ."""
    other = b.calls
    for record in a.by_exit():
        if limit is not None and record.last >= limit:
            # From here on calls enclose or follow the point where the sequences part.
            return None
        if record.outputs != other[record.index].outputs:
            return record.index
    return None


def _origin(a: Trace, b: Trace, record: CallRecord) -> CallRecord | None:
    """The innermost call enclosing ``record`` whose inputs were identical."""
    calls, other = a.calls, b.calls
    parent = record.parent
    while parent >= 0:
        if calls[parent].inputs == other[parent].inputs:
            return calls[parent]
        parent = calls[parent].parent
    return None


def _previous_sibling(trace: Trace, origin: CallRecord, index: int) -> CallRecord | None:
    """The last call made directly by ``origin`` that returned before call ``index`` began."""
    previous = None
    for call in trace.nested(origin):
        if call.index >= index:
            break
        if call.parent == origin.index and call.last < index:
            previous = call
    return previous


def _state_changes(a: CallRecord, b: CallRecord) -> tuple[list[str], list[str]]:
    """Names of the buffers and of the parameters that differed on entry."""
    left = {leaf[0]: leaf for leaf in a.state}
    right = {leaf[0]: leaf for leaf in b.state}
    changed = [name for name in left.keys() | right.keys() if left.get(name) != right.get(name)]
    buffers = sorted(n for n in changed if (left.get(n) or right[n])[1] != "version")
    parameters = sorted(n for n in changed if (left.get(n) or right[n])[1] == "version")
    return buffers, parameters


def _earlier_training_call(trace: Trace, record: CallRecord) -> CallRecord | None:
    """An earlier call of the same module in training mode (it updates running stats)."""
    for call in trace.calls[: record.index]:
        if call.qualname == record.qualname and call.root == record.root and call.training:
            return call
    return None


class _Pair:
    """The two runs being compared: their traces, the kind of check and how the second run
    is named in sentences."""

    def __init__(self, a: Trace, b: Trace, kind: RunKind, other: str) -> None:
        self.a = a
        self.b = b
        self.kind = kind
        self.other = other

    def module_cause(self, record: CallRecord, twin: CallRecord) -> tuple[str, str, str]:
        """Cause, explanation and fix when ``record``'s own code made the difference."""
        name = _name(record)
        buffers, parameters = _state_changes(record, twin)
        if buffers or parameters:
            return self._state_cause(record, buffers, parameters)
        changes = _settings_changes(self.a.settings, self.b.settings)
        if changes:
            return (
                DIFFERENT_SETTINGS,
                f"{name} got identical inputs and state, but torch's settings changed between "
                f"the runs ({'; '.join(changes)}): CPU reductions change with the thread count, "
                "TF32 and the deterministic-algorithms switch change the kernels used.",
                "keep the settings fixed for the whole test: mark it @deterministic(threads=N) to "
                "pin torch.set_num_threads, leave tf32=False, and do not change these settings "
                "inside the test",
            )
        if self.kind == "seed":
            return self._rng_cause(record)
        return self._repeat_cause(record)

    def _state_cause(
        self, record: CallRecord, buffers: list[str], parameters: list[str]
    ) -> tuple[str, str, str]:
        name = _name(record)
        parts = []
        if buffers:
            parts.append(f"its buffers {', '.join(buffers)} held other values")
        if parameters:
            parts.append(
                f"its parameters {', '.join(parameters)} had been modified in place (their "
                "version counters differ: an optimizer step, load_state_dict or another "
                "in-place update)"
            )
        writer = _earlier_training_call(self.a, record) or _earlier_training_call(self.b, record)
        hint = ""
        if writer is not None and record.stochastic:
            hint = (
                f" It was called in training mode (call {writer.index}), where it updates its "
                "running statistics on every call, so each run starts from what the previous "
                "one left."
            )
        return (
            STATE_LEFT,
            f"{name} got identical inputs, but on entry {' and '.join(parts)} in {self.other} "
            f"compared with run 0: an earlier call left state behind.{hint}",
            "make every run start from the same state: build the model in the test (or reload "
            "its state_dict at the start), call model.eval() before calls that would update "
            "running statistics, and reset caches between calls (BatchNorm: eval mode, or "
            "track_running_stats=False)",
        )

    def _rng_cause(self, record: CallRecord) -> tuple[str, str, str]:
        name = _name(record)
        inside = _stochastic_inside(self.a, record)
        if record.training and record.stochastic:
            return (
                STOCHASTIC_LAYER,
                f"{name} is a stochastic layer in training mode: it draws random numbers on "
                "every call, so its output depends on the seed.",
                _EVAL_FIX,
            )
        if record.training:
            return (
                RNG_IN_TRAINING,
                f"{name} is in training mode and its own forward draws random numbers "
                "(functional dropout such as F.dropout(x, p, training=self.training), drop "
                "path, noise), so its output depends on the seed"
                + (f"; stochastic layers inside: {', '.join(inside)}" if inside else "")
                + ".",
                _EVAL_FIX,
            )
        return (
            RNG_IN_EVAL,
            f"{name} is in eval mode, yet its forward draws from the random number generator "
            "(random masking, sampling or noise at inference), so its output depends on the "
            "seed.",
            _RNG_IN_EVAL_FIX,
        )

    def _repeat_cause(self, record: CallRecord) -> tuple[str, str, str]:
        name = _name(record)
        settings = self.a.settings
        switched_off = settings is not None and not settings.deterministic
        kernel_fix = (
            "run with deterministic kernels (mark the test @deterministic; it calls "
            "torch.use_deterministic_algorithms(True) and sets cuDNN to deterministic), "
            "replace the op with one that has a deterministic implementation, or pin "
            "the thread count with @deterministic(threads=N)"
        )
        off = " torch.use_deterministic_algorithms was off during the runs." if switched_off else ""
        if record.from_torch:
            return (
                NONDETERMINISTIC_KERNEL,
                f"{name} is one of torch's own modules and got identical inputs and state, "
                f"yet returned different outputs in {self.other}: one of its kernels is not "
                f"deterministic (atomic adds in scatter/index_add or a cuDNN algorithm on "
                f"GPU).{off}",
                kernel_fix,
            )
        return (
            OUTSIDE_RNG,
            f"{name} got identical inputs and state, yet returned different outputs in "
            f"{self.other}, although every seeded RNG was reseeded: its forward draws "
            "randomness outside the seeded RNGs (an unseeded numpy.random.default_rng() or "
            "torch.Generator(), os.urandom, uuid, the time), or runs an op without a "
            f"deterministic implementation.{off}",
            _OUTSIDE_RNG_FIX + "; " + kernel_fix,
        )


def diagnose(first: Trace, other: Trace, *, kind: RunKind, other_name: str = "run 1") -> Diagnosis:
    """Explain why ``other`` differs from ``first``.

    ``kind`` is ``"repeat"`` (both runs seeded alike) or ``"seed"`` (``other`` is the seed
    probe run, where draws inside forward calls come from another seed and everything else
    is unchanged). ``other_name`` names the second run in sentences (``"run 2"``,
    ``"the probe run"``).
    """
    pair = _Pair(first, other, kind, other_name)
    split = _first_sequence_difference(first, other)
    index = _first_output_difference(first, other, split)
    if index is not None:
        return _diverging_call(pair, index)
    if split is not None:
        return _sequence(pair, split)
    return _nothing(pair)


def _finish(
    pair: _Pair,
    cause: str,
    explanation: str,
    fix: str,
    lines: list[str],
    *,
    record: CallRecord | None = None,
    inputs_differed: bool | None = None,
    origin: CallRecord | None = None,
) -> Diagnosis:
    lines += [f"  likely cause: {cause}", f"  why: {explanation}", f"  fix: {fix}"]
    stochastic = () if record is None else _stochastic_inside(pair.a, record)
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
    )


def _diverging_call(pair: _Pair, index: int) -> Diagnosis:
    a, b = pair.a, pair.b
    record, twin = a.calls[index], b.calls[index]
    inputs_differed = record.inputs != twin.inputs
    stochastic = _stochastic_inside(a, record)
    lines = [
        "First module call whose output differed (in the order calls returned):",
        f"  module: {record.display_name}",
        f"  class: {record.cls} (in {record.root}, call {index} of {len(a)} in run 0)",
        f"  mode: {'training' if record.training else 'eval'}",
        f"  stochastic layers inside: {', '.join(stochastic) if stochastic else 'none'}",
        f"  inputs: {_described_difference(record.inputs, twin.inputs)}",
        f"  outputs: {_described_difference(record.outputs, twin.outputs)}",
    ]
    if not inputs_differed:
        lines.append("  so the difference arose inside this module")
        cause, explanation, fix = pair.module_cause(record, twin)
        return _finish(pair, cause, explanation, fix, lines, record=record, inputs_differed=False)
    origin = _origin(a, b, record)
    if origin is None:
        outer = a.calls[a.outermost[record.outer]]
        explanation = (
            f"the inputs of the outermost call {_name(outer)} already differed in "
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
    previous = _previous_sibling(a, origin, index)
    where = (
        f"after {_name(previous)} returned identical outputs and before {_name(record)} was called"
        if previous is not None
        else f"before it called {_name(record)}"
    )
    lines.append(
        f"  its inputs come from {_name(origin)}, whose inputs were identical: the "
        f"difference arose in the forward code of {_name(origin)} itself, {where}"
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
    )


def _sequence(pair: _Pair, split: int) -> Diagnosis:
    a, b = pair.a, pair.b
    first_call = a.calls[split] if split < len(a) else None
    other_call = b.calls[split] if split < len(b) else None
    described = [
        f"run 0 called {_name(first_call)}" if first_call else "run 0 stopped",
        f"{pair.other} called {_name(other_call)}" if other_call else f"{pair.other} stopped",
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
        f"  the calls were made by {_name(parent)}, in "
        f"{'training' if parent.training else 'eval'} mode, whose inputs were "
        f"{_described_difference(parent.inputs, twin.inputs)}"
    )
    if parent.inputs != twin.inputs:
        origin = _origin(a, b, parent)
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
        f"{_name(parent)} decided differently which modules to call (random layer drop / "
        f"stochastic depth by skipping, or data-dependent control flow). " + explanation
    )
    return _finish(pair, cause, explanation, fix, lines, record=parent, inputs_differed=False)


def _nothing(pair: _Pair) -> Diagnosis:
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
        fix = _OUTSIDE_RNG_FIX
        cause = OUTSIDE_RNG
    return _finish(pair, cause, explanation, fix, lines)
