"""Running a marked test's body: once, or repeated under ``--determinism``, with the errors
that the plugin's own settings provoke explained in words.

Two kinds of error come from what the plugin switched on rather than from the test: torch's
"does not have a deterministic implementation" (``use_deterministic_algorithms``) and a
stochastic module in training mode under ``eval_mode="strict"``. Both fail the test with an
explanation and the line of the test that raised them, never with torch's or the plugin's
frames.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_determinism.errors import StochasticModuleError

if TYPE_CHECKING:
    from pytest_determinism.activation import ActiveTest
    from pytest_determinism.golden.golden_tensor import GoldenTensor
    from pytest_determinism.session import PluginSession

__all__ = ["note_origin", "raised_at", "run_body"]


def run_body(
    item: pytest.Function,
    active: ActiveTest,
    golden: GoldenTensor | None,
    plugin_session: PluginSession,
) -> None:
    """Run ``item``'s body: reseeded right before it, repeated in CI mode."""
    explained = None
    active.watch_compiled(_values_in_reach(item))
    try:
        if plugin_session.options.ci_mode:
            from pytest_determinism.cimode import run_ci_mode

            run_ci_mode(item, active, golden, plugin_session.options.runs, plugin_session.record)
        else:
            active.before_body()
            try:
                item.ihook.pytest_pyfunc_call(pyfuncitem=item)
            except Exception:
                if golden is not None:
                    note_origin(item, active, golden)
                raise
    except StochasticModuleError as exc:
        # Raised from the forward pre-hook; torch's and the hook's frames say nothing.
        explained = str(exc) + _location_in(exc, item)
    except RuntimeError as exc:
        from pytest_determinism.nondeterminism.torch_errors import explain_torch_error

        explained = explain_torch_error(exc)
        if explained is None:
            raise
        explained += _location_in(exc, item)
    if explained is not None:
        # Outside the except block, so the report is not chained to torch's traceback.
        pytest.fail(explained, pytrace=False)


def note_origin(item: pytest.Function, active: ActiveTest, golden: GoldenTensor) -> None:
    """Where a failed golden check's difference started, kept for the test's report (the
    body runs once more, traced, only when a check's values differed from a golden that
    holds a trace)."""
    from pytest_determinism.golden_traces import ORIGIN_NOTE, origin_note

    note = origin_note(item, active, golden)
    if note is not None:
        item.stash[ORIGIN_NOTE] = note


def raised_at(exc: BaseException, item: pytest.Function) -> str | None:
    """Where in the test's own file the exception was raised (``file.py:LINE``), if there."""
    test_file = str(item.path)
    where = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == test_file:
            where = f"{item.path.name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def _location_in(exc: BaseException, item: pytest.Function) -> str:
    """Where in the test's own file the exception was raised, as a line to append."""
    where = raised_at(exc, item)
    return f"\n  (raised at {where})" if where else ""


def _values_in_reach(item: pytest.Function) -> list[object]:
    """The test's fixture values and its module's globals, and the items of containers
    among them: where a model compiled in place before the body runs is found."""
    module = getattr(item, "module", None)
    values: list[object] = [*item.funcargs.values()]
    if module is not None:
        values.extend(vars(module).values())
    for value in list(values):
        if isinstance(value, list | tuple):
            values.extend(value)
        elif isinstance(value, dict):
            values.extend(value.values())
    return values
