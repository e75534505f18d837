"""Run a callable several times reseeded, plus once under the seed probe, and compare.

:func:`check_runs` is the engine behind ``--determinism`` and ``assert_deterministic``. It
knows nothing of pytest: it calls ``run_once(i)``, which returns the evidence of run ``i``
(``{key: Leaf}``), and compares the evidence of every run with run 0's, bit for bit.

A check that passes pays for its runs and nothing more: no module call is fingerprinted
and no op recorded; the only hooks are the eval-mode switch's and, in run 0 and the probe
run, the seed probe's outermost-call observer. Only when two runs differ are they run again,
reseeded alike, with recording on (:mod:`pytest_determinism.nondeterminism.recorded`), so
the message names the first torch module whose output diverged
(:mod:`pytest_determinism.nondeterminism.diagnosis`) and, inside it, the op and the line.

torch modules are probed and recorded only when torch was imported before the check began,
as it is when the test module imports it; otherwise only the evidence is compared.

Checks nest: when ``run_once`` itself calls ``check_runs`` (a helper inside a test that the
CI mode is checking), the inner check's runs are traced and probed by the inner check alone,
and every random number generator is put back as the inner check found it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pytest_determinism.golden.compare import Comparison, compare_leaves
from pytest_determinism.golden.mismatch import format_spot
from pytest_determinism.golden.tolerances import EXACT
from pytest_determinism.golden.values import Leaf, bits_equal
from pytest_determinism.nondeterminism.blocks import watching
from pytest_determinism.nondeterminism.trace import OUTSIDE, Trace, tracing
from pytest_determinism.state.rng import (
    capture_rng,
    restore_rng,
    seed_everything,
    torch_if_imported,
)

if TYPE_CHECKING:
    from pytest_determinism.nondeterminism.diagnosis import Diagnosis
    from pytest_determinism.nondeterminism.ops import OpRecorder
    from pytest_determinism.nondeterminism.probe import SeedProbe
    from pytest_determinism.nondeterminism.recorded import Explanation

__all__ = ["KeyDifference", "RunKind", "Verdict", "check_runs"]

#: Which question a failed check answered no to: ``"repeat"``, a run reseeded alike gave
#: other evidence; ``"seed"``, the probe run (draws inside forward calls from another seed)
#: did. These strings are also the ``verdict`` of a test in the JSON report.
RunKind = Literal["repeat", "seed"]


@dataclass(frozen=True)
class KeyDifference:
    """How one checked value differs between run 0 and the diverging run.

    ``reason`` is ``"values"``, ``"missing"`` (absent from the diverging run), ``"extra"``
    (absent from run 0), ``"dtype"`` or ``"shape"``. For ``"values"``, ``count`` elements
    differ, ``max_abs_diff`` is the largest absolute difference where both are finite
    (``None`` for packed dtypes), and ``nan_mismatches`` counts positions where exactly one
    run has a NaN or where infinities differ.
    """

    key: str
    reason: str
    detail: str
    count: int = 0
    size: int = 0
    max_abs_diff: float | None = None
    nan_mismatches: int = 0


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`check_runs`.

    ``ok`` is true when every run agreed. ``kind`` says which question failed: ``"repeat"``
    (a run reseeded alike gave other evidence) or ``"seed"`` (the probe run, where draws
    inside forward calls come from another seed, gave other evidence or other forward
    calls); ``None`` when ok. ``message`` is the full text (empty when ok).
    ``module`` / ``module_class`` name the first module call whose output differed (its
    qualified name, ``<root Class>`` for an outermost module, and its class), when one did.
    ``differences`` lists the checked values that differed; ``errors`` holds, per run made
    (probe run last), the exception it raised or ``None``; ``evidence`` is run 0's
    evidence; ``diverging_run`` the index of the run that differed (``runs`` for the probe
    run); ``runs_made`` counts the runs actually made (the checks stop at the first
    divergence; re-runs made to explain it are not counted); ``probe_run`` says whether the
    probe run was part of the check; ``diagnosis`` is the full analysis, when one was made.
    ``reproduced`` says whether the difference came back when the runs were made again with
    recording on (``None`` when they were not: the check passed, or torch was not
    imported); ``op`` and ``line`` name the first differing torch op
    (``aten.rand.default``) and the line that called it, when found.
    """

    ok: bool
    kind: RunKind | None
    message: str
    module: str | None
    module_class: str | None
    differences: tuple[KeyDifference, ...]
    errors: tuple[BaseException | None, ...]
    evidence: Mapping[str, Leaf]
    diverging_run: int | None = None
    runs_made: int = 0
    probe_run: bool = False
    diagnosis: Diagnosis | None = field(default=None, repr=False)
    reproduced: bool | None = None
    op: str | None = None
    line: str | None = None


@dataclass
class Run:
    """One call of ``run_once``: its evidence, what it raised, its trace when recorded."""

    evidence: Mapping[str, Leaf]
    error: BaseException | None
    trace: Trace | None


