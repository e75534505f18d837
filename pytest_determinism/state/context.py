"""What the session and the test now running asked for, readable by code that pytest does
not call.

The plugin sets the seed for the life of a marked test, and the project's tolerance table
(ini ``golden_tolerances``) for the life of a session; helpers such as
``assert_deterministic`` and ``assert_batch_invariant`` read them from here, and count their
calls here, so that ``--determinism`` can tell a test that checked values through a helper
from one that checked none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_determinism.golden.tolerances import Tolerance

__all__ = [
    "current_seed",
    "helper_checks",
    "note_helper_check",
    "set_current_seed",
    "set_tolerance_overrides",
    "tolerance_overrides",
]

_current_seed: int | None = None
_tolerance_overrides: Mapping[str, Tolerance] = {}
_helper_checks = 0


def current_seed() -> int | None:
    """The seed of the marked test now running, or ``None`` outside one."""
    return _current_seed


def set_current_seed(seed: int | None) -> None:
    """Record the seed in force (``None`` outside a marked test)."""
    global _current_seed
    _current_seed = seed


def tolerance_overrides() -> Mapping[str, Tolerance]:
    """The project's per-dtype tolerance overrides (empty outside a pytest session)."""
    return _tolerance_overrides


def set_tolerance_overrides(overrides: Mapping[str, Tolerance]) -> Mapping[str, Tolerance]:
    """Put ``overrides`` in force and return the ones they replace (to put back later)."""
    global _tolerance_overrides
    previous, _tolerance_overrides = _tolerance_overrides, overrides
    return previous


def note_helper_check() -> None:
    """Count one call of a checking helper (``assert_deterministic``,
    ``assert_batch_invariant``)."""
    global _helper_checks
    _helper_checks += 1


def helper_checks() -> int:
    """How many checking helpers have been called in this process; only differences of it
    mean anything."""
    return _helper_checks
