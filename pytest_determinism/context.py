"""What the test now running asked for, readable by code that pytest does not call.

The plugin sets it for the life of a marked test; helpers such as ``assert_deterministic``
read the seed from here when they are not given one.
"""

from __future__ import annotations

__all__ = ["current_seed", "set_current_seed"]

_current_seed: int | None = None


def current_seed() -> int | None:
    """The seed of the marked test now running, or ``None`` outside one."""
    return _current_seed


def set_current_seed(seed: int | None) -> None:
    """Record the seed in force (``None`` outside a marked test)."""
    global _current_seed
    _current_seed = seed
