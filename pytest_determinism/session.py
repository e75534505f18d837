"""What the plugin keeps for one pytest session: options, tolerances and what it learned.

One :class:`PluginSession` lives in ``config.stash`` from configure to unconfigure; the
hooks, the terminal summary and the pytest-xdist controller all read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_determinism.options import SessionOptions
from pytest_determinism.record import SessionRecord

if TYPE_CHECKING:
    from pytest_determinism.golden.tolerances import Tolerance

__all__ = ["PluginSession"]


@dataclass
class PluginSession:
    """Options, tolerances and the session record of one pytest session."""

    options: SessionOptions
    tolerances: dict[str, Tolerance]
    record: SessionRecord = field(default_factory=SessionRecord)
    #: ``CUBLAS_WORKSPACE_CONFIG`` was set by the plugin, so unconfigure unsets it.
    cublas_was_unset: bool = False
    #: golden files nothing in the session needed, and those deleted under --update-golden
    unused: list[Path] = field(default_factory=list)
    deleted: list[Path] = field(default_factory=list)
    #: every pytest-xdist worker sent its record (an incomplete record deletes nothing)
    worker_reports_complete: bool = True
    #: tests were deselected or collection failed: not the whole suite
    filtered: bool = False
    #: test modules named with node ids on the command line (collected only in part)
    partial_modules: set[Path] = field(default_factory=set)
    #: (node id, test file) of every collected test function
    collected: list[tuple[str, str]] = field(default_factory=list)
    #: the tolerance overrides in force before this session, put back at its end
    outer_tolerances: Mapping[str, Tolerance] = field(default_factory=dict)
