"""``--determinism``: one marked test's body run repeatedly and under the seed probe.

The run checker (``nondeterminism.runs.check_runs``) decides; this module feeds it the test
body as a callable whose evidence is what the run passed to ``golden_tensor.check``, and turns
the verdict into the test's outcome: nondeterminism first (with its message), then a golden
mismatch of the first run, then whatever the first run raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_determinism.activation import ActiveTest
    from pytest_determinism.golden.golden_tensor import GoldenTensor
    from pytest_determinism.golden.values import Leaf
    from pytest_determinism.record import SessionRecord

__all__ = ["run_ci_mode"]


def run_ci_mode(
    item: pytest.Function,
    active: ActiveTest,
    golden: GoldenTensor | None,
    runs: int,
    record: SessionRecord,
) -> None:
    """Run ``item``'s body ``runs`` times (plus the probe run) and judge the evidence."""
    from pytest_determinism.nondeterminism.runs import check_runs

    settings = active.settings

    # Indices past the probe run's are re-runs that explain a difference: golden_tensor
    # only captures in them, so run 0's comparison and pending failure stay as they were.
    def run_once(index: int) -> Mapping[str, Leaf]:
        active.before_body()
        if golden is not None:
            golden.start_run(index)
        item.ihook.pytest_pyfunc_call(pyfuncitem=item)
        return golden.evidence(index) if golden is not None else {}

    # pytest.fail() raises an OutcomeException, a BaseException: a run that fails through
    # it is evidence like any other, while skip/exit/KeyboardInterrupt still propagate.
    verdict = check_runs(
        run_once,
        runs=runs,
        seed=settings.seed,
        stochastic=settings.stochastic,
        catch=(Exception, pytest.fail.Exception),
        rootdir=str(item.config.rootpath),
    )
    record.determinism_tests += 1
    record.probe_runs += 1 if verdict.probe_run else 0
    test = record.test(item.nodeid)
    test.seed = settings.seed
    test.runs = runs
    test.probe_run = verdict.probe_run
    test.nondeterministic = not verdict.ok
    test.verdict = verdict.kind
    test.first_diverging_module = verdict.module
    test.first_diverging_class = verdict.module_class
    if not verdict.ok:
        record.nondeterministic.append(item.nodeid)
        pytest.fail(verdict.message, pytrace=False)
    if golden is not None and golden.pending_failure is not None:
        pytest.fail(golden.pending_failure, pytrace=False)
    first_error = verdict.errors[0] if verdict.errors else None
    if first_error is not None:
        raise first_error
