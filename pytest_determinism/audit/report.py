"""What the audit prints and writes: a verdict line per check, the explanation under a
finding, a progress line while a check runs (on a terminal only), and the JSON file."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pytest_determinism.audit.checks import CheckResult

__all__ = ["Progress", "json_document", "summary_line", "verdict_lines", "write_json"]

_NAME_WIDTH = 11
_VERDICT_WIDTH = 9


def verdict_lines(result: CheckResult) -> str:
    """The check's verdict line and, under a finding (or information with more to say),
    its explanation indented below it."""
    text = f"  {result.name:<{_NAME_WIDTH}}{result.verdict:<{_VERDICT_WIDTH}}{result.summary}\n"
    if result.explanation and result.verdict in ("finding", "info"):
        text += "".join(f"      {line}\n" for line in result.explanation.splitlines())
    return text


def summary_line(results: Sequence[CheckResult], status: int) -> str:
    """The last line: how many findings, and the exit status they give."""
    count = sum(1 for result in results if result.verdict == "finding")
    if not count:
        return f"audit: no findings (exit {status})\n"
    names = ", ".join(result.name for result in results if result.verdict == "finding")
    return f"audit: {count} finding{'s' * (count != 1)} ({names}) (exit {status})\n"


class Progress:
    """A line per check while it runs, replaced by its verdict; only on a terminal, so
    piped output and files hold the verdicts alone."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        isatty = getattr(out, "isatty", None)
        self.live = bool(isatty is not None and isatty())

    def start(self, name: str) -> None:
        """Say that the check ``name`` is running."""
        if self.live:
            self.out.write(f"audit: {name} ...")
            self.out.flush()

    def done(self, result: CheckResult) -> None:
        """Replace the progress line with the check's verdict (and explanation)."""
        if self.live:
            self.out.write("\r\x1b[K")
        self.out.write(verdict_lines(result))
        self.out.flush()


def _plain(value: Any) -> Any:
    # JSON has no infinity or NaN: a relative difference from a zero is infinite.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def json_document(
    target: str, model: str, inputs: str, results: Sequence[CheckResult], status: int
) -> dict[str, Any]:
    """``{"target", "model", "inputs", "exit_status", "checks": [{"name", "verdict",
    "summary", "details"}]}``; a finding's explanation is in its details."""
    checks = []
    for result in results:
        details = dict(result.details)
        if result.explanation:
            details["explanation"] = result.explanation
        checks.append(
            {
                "name": result.name,
                "verdict": result.verdict,
                "summary": result.summary,
                "details": _plain(details),
            }
        )
    return {
        "target": target,
        "model": model,
        "inputs": inputs,
        "exit_status": status,
        "checks": checks,
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write the document, indented, with a final newline."""
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
