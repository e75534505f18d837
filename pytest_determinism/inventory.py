"""Which golden files a session used, and which are unused.

A golden file is *unused* when nothing in this session could have needed it:
- its test was collected, ran to a pass, and checked nothing; or
- no collected test maps to it, and every test of its folder was collected (so its test
  was deleted, renamed or lost a parametrize id).
Everything else is unknown, never unused: deselected, skipped or failed tests, and folders
of modules collected only in part (node ids) or not at all. Deleting is stricter still:
only after a whole, unfiltered, uninterrupted run (see ``plugin.py``).

The record is plain data so pytest-xdist workers can send theirs to the controller, which
merges them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["GOLDEN_SUFFIX", "Inventory"]

GOLDEN_SUFFIX = ".safetensors"


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
                    file.name.endswith(GOLDEN_SUFFIX)
                    and name not in expected_files
                    and name not in self.used
                ):
                    found.add(name)
        return sorted(Path(p) for p in found)
