"""The module tracer that also records the torch ops run inside one call.

To name the op and the line where two runs part, the runs are made again under an
:class:`OpTracer`: a :class:`~pytest_determinism.nondeterminism.trace.Tracer` that opens
a window on one module call (its entry index), or on the code outside every module call
(:data:`~pytest_determinism.nondeterminism.trace.OUTSIDE`), and has the op recorder of
:mod:`pytest_determinism.nondeterminism.ops` record only inside it.
"""

from __future__ import annotations

from typing import Any

from pytest_determinism.nondeterminism.blocks import OutermostObserver
from pytest_determinism.nondeterminism.ops import OpRecorder
from pytest_determinism.nondeterminism.trace import OUTSIDE, Tracer

__all__ = ["OpTracer"]


class OpTracer(Tracer):
    """A tracer that also switches an op recorder on inside one call (or outside all).

    The recorder's dispatch mode is pushed only while the window is open and no compiled
    call runs inside it (compiled code is not to run under a dispatch mode), and the
    tracer's own hooks pause it, so their digests are not taken for the model's ops.
    """

    def __init__(
        self, torch: Any, observer: OutermostObserver | None, recorder: OpRecorder, window: int
    ) -> None:
        super().__init__(torch, observer)
        self.recorder = recorder
        self.window = window
        self.mode = recorder.mode(torch)
        self.open = window == OUTSIDE
        self.pushed = False
        self.compiled_depth = 0

    def sync(self) -> None:
        """Push or pop the dispatch mode to match the window; resume recording."""
        wanted = self.open and not self.compiled_depth
        if wanted and not self.pushed:
            self.mode.__enter__()
            self.pushed = True
        elif not wanted and self.pushed:
            self.mode.__exit__(None, None, None)
            self.pushed = False
        self.recorder.active = wanted

    def enter(self, module: Any, args: tuple[Any, ...]) -> None:
        self.recorder.active = False
        rows = len(self.trace.rows)
        super().enter(module, args)
        if len(self.trace.rows) > rows:
            row = self.trace.rows[-1]
            if self.window == OUTSIDE:
                self.open = False
            elif rows == self.window:
                self.open = True
            if self.open and self.compiled(row):
                self.compiled_depth += 1
        self.sync()

    def exit(self, module: Any, args: tuple[Any, ...], *rest: Any) -> None:
        self.recorder.active = False
        stack, exits = self.stack, self.trace.exit_order
        row = stack[-1][1] if stack else None
        returned = len(exits)
        super().exit(module, args, *rest)
        if row is not None and len(exits) > returned:
            if self.open and self.compiled(row) and self.compiled_depth:
                self.compiled_depth -= 1
            if exits[-1] == self.window:
                self.open = False
            if self.window == OUTSIDE and not stack:
                self.open = True
        self.sync()

    def close(self) -> None:
        """End of the block: the dispatch mode goes, whatever state the calls left."""
        self.open = False
        self.compiled_depth = 0
        self.sync()
