"""Command-line, ini and marker arguments, parsed and validated into frozen settings.

Everything a user can get wrong is checked here, once, with a message that names the test
or option and says what to write instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pytest

    from pytest_determinism.golden.tolerances import Tolerance

__all__ = [
    "MARKER_ARGUMENTS",
    "EvalMode",
    "OptionError",
    "SessionOptions",
    "TestSettings",
    "add_options",
    "parse_bool",
    "parse_golden_tolerances",
    "parse_runs",
    "parse_seed",
    "parse_threads",
    "session_options",
    "settings_from_markers",
]

EvalMode = Literal[True, False, "strict"]

#: Marker keyword arguments and what each accepts, for error messages and the docs.
MARKER_ARGUMENTS: Mapping[str, str] = {
    "seed": "an int from 0 to 2**32 - 1",
    "eval_mode": 'True, False or "strict"',
    "warn_only": "True or False",
    "tf32": "True or False",
    "threads": "a positive int or None",
    "stochastic": "True or False",
}

# NumPy's legacy global RNG takes seeds below 2**32, and every seeded RNG gets the same one.
SEED_LIMIT = 2**32


class OptionError(ValueError):
    """A bad option, ini value or marker argument; the message says what to write."""


def parse_seed(value: object, what: str, *, text: bool = False) -> int:
    """Return ``value`` as a seed, or raise ``OptionError`` naming ``what``.

    ``text``: the value comes from the command line or an ini file and may be a string.
    """
    if text and isinstance(value, str):
        stripped = value.strip()
        try:
            value = int(stripped, 0)
        except ValueError:
            raise OptionError(f"{what} must be an integer seed, got {stripped!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    if not 0 <= value < SEED_LIMIT:
        raise OptionError(f"{what} must be between 0 and 2**32 - 1, got {value}")
    return value


def parse_runs(value: object, what: str) -> int:
    """Return ``value`` as a run count of at least 1, or raise ``OptionError``."""
    return _positive_count(value, what, "of runs", "1 (the runs compared)")


def parse_threads(value: object, what: str) -> int:
    """Return ``value`` as a CPU thread count of at least 1, or raise ``OptionError``."""
    return _positive_count(value, what, "of CPU threads, e.g. 1,", "1 thread")


def _positive_count(value: object, what: str, unit: str, least: str) -> int:
    try:
        count = int(str(value).strip(), 10)
    except ValueError:
        raise OptionError(f"{what} must be a whole number {unit} got {value!r}") from None
    if count < 1:
        raise OptionError(f"{what} must be at least {least}, got {count}")
    return count


@dataclass(frozen=True)
class SessionOptions:
    """The session-wide options in force, validated."""

    seed: int = 0
    runs: int = 2
    ci_mode: bool = False
    update_golden: bool = False
    golden_dir: Path | None = None
    report_path: Path | None = None
    #: the CPU thread count of every marked test whose marker sets none; None: left alone
    threads: int | None = None
    #: whether --update-golden records the golden trace of module calls (ini golden_trace)
    golden_trace: bool = True


def add_options(parser: pytest.Parser) -> None:
    """Register the command-line options and ini keys (``pytest_addoption``)."""
    group = parser.getgroup("determinism", "nondeterminism and numerical regressions")
    group.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="record golden_tensor checks instead of comparing them; write only changed files",
    )
    group.addoption(
        "--determinism",
        action="store_true",
        default=False,
        help="CI mode: run each deterministic test repeatedly and once under another "
        "forward-pass seed, and report the first module whose output diverged",
    )
    group.addoption(
        "--determinism-runs",
        action="store",
        default=None,
        metavar="N",
        help="runs per test under --determinism (default 2; ini determinism_runs)",
    )
    group.addoption(
        "--determinism-seed",
        action="store",
        default=None,
        metavar="N",
        help="session seed for deterministic tests (default 0; ini determinism_seed)",
    )
    group.addoption(
        "--determinism-threads",
        action="store",
        default=None,
        metavar="N",
        help="CPU thread count (torch.set_num_threads) of every deterministic test whose "
        "marker sets no threads=; makes goldens portable across machines and xdist "
        "(default: left alone; ini determinism_threads)",
    )
    group.addoption(
        "--determinism-report",
        action="store",
        default=None,
        metavar="PATH",
        help="write a JSON report per test (outcome, seed, runs, golden differences, "
        "nondeterminism verdict) to PATH",
    )
    parser.addini("determinism_seed", "session seed for deterministic tests (default 0)")
    parser.addini("determinism_runs", "runs per test under --determinism (default 2)")
    parser.addini(
        "determinism_threads",
        "CPU thread count of every deterministic test whose marker sets none (default: left alone)",
    )
    parser.addini(
        "golden_dir",
        "root folder of golden files, relative to the rootdir "
        "(default: __golden__ beside each test file)",
    )
    parser.addini(
        "golden_tolerances",
        "default tolerances per dtype, one a line: 'bfloat16: rtol=2e-2 atol=1e-3'",
        type="linelist",
    )
    parser.addini(
        "golden_trace",
        "record the module calls of each golden test in its golden file under "
        "--update-golden, to say where a later difference started (true or false; "
        "default true)",
    )


def parse_bool(value: object, what: str) -> bool:
    """``true``/``false`` (also ``yes``/``no``, ``on``/``off``, ``1``/``0``), any case, or
    ``OptionError`` naming ``what``."""
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise OptionError(f"{what} must be true or false, got {value!r}")


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def session_options(config: pytest.Config) -> SessionOptions:
    """The session's options from the command line and the ini file (command line wins)."""
    seed = _option_or_ini(
        config, "determinism_seed", lambda v, what: parse_seed(v, what, text=True)
    )
    runs = _option_or_ini(config, "determinism_runs", parse_runs)
    threads = _option_or_ini(config, "determinism_threads", parse_threads)
    golden_dir_ini = str(config.getini("golden_dir") or "").strip()
    golden_dir = None
    if golden_dir_ini:
        golden_dir = (config.rootpath / golden_dir_ini).resolve()
        if not golden_dir.is_relative_to(config.rootpath.resolve()):
            raise OptionError(
                f"ini golden_dir must be a folder inside the rootdir {config.rootpath}, "
                f"got {golden_dir_ini!r}"
            )
    report = config.getoption("determinism_report")
    trace_ini = config.getini("golden_trace")
    return SessionOptions(
        seed=0 if seed is None else seed,
        runs=2 if runs is None else runs,
        ci_mode=bool(config.getoption("determinism")),
        update_golden=bool(config.getoption("update_golden")),
        golden_dir=golden_dir,
        report_path=Path(report).resolve() if report else None,
        threads=threads,
        golden_trace=parse_bool(trace_ini, "ini golden_trace") if trace_ini else True,
    )


