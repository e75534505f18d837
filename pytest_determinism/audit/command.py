"""``python -m pytest_determinism audit TARGET``: the audit from target to exit status.

Loads the target (:mod:`~pytest_determinism.audit.target`), checks that the model takes
its inputs, runs the seven checks (:mod:`~pytest_determinism.audit.checks`) with a
progress line each on a terminal, prints the verdicts and explanations
(:mod:`~pytest_determinism.audit.report`), writes the JSON file and the starter test when
asked. The process is left as it was found: RNG states, torch flags and thread count,
environment variables, and every module's ``training`` flag.

Exit status: 0 when the checks ``mode`` to ``batch`` find nothing, 1 when one does, 2 on
bad input (reported on stderr in one message, with the target's own traceback where its
code raised).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from pytest_determinism.audit.checks import CheckResult, Subject

__all__ = ["EXIT_BAD_INPUT", "EXIT_FINDING", "EXIT_OK", "add_arguments", "audit"]

EXIT_OK = 0
EXIT_FINDING = 1
EXIT_BAD_INPUT = 2


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            shown = repr(text) if value is None else value
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {shown}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``audit`` subcommand's arguments."""
    parser.add_argument(
        "target",
        metavar="TARGET",
        help="package.module:callable or path/to/file.py:callable returning a model or "
        "(model, inputs)",
    )
    parser.add_argument(
        "--seed",
        type=_at_least(0),
        default=0,
        metavar="N",
        help="seed for building the model and every run",
    )
    parser.add_argument(
        "--runs",
        type=_at_least(2),
        default=2,
        metavar="N",
        help="reseeded runs compared by `repeatable`",
    )
    parser.add_argument("--json", metavar="PATH", help="write the verdicts as JSON to PATH")
    parser.add_argument(
        "--write-test",
        metavar="PATH",
        help="write a starter test module to PATH (never overwritten)",
    )


# The checks that compare two ways of computing one output.
_COMPARING = ("batch", "threads", "precision")


class _Stop(Exception):
    """Bad input: one message on stderr, exit status 2."""


