"""What one session learned: golden tallies, determinism verdicts, per-test records.

Plain data, so pytest-xdist workers can send theirs to the controller (``to_json`` /
``merge``), which prints the summary and writes the CI report from the merged record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_determinism.inventory import Inventory

if TYPE_CHECKING:
    from pytest_determinism.golden.result import GoldenResult

__all__ = ["SessionRecord", "TestRecord"]

_GOLDEN_COUNTS = ("passed", "failed", "written", "updated")


@dataclass
class TestRecord:
    """Everything the CI report says about one test."""

    nodeid: str
    outcome: str = "unknown"
    seed: int | None = None
    runs: int = 1
    probe_run: bool = False
    goldens: list[dict[str, Any]] = field(default_factory=list)
    nondeterministic: bool = False
    verdict: str | None = None
    first_diverging_module: str | None = None
    first_diverging_class: str | None = None
    first_diverging_op: str | None = None
    source_line: str | None = None
    reproduced: bool | None = None
    golden_not_written: bool = False
    checked_values: bool | None = None
    not_reentrant: bool = False

    def to_json(self) -> dict[str, Any]:
        """The test's entry in the CI report."""
        return {
            "nodeid": self.nodeid,
            "outcome": self.outcome,
            "seed": self.seed,
            "runs": self.runs,
            "probe_run": self.probe_run,
            "goldens": self.goldens,
            "nondeterministic": self.nondeterministic,
            "verdict": self.verdict,
            "first_diverging_module": self.first_diverging_module,
            "first_diverging_class": self.first_diverging_class,
            "first_diverging_op": self.first_diverging_op,
            "source_line": self.source_line,
            "reproduced": self.reproduced,
            "golden_not_written": self.golden_not_written,
            "checked_values": self.checked_values,
            "not_reentrant": self.not_reentrant,
        }

    def junit_properties(self) -> list[tuple[str, object]]:
        """The key figures as JUnit XML properties (``record_property`` style)."""
        properties: list[tuple[str, object]] = []
        if self.seed is not None:
            properties.append(("determinism_seed", self.seed))
        if self.verdict is not None or self.runs > 1:
            properties.append(("determinism_runs", self.runs))
            properties.append(("determinism_nondeterministic", self.nondeterministic))
        if self.first_diverging_module is not None:
            properties.append(("determinism_first_diverging_module", self.first_diverging_module))
        for entry in self.goldens:
            key = entry["key"]
            for figure in ("max_abs_diff", "max_rel_diff"):
                if entry.get(figure) is not None:
                    properties.append((f"golden_{key}_{figure}", entry[figure]))
        return properties


@dataclass
class SessionRecord:
    """Tallies and records of a session, mergeable across pytest-xdist workers."""

    golden: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_GOLDEN_COUNTS, 0))
    not_written: list[str] = field(default_factory=list)
    determinism_tests: int = 0
    probe_runs: int = 0
    checked_no_values: int = 0
    nondeterministic: list[str] = field(default_factory=list)
    devices: set[str] = field(default_factory=set)
    tests: dict[str, TestRecord] = field(default_factory=dict)
    inventory: Inventory = field(default_factory=Inventory)

    def add_golden(self, nodeid: str, result: GoldenResult) -> None:
        """Count one test's golden checks and keep their figures for the CI report."""
        for key in _GOLDEN_COUNTS:
            self.golden[key] += int(getattr(result, key))
        if result.not_written:
            self.not_written.append(nodeid)
        if result.used:
            self.inventory.used.add(str(result.path))
        test = self.test(nodeid)
        test.golden_not_written = result.not_written
        test.goldens = [dict(entry) for entry in result.entries]

    def test(self, nodeid: str) -> TestRecord:
        """The record of ``nodeid``, created on first use."""
        record = self.tests.get(nodeid)
        if record is None:
            record = self.tests[nodeid] = TestRecord(nodeid)
        return record

    def to_json(self) -> dict[str, Any]:
        """Plain data for pytest-xdist's ``workeroutput``."""
        return {
            "golden": self.golden,
            "not_written": self.not_written,
            "determinism_tests": self.determinism_tests,
            "probe_runs": self.probe_runs,
            "checked_no_values": self.checked_no_values,
            "nondeterministic": self.nondeterministic,
            "devices": sorted(self.devices),
            "tests": [t.to_json() for t in self.tests.values()],
            "inventory": self.inventory.to_json(),
        }

    def merge(self, data: dict[str, Any]) -> None:
        """Add a worker's ``to_json()`` to this record."""
        for key in _GOLDEN_COUNTS:
            self.golden[key] += int(data["golden"][key])
        self.not_written.extend(data["not_written"])
        self.determinism_tests += int(data["determinism_tests"])
        self.probe_runs += int(data["probe_runs"])
        self.checked_no_values += int(data["checked_no_values"])
        self.nondeterministic.extend(data["nondeterministic"])
        self.devices.update(data["devices"])
        for entry in data["tests"]:
            self.tests[entry["nodeid"]] = TestRecord(**entry)
        self.inventory.merge(data["inventory"])
