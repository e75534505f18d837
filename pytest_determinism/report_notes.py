"""Adding the plugin's own explanation to a failed test's report."""

from __future__ import annotations

import pytest

__all__ = ["add_note"]


def add_note(report: pytest.TestReport, title: str, note: str | None) -> None:
    """Append ``note`` below the failure ``report`` shows, under ``title``; nothing when
    ``note`` is ``None``."""
    if note is None:
        return
    longrepr = report.longrepr
    heading = f"pytest-determinism: {title}"
    addsection = getattr(longrepr, "addsection", None)
    if callable(addsection):
        # Printed right below the traceback, also with --show-capture=no.
        addsection(heading, note)
    elif isinstance(longrepr, str):
        report.longrepr = f"{longrepr}\n\n{heading}\n{note}"
    else:
        report.sections.append((heading, note))
