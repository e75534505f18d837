"""What one test's golden checks came to: tallies for the summary, one entry per key for
the JSON report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_determinism.golden.compare import Comparison
from pytest_determinism.golden.values import Leaf

__all__ = ["GoldenResult", "key_entry"]


@dataclass(frozen=True)
class GoldenResult:
    """What one test's golden checks came to, for the summary and the CI report.

    Counts are per checked name (one ``check`` call): ``passed`` (matched, or recorded
    unchanged under ``--update-golden``), ``failed`` (differed, or had no golden),
    ``written`` (recorded for the first time), ``updated`` (recorded with new content).
    ``used``: the test checked something, so its golden file is needed. ``not_written``:
    ``--update-golden`` recorded checks but the test failed, so nothing was written.
    ``file_written``: the file on disk was (re)written. ``entries``: one plain dict per
    checked key (``key``, ``outcome``, ``dtype``, ``shape``, ``tolerance``,
    ``mismatched``, ``total``, ``max_abs_diff``, ``max_rel_diff``).
    """

    path: Path
    passed: int = 0
    failed: int = 0
    written: int = 0
    updated: int = 0
    used: bool = False
    not_written: bool = False
    file_written: bool = False
    entries: tuple[dict[str, Any], ...] = field(default_factory=tuple)


def key_entry(key: str, outcome: str, leaf: Leaf, comparison: Comparison | None) -> dict[str, Any]:
    """The JSON report's entry for one checked key (``comparison``: when it was compared)."""
    entry: dict[str, Any] = {
        "key": key,
        "outcome": outcome,
        "dtype": leaf.dtype,
        "shape": list(leaf.shape),
        "tolerance": None,
        "mismatched": 0,
        "total": leaf.size,
        "max_abs_diff": None,
        "max_rel_diff": None,
    }
    if comparison is not None:
        entry["tolerance"] = comparison.tolerance.describe()
        entry["mismatched"] = comparison.mismatched
        entry["max_abs_diff"] = comparison.max_abs_diff
        entry["max_rel_diff"] = comparison.max_rel_diff
        drift = comparison.drift
        if drift is not None:
            entry["kind"] = drift.kind
            entry["ulps"] = drift.ulps
            if drift.actual_precision != drift.golden_precision:
                entry["precision"] = {
                    "actual": drift.actual_precision,
                    "golden": drift.golden_precision,
                }
        if comparison.outcome in ("dtype", "shape"):
            entry["golden_dtype"] = comparison.golden_dtype
            entry["golden_shape"] = list(comparison.golden_shape)
    return entry