def _innermost(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    frame = frames[-1]
    return f" (at {frame.filename}:{frame.lineno} in {frame.name})"


def _raised_in(name: str, exc: Exception) -> CheckResult:
    """A check during which the model raised: a finding (information for the checks that
    only inform), with the model's traceback."""
    from pytest_determinism.audit.checks import INFORMATION, CheckResult
    from pytest_determinism.audit.target import user_traceback

    first = str(exc).splitlines()[0] if str(exc) else ""
    return CheckResult(
        name,
        "info" if name in INFORMATION else "finding",
        f"the model raised {type(exc).__name__} during this check: {first[:120]}",
        {"error": f"{type(exc).__name__}: {exc}"},
        user_traceback(exc),
    )


def _validated(subject: Subject, describe: str, advice: str) -> None:
    """One forward pass: the model must take its inputs and give a comparable output."""
    import torch

    from pytest_determinism.audit.checks import call_model
    from pytest_determinism.golden.values import flatten
    from pytest_determinism.state.rng import seed_everything

    seed_everything(subject.seed)
    try:
        with torch.no_grad():
            output = call_model(subject.model, subject.inputs)
    except Exception as exc:
        raise _Stop(
            f"the model rejected its inputs ({describe}): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}{_innermost(exc)}; {advice}"
        ) from None
    try:
        flatten(output)
    except (TypeError, ValueError) as exc:
        raise _Stop(
            f"the model's output cannot be compared: {str(exc).removeprefix('golden_tensor: ')}"
        ) from None


def _checked_paths(arguments: argparse.Namespace) -> Path | None:
    """Refuse, before any check runs, output paths that cannot be written."""
    test_path = None if arguments.write_test is None else Path(arguments.write_test)
    if test_path is not None and test_path.exists():
        raise _Stop(f"{test_path}: already exists; the audit never overwrites a file")
    for given in (arguments.json, arguments.write_test):
        if given is not None and not Path(given).parent.is_dir():
            raise _Stop(f"{given}: no folder {str(Path(given).parent)!r} to write it in")
    return test_path


def _checks(subject: Subject, first: CheckResult, out: TextIO) -> list[CheckResult]:
    """Run the checks after ``first`` (the ``mode`` check's result) in order, printing each
    verdict as it comes; a check that cannot say more than an earlier one is skipped."""
    from pytest_determinism.audit import checks, information, kernels, report

    progress = report.Progress(out)
    progress.done(first)
    results = [first]
    steps: list[tuple[str, Callable[[], checks.CheckResult]]] = [
        ("repeatable", lambda: checks.repeatable(subject)),
        ("seed", lambda: checks.seed(subject, results[1])),
        ("kernels", lambda: kernels.kernels(subject)),
        ("batch", lambda: checks.batch(subject)),
        ("threads", lambda: information.threads(subject)),
        ("precision", lambda: information.precision(subject)),
    ]
    for name, step in steps:
        result = checks.random_outputs(name, results) if name in _COMPARING else None
        if result is None:
            progress.start(name)
            try:
                result = step()
            except Exception as exc:
                result = _raised_in(name, exc)
        results.append(result)
        progress.done(result)
    return results


def _run(arguments: argparse.Namespace, out: TextIO) -> int:
    try:
        import torch  # noqa: F401 - the audit runs torch models
    except ImportError:
        raise _Stop("the audit needs torch, which is not installed") from None
    from pytest_determinism.audit import checks, report
    from pytest_determinism.audit.starter import starter_source
    from pytest_determinism.audit.target import (
        RETURN_ADVICE,
        TargetError,
        describe_inputs,
        forget_path,
        load_target,
    )
    from pytest_determinism.state.evalmode import EvalModeGuard
    from pytest_determinism.state.snapshot import capture, restore

    test_path = _checked_paths(arguments)
    baseline = capture()
    guard = EvalModeGuard(strict=False, warn=False)
    target = None
    try:
        try:
            target = load_target(arguments.target, arguments.seed)
        except TargetError as exc:
            raise _Stop(str(exc)) from None
        subject = checks.Subject(
            target.model, target.inputs, arguments.seed, arguments.runs, os.getcwd()
        )
        # The model as built, before anything switches it.
        mode = checks.mode(subject)
        guard.switch_to_eval(target.model)
        inputs_text = describe_inputs(target.inputs)
        _validated(subject, inputs_text, RETURN_ADVICE.replace("from it", f"from {target.spec}"))
        model_name = type(target.model).__name__
        header = f"audit {target.spec}: {model_name}, inputs {inputs_text}"
        if target.inferred_from is not None:
            header += f" (inferred from {target.inferred_from})"
        out.write(header + "\n")
        results = _checks(subject, mode, out)
        found = any(r.verdict == "finding" and r.name not in checks.INFORMATION for r in results)
        status = EXIT_FINDING if found else EXIT_OK
        if arguments.json is not None:
            document = report.json_document(target.spec, model_name, inputs_text, results, status)
            try:
                report.write_json(Path(arguments.json), document)
            except OSError as exc:
                raise _Stop(
                    f"{arguments.json}: cannot be written ({exc.strerror or exc})"
                ) from None
        if test_path is not None:
            try:
                with test_path.open("x", encoding="utf-8") as file:
                    file.write(starter_source(target, arguments.seed, test_path))
            except OSError as exc:
                raise _Stop(f"{test_path}: cannot be written ({exc.strerror or exc})") from None
            out.write(
                f"wrote {test_path}: record its golden with `pytest {test_path} "
                f"--update-golden`, then run `pytest {test_path} --determinism`"
                + (" (the findings above show there too until they are fixed)" if found else "")
                + "\n"
            )
        out.write(report.summary_line(results, status))
        return status
    finally:
        guard.restore()
        restore(baseline)
        if target is not None:
            forget_path(target.path_entry)


def audit(arguments: argparse.Namespace, out: TextIO) -> int:
    """Run the audit the parsed ``arguments`` ask for, printing to ``out``; returns the exit
    status. Bad input is one message on stderr (exit status 2)."""
    try:
        return _run(arguments, out)
    except _Stop as exc:
        out.flush()
        sys.stderr.write(f"pytest_determinism: error: {exc}\n")
        return EXIT_BAD_INPUT