def run_reseeded(
    run_once: Callable[[int], Mapping[str, Leaf]],
    index: int,
    seed: int,
    catch: tuple[type[BaseException], ...],
    probe: SeedProbe | None,
    *,
    traced: bool = False,
    ops: OpRecorder | None = None,
    window: int = OUTSIDE,
) -> Run:
    """Run ``run_once(index)`` reseeded; traced (and recording ops in ``window``) when asked,
    else watched by ``probe`` alone (an enclosing check's block stands aside either way)."""
    seed_everything(seed)
    context: AbstractContextManager[Trace | None] = (
        tracing(probe, ops=ops, window=window) if traced else watching(probe)
    )
    with context as trace:
        try:
            evidence = run_once(index)
        except catch as exc:
            return Run({}, exc, trace)
    return Run(evidence, None, trace)


def _error_text(error: BaseException | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"


# Parts of a message that change from run to run of the same failure: object addresses
# ("<Foo object at 0x7f...>"), ids and addresses printed in decimal, and Dynamo's frame and
# recompilation counters ("[0/1]"). Small numbers (shapes, indices, values) stay.
_VOLATILE = re.compile(r"0x[0-9a-fA-F]{6,}|(?<![\w.])\d{9,}(?![\w.])|\[\d+/\d+\]")


def error_text_key(error: BaseException) -> tuple[type[BaseException], str]:
    """What decides whether two runs raised the same error: its type and its message with
    addresses and counters stripped."""
    return type(error), _VOLATILE.sub("#", str(error))


def _same_error(a: BaseException | None, b: BaseException | None) -> bool:
    if a is None or b is None:
        return a is b
    return error_text_key(a) == error_text_key(b)


def _value_difference(key: str, comparison: Comparison, other_name: str) -> KeyDifference:
    dtype = comparison.golden_dtype
    largest = comparison.max_abs
    detail = (
        f"{dtype}{list(comparison.golden_shape)}: {comparison.mismatched} of "
        f"{comparison.total} elements differ"
    )
    if largest is not None and comparison.mismatched:
        detail += f", max abs diff {largest.diff:.3g} " + format_spot(
            largest, dtype, actual=other_name, golden="run 0", golden_first=True
        )
    elif comparison.first_mismatch is not None:
        detail += ", first " + format_spot(
            comparison.first_mismatch,
            dtype,
            actual=other_name,
            golden="run 0",
            golden_first=True,
        )
    mismatches = comparison.nan_mismatches + comparison.inf_mismatches
    if mismatches:
        detail += f", {mismatches} NaN/Inf mismatches"
    return KeyDifference(
        key=key,
        reason="values",
        detail=detail,
        count=comparison.mismatched,
        size=comparison.total,
        max_abs_diff=None if largest is None else largest.diff,
        nan_mismatches=mismatches,
    )


def _differences(
    a: Mapping[str, Leaf], b: Mapping[str, Leaf], other_name: str
) -> list[KeyDifference]:
    # Run 0 is the reference, as a golden is.
    result = compare_leaves(b, a, lambda _: EXACT)
    out: list[KeyDifference] = []
    for key in a:
        c = result.comparisons.get(key)
        if c is None:
            out.append(KeyDifference(key, "missing", "missing in this run"))
        elif c.outcome == "dtype":
            out.append(KeyDifference(key, "dtype", f"dtype {c.golden_dtype} -> {c.actual_dtype}"))
        elif c.outcome == "shape":
            shapes = f"shape {list(c.golden_shape)} -> {list(c.actual_shape)}"
            out.append(KeyDifference(key, "shape", shapes))
        elif not c.passed:
            out.append(_value_difference(key, c, other_name))
    out.extend(KeyDifference(key, "extra", "not checked in run 0") for key in result.extra)
    return out


def same_run(a: Run, b: Run) -> bool:
    """Whether two runs raised alike and produced bitwise-identical evidence."""
    if not _same_error(a.error, b.error):
        return False
    if a.evidence.keys() != b.evidence.keys():
        return False
    return all(bits_equal(leaf, b.evidence[key]) for key, leaf in a.evidence.items())


def _explained_error(error: BaseException | None) -> str:
    from pytest_determinism.nondeterminism.torch_errors import explain_torch_error

    if error is None:
        return "returned normally"
    text = f"raised {_error_text(error)}"
    explanation = explain_torch_error(error)
    return text if explanation is None else f"{text}\n    {explanation}"


def _message(
    kind: RunKind,
    index: int,
    runs: int,
    seed: int,
    first: Run,
    other: Run,
    differences: list[KeyDifference],
    explanation: Explanation | None,
    mismatch: str | None,
) -> str:
    if kind == "repeat":
        lines = [
            f"Nondeterministic: run {index} differs from run 0 (runs reseeded with seed "
            f"{seed} before each; {index + 1} of {runs} runs made)."
        ]
    else:
        lines = [
            "Seed-dependent: the probe run differs from run 0. In the probe run every random "
            "draw inside torch module forward calls came from another seed, while everything "
            "outside them saw run 0's random numbers, so the forward pass depends on random "
            f"state (seed {seed}).",
        ]
    if mismatch is not None:
        lines.append(f"  forward calls: {mismatch}")
    if not _same_error(first.error, other.error):
        name = f"run {index}" if kind == "repeat" else "the probe run"
        lines.append(f"  run 0 {_explained_error(first.error)}")
        lines.append(f"  {name} {_explained_error(other.error)}")
    if differences:
        lines.append("  checked values that differ:")
        lines += [f"    {diff.key or '(value)'}: {diff.detail}" for diff in differences]
    if explanation is not None:
        lines.append(explanation.text)
    else:
        lines.append(
            "  (torch was not imported when the check began, so module calls were not traced)"
        )
    return "\n".join(lines)


def _failure(
    kind: RunKind,
    index: int,
    runs: int,
    seed: int,
    made: list[Run],
    again: Callable[[], Explanation] | None,
    mismatch: str | None = None,
) -> Verdict:
    first, other = made[0], made[-1]
    name = f"run {index}" if kind == "repeat" else "the probe run"
    differences = _differences(first.evidence, other.evidence, name)
    explanation = None if again is None else again()
    diagnosis = None if explanation is None else explanation.diagnosis
    return Verdict(
        ok=False,
        kind=kind,
        message=_message(kind, index, runs, seed, first, other, differences, explanation, mismatch),
        module=None if diagnosis is None else diagnosis.module,
        module_class=None if diagnosis is None else diagnosis.cls,
        differences=tuple(differences),
        errors=tuple(run.error for run in made),
        evidence=first.evidence,
        diverging_run=index,
        runs_made=len(made),
        probe_run=kind == "seed",
        diagnosis=diagnosis,
        reproduced=None if explanation is None else explanation.reproduced,
        op=None if explanation is None else explanation.op,
        line=None if explanation is None else explanation.line,
    )


def check_runs(
    run_once: Callable[[int], Mapping[str, Leaf]],
    *,
    runs: int,
    seed: int,
    stochastic: bool,
    catch: tuple[type[BaseException], ...] = (Exception,),
    rootdir: str | None = None,
    put_back_rng: bool = True,
) -> Verdict:
    """Call ``run_once(i)`` for ``i`` in ``range(runs)``, each reseeded with ``seed``, and
    unless ``stochastic`` once more (``i == runs``) under the seed probe; compare.

    The probe run needs torch (it changes draws inside module forward calls): without torch
    imported it is not made, and ``Verdict.probe_run`` says so.

    Every run's evidence must equal run 0's bit for bit (keys, dtypes, shapes and bytes,
    NaN positions included), and an exception from ``catch`` counts as evidence too (its
    type and message). Other exceptions propagate. The runs stop at the first divergence.
    Every random number generator is put back as it was found when the check ends; with
    ``put_back_rng=False`` (the CI mode, whose test puts them back after its teardown) they
    are left as the last run left them, which outside forward calls is as run 0 left them.

    To explain a divergence, run 0 and the run that differed are made again with recording
    on, as ``run_once(i)`` with ``i > runs`` (a fresh index per re-run): such a call must
    only produce its evidence, never compare with or record goldens again. ``rootdir``:
    paths in the report's source lines are shown relative to it.
    """
    if runs < 1:
        raise ValueError(f"check_runs: runs must be at least 1, got {runs}")
    torch_present = torch_if_imported() is not None
    probe = None
    if torch_present and not stochastic:
        from pytest_determinism.nondeterminism.probe import SeedProbe

        probe = SeedProbe(seed)

    def again(kind: RunKind, index: int) -> Callable[[], Explanation] | None:
        if not torch_present:
            return None
        from pytest_determinism.nondeterminism.recorded import explain

        return lambda: explain(
            run_once,
            kind=kind,
            index=index,
            runs=runs,
            seed=seed,
            catch=catch,
            rootdir=rootdir,
        )

    saved = capture_rng() if put_back_rng else None
    try:
        made = [run_reseeded(run_once, 0, seed, catch, probe)]
        for index in range(1, runs):
            made.append(run_reseeded(run_once, index, seed, catch, None))
            if not same_run(made[0], made[-1]):
                return _failure("repeat", index, runs, seed, made, again("repeat", index))
        if probe is not None:
            probe.replay()
            made.append(run_reseeded(run_once, runs, seed, catch, probe))
            if probe.mismatch is not None or not same_run(made[0], made[-1]):
                return _failure("seed", runs, runs, seed, made, again("seed", runs), probe.mismatch)
        return Verdict(
            ok=True,
            kind=None,
            message="",
            module=None,
            module_class=None,
            differences=(),
            errors=tuple(run.error for run in made),
            evidence=made[0].evidence,
            runs_made=len(made),
            probe_run=probe is not None,
        )
    finally:
        if saved is not None:
            restore_rng(saved)
