"""``--determinism``: one marked test's body run repeatedly and under the seed probe.

The run checker (``nondeterminism.runs.check_runs``) decides; this module feeds it the test
body as a callable whose evidence is what the run passed to ``golden_tensor.check``, and turns
the verdict into the test's outcome: nondeterminism first (with its message), then a golden
mismatch of the first run, then whatever the first run raised. A later run that failed where
run 0 passed, with no module behaving differently, is reported as a body that is not
re-entrant, naming the function-scoped fixtures the runs share.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

import pytest

from pytest_determinism.state import context

if TYPE_CHECKING:
    from pytest_determinism.activation import ActiveTest
    from pytest_determinism.golden.golden_tensor import GoldenTensor
    from pytest_determinism.golden.values import Leaf
    from pytest_determinism.record import SessionRecord

__all__ = ["run_ci_mode"]

# The plugin's own fixtures start afresh for each run (golden_tensor.start_run), so they
# carry nothing from one run to the next.
_OWN_FIXTURES = frozenset({"golden_tensor", "determinism", "request"})


def run_ci_mode(
    item: pytest.Function,
    active: ActiveTest,
    golden: GoldenTensor | None,
    runs: int,
    record: SessionRecord,
) -> None:
    """Run ``item``'s body ``runs`` times (plus the probe run) and judge the evidence."""
    from pytest_determinism.body import raised_at
    from pytest_determinism.nondeterminism.reentry import is_not_reentrant, not_reentrant_message
    from pytest_determinism.nondeterminism.runs import check_runs

    settings = active.settings
    helpers_before = context.helper_checks()
    checked_values = False

    # Looked up once: item.ihook finds the conftest plugins for the test's path anew on
    # every read.
    pyfunc_call = item.ihook.pytest_pyfunc_call

    # Indices past the probe run's are re-runs that explain a difference: golden_tensor
    # only captures in them, so run 0's comparison and pending failure stay as they were.
    def run_once(index: int) -> Mapping[str, Leaf]:
        nonlocal checked_values
        active.before_run()
        if golden is not None:
            golden.start_run(index)
        if index == 0:
            pyfunc_call(pyfuncitem=item)
        else:
            # pytest records the warnings of the whole call phase: a later run's repeats of
            # run 0's warnings would be counted once per run. Filters stay as they are, so a
            # warning turned into an error still raises.
            with warnings.catch_warnings(record=True):
                pyfunc_call(pyfuncitem=item)
        evidence = golden.evidence(index) if golden is not None else {}
        checked_values = checked_values or bool(evidence)
        return evidence

    # pytest.fail() raises an OutcomeException, a BaseException: a run that fails through
    # it is evidence like any other, while skip/exit/KeyboardInterrupt still propagate.
    try:
        verdict = check_runs(
            run_once,
            runs=runs,
            seed=settings.seed,
            stochastic=settings.stochastic,
            catch=(Exception, pytest.fail.Exception),
            rootdir=str(item.config.rootpath),
            # The test's teardown sees the RNGs as one run of its body left them, and they
            # are put back after it (ActiveTest.finish).
            put_back_rng=False,
        )
    finally:
        # Also when a run skipped the test: the checks it made before count, as in a
        # plain run.
        if golden is not None:
            golden.compare_run_zero()
    checked_values = checked_values or context.helper_checks() != helpers_before
    not_reentrant = is_not_reentrant(verdict)
    record.determinism_tests += 1
    record.probe_runs += 1 if verdict.probe_run else 0
    record.checked_no_values += 0 if checked_values else 1
    test = record.test(item.nodeid)
    test.seed = settings.seed
    test.runs = runs
    test.probe_run = verdict.probe_run
    test.checked_values = checked_values
    test.not_reentrant = not_reentrant
    if not_reentrant:
        error = verdict.errors[-1]
        where = None if error is None else raised_at(error, item)
        message = not_reentrant_message(
            verdict, _function_fixtures(item), seed=settings.seed, where=where
        )
        pytest.fail(message, pytrace=False)
    test.nondeterministic = not verdict.ok
    test.verdict = verdict.kind
    test.first_diverging_module = verdict.module
    test.first_diverging_class = verdict.module_class
    test.first_diverging_op = verdict.op
    test.source_line = verdict.line
    test.reproduced = verdict.reproduced
    if not verdict.ok:
        record.nondeterministic.append(item.nodeid)
        pytest.fail(verdict.message, pytrace=False)
    if golden is not None and golden.pending_failure is not None:
        from pytest_determinism.body import note_origin

        note_origin(item, active, golden)
        pytest.fail(golden.pending_failure, pytrace=False)
    first_error = verdict.errors[0] if verdict.errors else None
    if first_error is not None:
        raise first_error


def _function_fixtures(item: pytest.Function) -> list[str]:
    """The function-scoped fixtures ``item`` uses, in pytest's order, parameters left out."""
    # name2fixturedefs is not public API; without it no fixture is named, which the message
    # handles.
    definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    params = getattr(getattr(item, "callspec", None), "params", {})
    names = []
    for name in item.fixturenames:
        if name in _OWN_FIXTURES or name in params:
            continue
        found = definitions.get(name)
        if found and found[-1].scope == "function":
            names.append(name)
    return names
