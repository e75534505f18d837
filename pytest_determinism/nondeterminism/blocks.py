"""How recording blocks nest, and the cheapest one: the outermost-call watcher.

A block (:func:`~pytest_determinism.nondeterminism.trace.tracing`, :func:`watching`) hears
the module calls made inside it through the plugin's shared global hooks
(:mod:`pytest_determinism.state.hooks`). Blocks nest: a helper's runs inside a test the CI
mode is checking are the helper's own, so only the innermost block has its hooks installed,
and an enclosing one hears nothing until the inner one ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from pytest_determinism.state import hooks

__all__ = ["Block", "OutermostObserver", "block", "watching"]

_get_ident = threading.get_ident


class OutermostObserver(Protocol):
    """Told when an outermost module call starts and ends (the seed probe is one)."""

    def outermost_enter(self, module: Any, number: int) -> None:
        """Outermost call ``number`` (0, 1, ...) of the block is about to run."""

    def outermost_exit(self, module: Any, number: int) -> None:
        """Outermost call ``number`` returned or raised."""


class Block(Protocol):
    """A recording block: what it listens with is installed only while it is innermost."""

    def install(self) -> None:
        """Start listening."""

    def uninstall(self) -> None:
        """Stop listening."""


class _Watcher:
    """The outermost calls alone, for an observer (the seed probe) while nothing is traced.

    A passing check runs under this instead of the tracer: it hears the outermost calls
    only, and the module calls nested inside them run without any hook (see
    :mod:`pytest_determinism.state.hooks`). A call of the outermost module nested inside it
    (recursion) counts as nested; an outermost call made on another thread is ignored.
    """

    def __init__(self, observer: OutermostObserver) -> None:
        self.observer = observer
        self.thread = threading.get_ident()
        self.outer: Any = None
        self.number = 0

    def install(self) -> None:
        hooks.subscribe_outermost(enter=self.enter, exit=self.exit)

    def uninstall(self) -> None:
        hooks.unsubscribe_outermost(enter=self.enter, exit=self.exit)

    def enter(self, module: Any, args: tuple[Any, ...]) -> None:
        """Tell the observer that an outermost call starts."""
        if _get_ident() != self.thread:
            return
        self.outer = module
        self.observer.outermost_enter(module, self.number)

    def exit(self, module: Any, args: tuple[Any, ...], *rest: Any) -> None:
        """Tell the observer that it has returned or raised."""
        if module is not self.outer:
            return
        self.outer = None
        number = self.number
        self.number = number + 1
        self.observer.outermost_exit(module, number)


# Active blocks, innermost last; only the innermost one has its hooks installed.
_blocks: list[Block] = []


def enclosing_observer() -> OutermostObserver | None:
    """The observer of the innermost active block, if it has one.

    A block that records for a purpose of its own (the golden trace of a run) passes it on,
    so the check around it still hears the outermost calls it would have heard.
    """
    if not _blocks:
        return None
    observer: OutermostObserver | None = getattr(_blocks[-1], "observer", None)
    return observer


@contextmanager
def block(tracer: Block) -> Iterator[None]:
    if _blocks:
        _blocks[-1].uninstall()
    _blocks.append(tracer)
    tracer.install()
    try:
        yield
    finally:
        tracer.uninstall()
        _blocks.remove(tracer)
        if _blocks:
            _blocks[-1].install()


class _Aside:
    """A block that hears nothing: it only makes the enclosing one stand aside."""

    def install(self) -> None:
        """Nothing to install."""

    def uninstall(self) -> None:
        """Nothing to remove."""


@contextmanager
def watching(observer: OutermostObserver | None) -> Iterator[None]:
    """Tell ``observer`` when each outermost module call starts and ends, recording
    nothing: what a passing check needs for the seed probe. Nests like :func:`tracing`.

    With ``observer=None`` nothing is heard, and an enclosing block still stands aside (a
    helper's runs inside a checked test are its own); with no enclosing block, nothing is
    installed at all.
    """
    if observer is not None:
        with block(_Watcher(observer)):
            yield
    elif _blocks:
        with block(_Aside()):
            yield
    else:
        yield
