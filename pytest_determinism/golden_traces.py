"""The golden trace in a pytest run: recorded under ``--update-golden``, read on failure.

Recording: :class:`TraceRecording` (registered only under ``--update-golden`` with ini
``golden_trace`` on) wraps the call of each golden test's body and stores the golden trace
of its module calls with the values. A marked test's body is recorded where
``run_body`` calls it (the plugin's own ``pytest_pyfunc_call`` around it only reseeds); in
the CI mode, in run 0, the run whose values are recorded (the seed probe still hears its
outermost calls through the recorder).

On failure: :func:`origin_note` runs the body of a marked test whose check failed against
a golden holding a trace once more, reseeded and traced, with ``golden_tensor`` only
capturing, and says where the difference started. A passing test never gets here.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Generator
from typing import TYPE_CHECKING

import pytest

from pytest_determinism.errors import GoldenFileError

if TYPE_CHECKING:
    from pytest_determinism.activation import ActiveTest
    from pytest_determinism.golden.golden_tensor import GoldenTensor

__all__ = ["ORIGIN_NOTE", "RETRACE_RUN", "TraceRecording", "origin_note"]

#: Where a failed test's note on the origin of its golden difference waits for its report.
ORIGIN_NOTE = pytest.StashKey[str]()

#: The run index of the traced re-run: past any index the CI mode uses, so
#: ``golden_tensor`` only captures in it.
RETRACE_RUN = 1 << 30

# What the traced re-run may raise and still be analysed: its first run failed already,
# and that failure is what the test reports.
_RERUN_OUTCOMES = (
    Exception,
    pytest.fail.Exception,
    pytest.skip.Exception,
    pytest.xfail.Exception,
)


class TraceRecording:
    """Records the golden trace of each golden test's body under ``--update-golden``."""

    @pytest.hookimpl(wrapper=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> Generator[None, object, object]:
        """Record the body's module calls into its golden_tensor (which writes them)."""
        from pytest_determinism.plugin import ACTIVE, GOLDEN, RUNNING_BODY

        golden = pyfuncitem.stash.get(GOLDEN, None)
        # A marked test's outer call only reseeds and calls the body again (run_body); the
        # CI mode's later runs and re-runs are not the recorded one.
        if (
            golden is None
            or "torch" not in sys.modules
            or (ACTIVE in pyfuncitem.stash and not pyfuncitem.stash.get(RUNNING_BODY, False))
            or golden.run_index != 0
        ):
            return (yield)
        from pytest_determinism.golden.golden_trace import encode_trace
        from pytest_determinism.nondeterminism.recorder import recording

        with recording() as recorder:
            result = yield
        trace = recorder.golden_trace()
        golden.keep_trace(encode_trace(trace) if len(trace) else None)
        return result


def origin_note(item: pytest.Function, active: ActiveTest, golden: GoldenTensor) -> str | None:
    """Where the golden difference of ``item`` started, in words: the body run once more,
    reseeded and traced, against the golden trace of its file; ``None`` when no check's
    values differed or the golden holds no trace."""
    if golden.update or not golden.values_differ or "torch" not in sys.modules:
        return None
    try:
        recorded = golden.recorded_trace()
    except GoldenFileError as exc:
        return str(exc)
    if recorded is None:
        return None
    try:
        from pytest_determinism.golden.tolerances import default_tolerance
        from pytest_determinism.nondeterminism.origin import find_origin
        from pytest_determinism.nondeterminism.recorder import recording

        active.before_body()
        golden.start_run(RETRACE_RUN)
        # The first run's warnings are the ones reported; filters stay, so a warning turned
        # into an error still raises (and is caught with the rest).
        with (
            recording() as recorder,
            warnings.catch_warnings(record=True),
            contextlib.suppress(*_RERUN_OUTCOMES),
        ):
            item.ihook.pytest_pyfunc_call(pyfuncitem=item)
        origin = find_origin(
            recorded,
            recorder.golden_trace(),
            lambda dtype: default_tolerance(dtype, golden.tolerances),
        )
    except Exception as exc:  # the analysis must never hide the test's own failure
        return (
            "the traced re-run that says where the difference started failed: "
            f"{type(exc).__name__}: {exc}"
        )
    return origin.message()
