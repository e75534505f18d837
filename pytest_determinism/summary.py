"""The terminal summary lines of a session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_determinism.session import PluginSession

__all__ = ["summary_lines"]


def _relative(path: object) -> str:
    try:
        return os.path.relpath(str(path))
    except ValueError:  # another drive on Windows
        return str(path)


def summary_lines(plugin_session: PluginSession, *, verbose: bool) -> Iterator[str]:
    """``golden: ...`` and, in CI mode, ``determinism: ...``, plus the details they need."""
    record = plugin_session.record
    golden = record.golden
    unused = plugin_session.unused
    deleted = plugin_session.deleted
    parts = [f"{count} {label}" for label, count in golden.items() if count]
    if deleted:
        parts.append(f"{len(deleted)} unused deleted")
    elif unused:
        parts.append(f"{len(unused)} unused")
    if parts:
        incomplete = (
            ""
            if plugin_session.worker_reports_complete
            else " (incomplete: a pytest-xdist worker went down without its report)"
        )
        yield "golden: " + ", ".join(parts) + incomplete
    if record.not_written:
        yield (
            f"golden: nothing written for {len(record.not_written)} failed test(s), their "
            "outputs may be wrong: " + ", ".join(record.not_written)
        )
    if deleted:
        for path in deleted:
            yield f"  deleted {_relative(path)}"
    elif unused:
        if verbose:
            for path in unused:
                yield f"  unused {_relative(path)}"
        elif plugin_session.options.update_golden:
            yield "  (unused goldens are deleted only when the whole suite runs unfiltered)"
        else:
            yield "  (-v lists them; --update-golden on the whole suite deletes them)"
    if plugin_session.options.ci_mode:
        runs = plugin_session.options.runs
        tests = record.determinism_tests
        if record.probe_runs == tests:
            probe = " (+1 other-seed run)"
        elif record.probe_runs:
            probe = f" (+1 other-seed run for {record.probe_runs})"
        else:
            probe = ""
        # Their runs were compared only on whether and what they raised: say so, rather
        # than let the count of tests suggest more was checked.
        unchecked = (
            f", {record.checked_no_values} checked no values" if record.checked_no_values else ""
        )
        yield (
            f"determinism: {tests} tests x {runs} runs{probe}, "
            f"{len(record.nondeterministic)} nondeterministic{unchecked}"
        )
        for nodeid in record.nondeterministic:
            yield f"  nondeterministic {nodeid}"
    if record.devices:
        yield "determinism: device " + ", ".join(sorted(record.devices))
