"""``python -m pytest_determinism show|diff|audit``: golden files and models outside a test run.

``show PATH...`` prints each file's keys (dtype, shape, min, max, mean, NaN and Inf
counts) and metadata, the golden trace as the number of module calls it holds. ``diff
GOLDEN OTHER`` compares ``OTHER`` against ``GOLDEN`` with the default tolerances and prints
the message a failing check would; where both hold a golden trace, where the difference
started, as a failing test says it (``--plot FILE.png`` draws it). Exit status: 0 when every
file was shown or the two files match, 1 when they differ, 2 on bad input. Files are read
as safetensors only, never unpickled, and no traceback is ever printed. ``audit TARGET``
checks one model (:mod:`pytest_determinism.audit.command`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from pytest_determinism.audit.command import add_arguments as add_audit_arguments
from pytest_determinism.audit.command import audit
from pytest_determinism.errors import GoldenFileError
from pytest_determinism.golden.compare import compare_leaves
from pytest_determinism.golden.golden_trace import TRACE_KEY, GoldenTrace, stored_trace
from pytest_determinism.golden.mismatch import format_shape, format_value, mismatch_message
from pytest_determinism.golden.statistics import Statistics, statistics_of
from pytest_determinism.golden.storage import GoldenFile, read_golden
from pytest_determinism.golden.tolerances import resolve_tolerance

__all__ = ["main"]

EXIT_OK = 0
EXIT_DIFFER = 1
EXIT_BAD_INPUT = 2


class _BadInput(Exception):
    """A problem with the command's input, reported in one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own exit status for usage errors is 2 as well; this keeps the
        # message on one line with the program name.
        self.print_usage(sys.stderr)
        raise _BadInput(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m pytest_determinism",
        description="Inspect pytest-determinism golden files (safetensors); audit a model.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    show = commands.add_parser("show", help="keys, dtypes, shapes, statistics and metadata")
    show.add_argument("paths", nargs="+", metavar="PATH", help="golden files to show")
    diff = commands.add_parser("diff", help="compare OTHER against GOLDEN as a failing check would")
    diff.add_argument("golden", metavar="GOLDEN", help="the reference file")
    diff.add_argument("other", metavar="OTHER", help="the file compared against it")
    diff.add_argument("--rtol", type=float, default=None, help="relative tolerance")
    diff.add_argument("--atol", type=float, default=None, help="absolute tolerance")
    diff.add_argument("--exact", action="store_true", help="require identical bits")
    diff.add_argument("--no-equal-nan", action="store_true", help="NaN does not match NaN")
    diff.add_argument(
        "--plot",
        metavar="FILE.png",
        default=None,
        help="draw the relative difference per module call along the model (both goldens "
        "must hold a golden trace; needs the extra 'plot')",
    )
    add_audit_arguments(
        commands.add_parser("audit", help="check one model for every kind of nondeterminism")
    )
    return parser


def _open(path: str) -> GoldenFile:
    try:
        return read_golden(Path(path))
    except FileNotFoundError:
        raise _BadInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise _BadInput(f"{path}: is a folder, not a golden file") from None
    except GoldenFileError as exc:
        raise _BadInput(str(exc)) from None
    except OSError as exc:
        raise _BadInput(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _stats(statistics: Statistics, dtype: str) -> str:
    parts = []
    if statistics.minimum is not None:
        parts.append(f"min {format_value(statistics.minimum, dtype)}")
    if statistics.maximum is not None:
        parts.append(f"max {format_value(statistics.maximum, dtype)}")
    if statistics.mean is not None:
        parts.append(f"mean {statistics.mean:.6g}")
    parts.append(f"nan {statistics.nan}")
    parts.append(f"inf {statistics.inf}")
    return "  ".join(parts)


def _show(paths: Sequence[str], out: TextIO) -> int:
    files = [_open(path) for path in paths]
    for number, golden in enumerate(files):
        with golden:
            if number:
                out.write("\n")
            out.write(f"{golden.path}\n")
            keys = golden.sorted_keys()
            out.write(f"  {len(keys)} key{'s' if len(keys) != 1 else ''}\n")
            rows = []
            for key in keys:
                entry = golden.entries[key]
                statistics = statistics_of(golden.leaf(key))
                rows.append(
                    (key, entry.dtype, format_shape(entry.shape), _stats(statistics, entry.dtype))
                )
            widths = [max((len(row[i]) for row in rows), default=0) for i in range(3)]
            for row in rows:
                cells = [row[i].ljust(widths[i]) for i in range(3)]
                out.write(f"    {'  '.join(cells)}  {row[3]}\n")
            out.write("  metadata\n")
            if not golden.metadata:
                out.write("    (none)\n")
            for name in sorted(golden.metadata):
                if name == TRACE_KEY:
                    trace = _trace(golden)
                    size = len(golden.metadata[name])
                    out.write(f"    {name}: {len(trace or ())} module calls ({size} bytes)\n")
                else:
                    out.write(f"    {name}: {golden.metadata[name]}\n")
    return EXIT_OK


def _trace(golden: GoldenFile) -> GoldenTrace | None:
    """The golden trace of ``golden``, ``None`` where it holds none."""
    try:
        return stored_trace(golden.metadata)
    except ValueError as exc:
        raise _BadInput(
            f"{golden.path}: its golden trace cannot be read: {exc}; re-record it with "
            "pytest --update-golden"
        ) from None


def _origin(
    arguments: argparse.Namespace, golden: GoldenFile, other: GoldenFile, passed: bool
) -> str | None:
    """Where the difference of ``other`` from ``golden`` started, drawn with ``--plot``."""
    recorded, current = _trace(golden), _trace(other)
    if recorded is None or current is None:
        if arguments.plot is not None:
            lacking = golden.path if recorded is None else other.path
            raise _BadInput(
                f"--plot needs a golden trace in both files; {lacking} holds none (record "
                "it with pytest --update-golden)"
            )
        if passed:
            return None
        lacking = golden.path if recorded is None else other.path
        return (
            f"where the difference started: {lacking} holds no golden trace (record it with "
            "pytest --update-golden to see where in the model a difference starts)"
        )
    from pytest_determinism.nondeterminism.origin import find_origin

    origin = find_origin(
        recorded,
        current,
        lambda dtype: resolve_tolerance(
            dtype, rtol=arguments.rtol, atol=arguments.atol, exact=arguments.exact
        ),
    )
    if arguments.plot is not None:
        from pytest_determinism.plot import plot_origin

        plot_origin(origin, Path(arguments.plot), f"{other.path} against {golden.path}")
    return None if passed else origin.message()


def _diff(arguments: argparse.Namespace, out: TextIO) -> int:
    for name in ("rtol", "atol"):
        value = getattr(arguments, name)
        if value is not None and not value >= 0:
            raise _BadInput(f"--{name} must be a number >= 0, got {value}")
    if arguments.plot is not None:
        from pytest_determinism.plot import MISSING_EXTRA, matplotlib_missing

        if matplotlib_missing():
            raise _BadInput(f"--plot: {MISSING_EXTRA}")
    golden = _open(arguments.golden)
    other = _open(arguments.other)
    with golden, other:
        result = compare_leaves(
            other.leaves(),
            golden.leaves(),
            lambda leaf: resolve_tolerance(
                leaf.dtype, rtol=arguments.rtol, atol=arguments.atol, exact=arguments.exact
            ),
            equal_nan=not arguments.no_equal_nan,
        )
        origin = _origin(arguments, golden, other, result.passed)
        if result.passed:
            count = len(result.comparisons)
            out.write(f"{other.path} matches {golden.path} ({count} key{'s' * (count != 1)})\n")
            return EXIT_OK
        out.write(
            mismatch_message(
                title=f"{other.path} against {golden.path}",
                path=golden.path,
                comparisons=result.comparisons,
                missing=result.missing,
                extra=result.extra,
                recorded=golden.metadata,
                current=other.metadata,
            )
            + "\n"
        )
        if origin is not None:
            out.write(f"\n{origin}\n")
        return EXIT_DIFFER


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit status (never raises, never prints a
    traceback, except on ``KeyboardInterrupt``)."""
    stream = out if out is not None else sys.stdout
    try:
        arguments = _parser().parse_args(argv)
        if arguments.command == "show":
            return _show(arguments.paths, stream)
        if arguments.command == "audit":
            return audit(arguments, stream)
        return _diff(arguments, stream)
    except _BadInput as exc:
        sys.stderr.write(f"pytest_determinism: error: {exc}\n")
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # The reader went away (``show ... | head``): what it wanted was written. Point
        # stdout at devnull so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except SystemExit as exc:
        # argparse exits for --help (0).
        return int(exc.code) if isinstance(exc.code, int) else EXIT_BAD_INPUT
    except Exception as exc:  # a bug or an unforeseen file problem: one line, no traceback
        sys.stderr.write(f"pytest_determinism: error: {type(exc).__name__}: {exc}\n")
        return EXIT_BAD_INPUT
