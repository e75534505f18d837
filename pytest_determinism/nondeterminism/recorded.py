"""Explaining a difference that was found: the runs that differed, made again with recording on.

A passing check records nothing (see :mod:`pytest_determinism.nondeterminism.runs`). When
two runs differ, :func:`explain` runs run 0 and the differing run again, reseeded alike
(for a seed-probe difference, under a probe re-armed the same way), this time tracing every
module call, and lines the traces up (:func:`~pytest_determinism.nondeterminism.diagnosis.
diagnose`). Then it runs the pair once more, recording the torch ops inside the call whose
own code made the difference (or outside every call, when that is where it arose), and names
the first op that differed and the line that called it
(:mod:`pytest_determinism.nondeterminism.ops`).

A seed-dependent difference comes back exactly: the probe's draws are a function of the seed.
A repeat difference may not: a kernel race or a timing effect shows now and then. Up to
:data:`ATTEMPTS` recorded pairs are made; a difference that comes back in none of them is
still a failure, reported with what is known.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_determinism.nondeterminism.ops import OpDifference, OpRecorder, first_op_difference
from pytest_determinism.nondeterminism.trace import OUTSIDE

if TYPE_CHECKING:
    from pytest_determinism.golden.values import Leaf
    from pytest_determinism.nondeterminism.diagnosis import Diagnosis
    from pytest_determinism.nondeterminism.runs import Run, RunKind

__all__ = ["ATTEMPTS", "Explanation", "explain"]

#: Recorded pairs made before a difference is called not reproduced. A difference that
#: comes from the code (a draw, a seed-dependent path, state an earlier call left) comes
#: back in the first pair; more attempts only help a difference that shows now and then (a
#: kernel race), and each costs two more runs of the body on a test that already failed.
#: Three give a race that showed once in two runs a 1 - (1/2)**3 = 7-in-8 chance to show.
ATTEMPTS = 3


@dataclass(frozen=True)
class Explanation:
    """What the recorded re-runs found.

    ``reproduced`` says whether the difference came back under recording; ``diagnosis`` is
    the module-level analysis when it did; ``op`` and ``line`` the first differing op and the
    line that called it, when found; ``text`` the lines the verdict's message quotes.
    """

    reproduced: bool
    attempts: int
    diagnosis: Diagnosis | None
    op: str | None
    line: str | None
    text: str


def explain(
    run_once: Callable[[int], Mapping[str, Leaf]],
    *,
    kind: RunKind,
    index: int,
    runs: int,
    seed: int,
    catch: tuple[type[BaseException], ...],
    rootdir: str | None,
) -> Explanation:
    """Run run 0 and run ``index`` (the probe run when ``kind == "seed"``) again with
    recording on, and say where and why they differ."""
    from pytest_determinism.nondeterminism.diagnosis import diagnose

    # Re-runs get indices past the probe run's, so run_once knows they only capture.
    numbers = itertools.count(runs + 1)
    other_name = f"run {index}" if kind == "repeat" else "the probe run"
    for attempt in range(1, ATTEMPTS + 1):
        first, other, mismatch = _pair(run_once, kind, seed, catch, numbers)
        if first.trace is None or other.trace is None:
            break
        if mismatch is None and _agree(first, other) and _calls_agree(first, other):
            continue
        diagnosis = diagnose(first.trace, other.trace, kind=kind, other_name=other_name)
        op_lines, found = _op_lines(
            run_once, kind, seed, catch, numbers, diagnosis, first, other_name, rootdir
        )
        text = "\n".join([diagnosis.text, *op_lines])
        op = None if found is None else found.name
        line = None if found is None else found.where
        return Explanation(True, attempt, diagnosis, op, line, text)
    return _not_reproduced(kind, index)


def _calls_agree(first: Run, other: Run) -> bool:
    """Whether the two recorded runs made the same module calls with identical outputs.

    Runs whose checked values and errors agree may still differ inside the model (a body
    that fails alike in both re-runs because of state run 0 left, around a model that draws
    unseeded noise): that difference is the one to report, not a "not reproduced".
    """
    from pytest_determinism.nondeterminism.alignment import (
        first_output_difference,
        first_sequence_difference,
    )

    assert first.trace is not None and other.trace is not None
    return (
        first_sequence_difference(first.trace, other.trace) is None
        and first_output_difference(first.trace, other.trace, None) is None
    )


def _agree(first: Run, other: Run) -> bool:
    from pytest_determinism.nondeterminism.runs import same_run

    return same_run(first, other)


def _pair(
    run_once: Callable[[int], Mapping[str, Leaf]],
    kind: RunKind,
    seed: int,
    catch: tuple[type[BaseException], ...],
    numbers: itertools.count[int],
    *,
    ops: tuple[OpRecorder, OpRecorder] | None = None,
    window: int = OUTSIDE,
) -> tuple[Run, Run, str | None]:
    """Run 0 and the differing run, made again traced (and recording ops in ``window``)."""
    from pytest_determinism.nondeterminism.probe import SeedProbe
    from pytest_determinism.nondeterminism.runs import run_reseeded

    probe = SeedProbe(seed) if kind == "seed" else None
    first_ops, other_ops = (None, None) if ops is None else ops
    first = run_reseeded(
        run_once, next(numbers), seed, catch, probe, traced=True, ops=first_ops, window=window
    )
    if probe is not None:
        probe.replay()
    other = run_reseeded(
        run_once, next(numbers), seed, catch, probe, traced=True, ops=other_ops, window=window
    )
    return first, other, None if probe is None else probe.mismatch


def _op_lines(
    run_once: Callable[[int], Mapping[str, Leaf]],
    kind: RunKind,
    seed: int,
    catch: tuple[type[BaseException], ...],
    numbers: itertools.count[int],
    diagnosis: Diagnosis,
    first: Run,
    other_name: str,
    rootdir: str | None,
) -> tuple[list[str], OpDifference | None]:
    """Record the ops where the difference arose, in one more pair of runs."""
    assert first.trace is not None
    source = diagnosis.source
    if source is None:
        return [], None
    calls = first.trace.calls
    if source != OUTSIDE and calls[source].compiled is not None:
        return [
            f"  op: not seen: the difference arose inside {calls[source].display_name}, a "
            "compiled module (torch.compile), whose ops run as compiled code that cannot "
            "be recorded one by one; run it uncompiled to see the op and the line"
        ], None
    recorders = (OpRecorder(), OpRecorder())
    _pair(run_once, kind, seed, catch, numbers, ops=recorders, window=source)
    where = "outside every module call" if source == OUTSIDE else f"in {calls[source].display_name}"
    found = first_op_difference(recorders[0].ops, recorders[1].ops, rootdir)
    if found is None:
        if any(recorder.full for recorder in recorders):
            reason = f"the recording stopped at its limit of {len(recorders[0].ops)} ops"
        elif source == OUTSIDE:
            reason = (
                "no torch op run outside module calls differed: the differing data reached "
                "the model from outside torch (a tensor made from NumPy or Python's random, a "
                "file, the time); look at the code that builds the inputs"
            )
        else:
            reason = (
                f"every torch op run {where} gave the same output in both runs when recorded "
                "(the difference did not come back, or was made by Python code, not an op)"
            )
        return [f"  op: not found: {reason}"], None
    lines = [f"First torch op whose output differed ({where}, op {found.number}):"]
    if found.sequence:
        lines.append(
            f"  op: run 0 ran {found.name} where {other_name} ran {found.other_name}: "
            "the code took another path there"
        )
    elif found.inputs_identical:
        lines.append(
            f"  op: {found.name}, with identical inputs: the op itself made the difference "
            "(a random draw, or a kernel without a deterministic implementation)"
        )
    else:
        lines.append(
            f"  op: {found.name}, whose inputs already differed: differing data came in at "
            "this line from outside torch (a tensor made from NumPy, Python's random, a file "
            "or the time), or from code the recording does not see"
        )
    lines.append(f"  line: {found.where or '(no frame outside torch was found)'}")
    return lines, found


def _not_reproduced(kind: RunKind, index: int) -> Explanation:
    which = f"run 0 and run {index}" if kind == "repeat" else "run 0 and the probe run"
    text = "\n".join(
        [
            f"  not reproduced: {which} were made again {ATTEMPTS} times, reseeded alike, "
            "with module recording on, and agreed every time, so no module or op can be "
            "named.",
            "  likely cause: a difference that shows only now and then: a race in a kernel "
            "without a deterministic implementation or between threads, a timing effect, "
            "an outside source (the time, a file, the network, another process), or state "
            "that only the first call of the body left behind (a cache filled on first use)",
            "  fix: run the test again to see how often it fails; set "
            "torch.use_deterministic_algorithms(True) (the marker's default) and a fixed "
            "thread count, keep the time and outside data out of the checked values, and "
            "build caches before the check (or in a fixture)",
        ]
    )
    return Explanation(False, ATTEMPTS, None, None, None, text)
