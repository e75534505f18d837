"""Which golden files a session used, and which are unused.

A golden file is *unused* when nothing in this session could have needed it:
- its test was collected, ran to a pass, and checked nothing; or
- no collected test maps to it, and every test of its folder was collected (so its test
  was deleted, renamed or lost a parametrize id).
Everything else is unknown, never unused: deselected, skipped or failed tests, and folders
of modules collected only in part (node ids) or not at all. Deleting is stricter still:
only after a whole, unfiltered, uninterrupted run (:func:`whole_suite_ran`).

The record is plain data so pytest-xdist workers can send theirs to the controller, which
merges them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_determinism.golden.paths import SUFFIX
from pytest_determinism.paths import golden_file

if TYPE_CHECKING:
    from pytest_determinism.session import PluginSession

__all__ = ["Inventory", "delete_unused", "take_inventory", "whole_suite_ran"]


@dataclass
class Inventory:
    """Golden files expected, used and seen in one session (or merged from workers)."""

    #: node id -> the golden file its test would use, for every collected test
    expected: dict[str, str] = field(default_factory=dict)
    #: golden folders (``<root>/<module>``) whose module was collected whole
    complete_folders: set[str] = field(default_factory=set)
    #: golden folders whose module was collected only in part
    partial_folders: set[str] = field(default_factory=set)
    #: node ids that passed without checking anything
    passed_unchecked: set[str] = field(default_factory=set)
    #: golden files read or written
    used: set[str] = field(default_factory=set)

    def add_collected(self, nodeid: str, golden_file: Path, *, whole_module: bool) -> None:
        """Record a collected test and the golden file it maps to."""
        self.expected[nodeid] = str(golden_file)
        folder = str(golden_file.parent)
        (self.complete_folders if whole_module else self.partial_folders).add(folder)

    def merge(self, other: dict[str, Any]) -> None:
        """Merge a worker's ``to_json()`` into this record."""
        self.expected.update(other["expected"])
        self.complete_folders.update(other["complete_folders"])
        self.partial_folders.update(other["partial_folders"])
        self.passed_unchecked.update(other["passed_unchecked"])
        self.used.update(other["used"])

    def to_json(self) -> dict[str, Any]:
        """Plain data for pytest-xdist's ``workeroutput``."""
        return {
            "expected": self.expected,
            "complete_folders": sorted(self.complete_folders),
            "partial_folders": sorted(self.partial_folders),
            "passed_unchecked": sorted(self.passed_unchecked),
            "used": sorted(self.used),
        }

    def unused(self) -> list[Path]:
        """Golden files nothing in this session could have needed, sorted."""
        found: set[str] = set()
        expected_files = {path: nodeid for nodeid, path in self.expected.items()}
        for nodeid in self.passed_unchecked:
            path = self.expected.get(nodeid)
            if path is not None and path not in self.used and Path(path).is_file():
                found.add(path)
        for folder in self.complete_folders - self.partial_folders:
            folder_path = Path(folder)
            if not folder_path.is_dir():
                continue
            for file in folder_path.iterdir():
                name = str(file)
                if (
                    file.name.endswith(SUFFIX)
                    and name not in expected_files
                    and name not in self.used
                ):
                    found.add(name)
        return sorted(Path(p) for p in found)


def take_inventory(
    inventory: Inventory,
    collected: Iterable[tuple[str, str]],
    *,
    rootdir: Path,
    golden_dir: Path | None,
    partial_modules: set[Path],
) -> None:
    """Map each collected test (node id, test file) to its golden file, in the modules
    that have a golden folder."""
    by_module: dict[str, list[str]] = {}
    for nodeid, test_file in collected:
        by_module.setdefault(test_file, []).append(nodeid)
    for test_file, nodeids in by_module.items():
        module = Path(test_file)
        # Every test of a module has its golden in the same folder: look there once.
        first = golden_file(module, nodeids[0], rootdir, golden_dir)
        if first is None or not first.parent.is_dir():
            continue
        whole_module = module.resolve() not in partial_modules
        for nodeid in nodeids:
            path = golden_file(module, nodeid, rootdir, golden_dir)
            if path is not None:
                inventory.add_collected(nodeid, path, whole_module=whole_module)


def whole_suite_ran(
    session: pytest.Session, plugin_session: PluginSession, exitstatus: int
) -> bool:
    """The whole suite ran, unfiltered and uninterrupted: only then may unused goldens go."""
    option = session.config.option
    return not (
        plugin_session.filtered
        or not plugin_session.worker_reports_complete
        or plugin_session.partial_modules
        or exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR)
        or session.shouldstop
        or session.shouldfail
        or getattr(option, "keyword", "")
        or getattr(option, "markexpr", "")
        or getattr(option, "deselect", None)
        or getattr(option, "lf", False)
        or getattr(option, "stepwise", False)
    )


def delete_unused(session: pytest.Session, plugin_session: PluginSession, exitstatus: int) -> None:
    """Judge which goldens are unused; under ``--update-golden`` after a whole run, delete
    them. Both lists are kept on ``plugin_session`` for the summary."""
    plugin_session.unused = plugin_session.record.inventory.unused()
    if plugin_session.options.update_golden and whole_suite_ran(
        session, plugin_session, exitstatus
    ):
        for path in plugin_session.unused:
            path.unlink(missing_ok=True)
            plugin_session.deleted.append(path)