def _option_or_ini(
    config: pytest.Config, name: str, parse: Callable[[object, str], int]
) -> int | None:
    """The option ``--name`` (dashes) parsed, else the ini key ``name``, else ``None``; the
    error names whichever was given."""
    option = config.getoption(name)
    if option is not None:
        return parse(option, "--" + name.replace("_", "-"))
    ini = config.getini(name)
    return parse(ini, f"ini {name}") if ini else None


def parse_golden_tolerances(lines: list[str]) -> dict[str, Tolerance]:
    """The ini option ``golden_tolerances`` as a table per dtype, or ``OptionError``."""
    if not lines:
        return {}
    # Imported here: the tolerance table imports NumPy, which an unused plugin must not cost.
    from pytest_determinism.golden.tolerances import parse_tolerances

    try:
        return parse_tolerances(lines)
    except ValueError as exc:
        raise OptionError(f"ini golden_tolerances: {exc}") from None


@dataclass(frozen=True)
class TestSettings:
    """What one marked test asked for, with the session's defaults filled in."""

    seed: int
    eval_mode: EvalMode = True
    warn_only: bool = False
    tf32: bool = False
    threads: int | None = None
    stochastic: bool = False


def _bool_argument(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise OptionError(f"{name} must be True or False, got {value!r}")
    return value


def settings_from_markers(
    kwargs_closest_first: Iterable[tuple[tuple[Any, ...], Mapping[str, Any]]],
    session_seed: int,
    session_threads: int | None = None,
) -> TestSettings:
    """Merge marker arguments (closest marker wins) into validated ``TestSettings``.

    ``session_threads`` (``--determinism-threads``) applies where no marker sets ``threads``.

    ``kwargs_closest_first`` holds each ``deterministic`` marker's positional and keyword
    arguments, the test's own marker first, then its class's, then its module's.
    """
    merged: dict[str, Any] = {}
    for args, kwargs in kwargs_closest_first:
        if args:
            raise OptionError(
                f"deterministic takes keyword arguments only, got positional {args!r}; "
                f"write e.g. @deterministic(seed={args[0]!r})"
            )
        for key, value in kwargs.items():
            if key not in MARKER_ARGUMENTS:
                known = ", ".join(MARKER_ARGUMENTS)
                raise OptionError(f"deterministic got an unknown argument {key!r}; known: {known}")
            merged.setdefault(key, value)

    seed = session_seed if merged.get("seed") is None else parse_seed(merged["seed"], "seed")
    eval_mode = merged.get("eval_mode", True)
    if not (eval_mode is True or eval_mode is False or eval_mode == "strict"):
        raise OptionError(f'eval_mode must be True, False or "strict", got {eval_mode!r}')
    threads = merged.get("threads")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise OptionError(f"threads must be a positive int or None, got {threads!r}")
    if threads is None:
        threads = session_threads
    stochastic_default = eval_mode is False
    return TestSettings(
        seed=seed,
        eval_mode=eval_mode,
        warn_only=_bool_argument("warn_only", merged.get("warn_only", False)),
        tf32=_bool_argument("tf32", merged.get("tf32", False)),
        threads=threads,
        stochastic=_bool_argument("stochastic", merged.get("stochastic", stochastic_default)),
    )
