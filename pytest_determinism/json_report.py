"""The JSON CI report written by ``--determinism-report PATH``.

Its schema is ``report_schema.json`` beside this module; ``SCHEMA_VERSION`` changes
whenever a field changes meaning or goes away (adding a field does not).
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from pytest_determinism.golden.environment import installed_version, torch_version
from pytest_determinism.options import SessionOptions
from pytest_determinism.record import SessionRecord

__all__ = ["SCHEMA_PATH", "SCHEMA_VERSION", "build_report", "write_report"]

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("report_schema.json")


def build_report(record: SessionRecord, options: SessionOptions, exitstatus: int) -> dict[str, Any]:
    """The report as plain data."""
    from pytest_determinism import __version__

    return {
        "schema_version": SCHEMA_VERSION,
        "plugin_version": __version__,
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch": torch_version(),
            "numpy": installed_version("numpy"),
            "devices": sorted(record.devices),
        },
        "session": {
            "seed": options.seed,
            "ci_mode": options.ci_mode,
            "runs": options.runs,
            "update_golden": options.update_golden,
            "exitstatus": int(exitstatus),
        },
        "summary": {
            "golden": dict(record.golden),
            "determinism_tests": record.determinism_tests,
            "checked_no_values": record.checked_no_values,
            "nondeterministic": sorted(record.nondeterministic),
        },
        "tests": [_jsonable(record.tests[nodeid].to_json()) for nodeid in sorted(record.tests)],
    }


def _jsonable(value: Any) -> Any:
    # JSON has no infinities or NaN; a difference can be either.
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` to ``path`` atomically, so a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            json.dump(report, stream, indent=2, sort_keys=True, allow_nan=False)
            stream.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
