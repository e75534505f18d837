"""The pytest hooks, options and fixtures of pytest-determinism.

Hooks stay thin: each reads its settings and delegates to a module with one job. Modules
that import NumPy, torch or hypothesis are imported inside the hooks that need them, so a
session without marked tests pays almost nothing for the plugin.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_determinism.errors import DeterminismWarning, StochasticModuleError
from pytest_determinism.options import (
    OptionError,
    SessionOptions,
    TestSettings,
    parse_runs,
    parse_seed,
    settings_from_markers,
)
from pytest_determinism.record import SessionRecord
from pytest_determinism.state import context
from pytest_determinism.xdist_hooks import WORKER_OUTPUT_KEY

if TYPE_CHECKING:
    from pytest_determinism.activation import ActiveTest
    from pytest_determinism.fixture import Determinism
    from pytest_determinism.golden.golden_tensor import GoldenTensor
    from pytest_determinism.golden.tolerances import Tolerance

MARKER = "deterministic"
MARKER_HELP = (
    "deterministic(seed=None, eval_mode=True, warn_only=False, tf32=False, threads=None, "
    "stochastic=False): seed every RNG, run torch modules in eval mode and deterministic "
    "kernels for this test, and restore everything afterwards"
)
_CUBLAS_VAR = "CUBLAS_WORKSPACE_CONFIG"


class PluginSession:
    """Options, tolerances and the session record, kept in ``config.stash``."""

    def __init__(self, options: SessionOptions, tolerances: dict[str, Tolerance]) -> None:
        self.options = options
        self.tolerances = tolerances
        self.record = SessionRecord()
        self.cublas_was_unset = False
        self.unused: list[Path] = []
        self.deleted: list[Path] = []
        self.worker_reports_complete = True
        self.filtered = False
        self.partial_modules: set[Path] = set()
        #: (node id, test file) of every collected test function
        self.collected: list[tuple[str, str]] = []
        self.outer_tolerances: Mapping[str, Tolerance] = {}


SESSION = pytest.StashKey[PluginSession]()
SETTINGS = pytest.StashKey[TestSettings]()
ACTIVE: pytest.StashKey[ActiveTest] = pytest.StashKey()
GOLDEN: pytest.StashKey[GoldenTensor] = pytest.StashKey()
# The golden file of a test that uses golden_tensor (None: none can be placed), worked out
# at collection for the case check and used again by the fixture.
GOLDEN_FILE: pytest.StashKey[Path | None] = pytest.StashKey()
CALL_PASSED = pytest.StashKey[bool]()
RUNNING_BODY = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the command-line options and ini keys."""
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
        "golden_dir",
        "root folder of golden files, relative to the rootdir "
        "(default: __golden__ beside each test file)",
    )
    parser.addini(
        "golden_tolerances",
        "default tolerances per dtype, one a line: 'bfloat16: rtol=2e-2 atol=1e-3'",
        type="linelist",
    )


def _session_options(config: pytest.Config) -> SessionOptions:
    seed_option = config.getoption("determinism_seed")
    seed_ini = config.getini("determinism_seed")
    if seed_option is not None:
        seed = parse_seed(seed_option, "--determinism-seed", text=True)
    elif seed_ini:
        seed = parse_seed(seed_ini, "ini determinism_seed", text=True)
    else:
        seed = 0
    runs_option = config.getoption("determinism_runs")
    runs_ini = config.getini("determinism_runs")
    if runs_option is not None:
        runs = parse_runs(runs_option, "--determinism-runs")
    elif runs_ini:
        runs = parse_runs(runs_ini, "ini determinism_runs")
    else:
        runs = 2
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
    return SessionOptions(
        seed=seed,
        runs=runs,
        ci_mode=bool(config.getoption("determinism")),
        update_golden=bool(config.getoption("update_golden")),
        golden_dir=golden_dir,
        report_path=Path(report).resolve() if report else None,
    )


def pytest_configure(config: pytest.Config) -> None:
    """Validate options, register the marker, prepare the session."""
    config.addinivalue_line("markers", MARKER_HELP)
    try:
        options = _session_options(config)
        tolerances = _tolerances(config.getini("golden_tolerances"))
    except OptionError as exc:
        raise pytest.UsageError(f"pytest-determinism: {exc}") from None
    plugin_session = PluginSession(options, tolerances)
    plugin_session.outer_tolerances = context.set_tolerance_overrides(tolerances)
    config.stash[SESSION] = plugin_session
    if _CUBLAS_VAR not in os.environ:
        # Only effective before CUDA starts, so it is set once, at configure time.
        os.environ[_CUBLAS_VAR] = ":4096:8"
        plugin_session.cublas_was_unset = True
    from pytest_determinism import hypothesis_hook

    hypothesis_hook.set_active(True)
    if options.ci_mode and "PYTHONHASHSEED" not in os.environ and not _is_xdist_worker(config):
        config.issue_config_time_warning(
            DeterminismWarning(
                "PYTHONHASHSEED is unset, so set and dict iteration order of str keys changes "
                "between runs; it cannot be changed inside a running interpreter: run "
                "PYTHONHASHSEED=0 pytest --determinism"
            ),
            stacklevel=2,
        )
    if config.pluginmanager.hasplugin("xdist"):
        from pytest_determinism.xdist_hooks import XdistHooks

        config.pluginmanager.register(XdistHooks(plugin_session), "determinism-xdist")


def _tolerances(lines: list[str]) -> dict[str, Tolerance]:
    if not lines:
        return {}
    from pytest_determinism.golden.tolerances import parse_tolerances

    try:
        return parse_tolerances(lines)
    except ValueError as exc:
        raise OptionError(f"ini golden_tolerances: {exc}") from None


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Undo the session-wide changes (in-process pytester runs share the process)."""
    plugin_session = config.stash.get(SESSION, None)
    if plugin_session is None:
        return
    if plugin_session.cublas_was_unset:
        os.environ.pop(_CUBLAS_VAR, None)
    context.set_tolerance_overrides(plugin_session.outer_tolerances)
    from pytest_determinism import hypothesis_hook

    hypothesis_hook.set_active(False)


def pytest_report_header(config: pytest.Config) -> str:
    """Seed, torch version (from metadata: no import), cuBLAS and hash-seed settings."""
    options = config.stash[SESSION].options
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    mode = f", CI mode: {options.runs} runs" if options.ci_mode else ""
    return (
        f"determinism: seed {options.seed}, torch {torch_version}, "
        f"{_CUBLAS_VAR}={os.environ.get(_CUBLAS_VAR, 'unset')}, "
        f"PYTHONHASHSEED={os.environ.get('PYTHONHASHSEED', 'unset')}{mode}"
    )


# --- collection -------------------------------------------------------------------------


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark tests that use the ``determinism`` fixture; remember each test function."""
    if "determinism" in getattr(item, "fixturenames", ()) and (
        item.get_closest_marker(MARKER) is None
    ):
        item.add_marker(MARKER)
    if isinstance(item, pytest.Function):
        # Golden paths are worked out at the end, and only where goldens exist: sanitising
        # and hashing every test's name here would cost every suite, golden or not.
        item.config.stash[SESSION].collected.append((item.nodeid, str(item.path)))


def _take_inventory(config: pytest.Config, plugin_session: PluginSession) -> None:
    """Map each collected test to its golden file, in modules that have a golden folder."""
    by_module: dict[str, list[str]] = {}
    for nodeid, test_file in plugin_session.collected:
        by_module.setdefault(test_file, []).append(nodeid)
    golden_dir = plugin_session.options.golden_dir
    inventory = plugin_session.record.inventory
    for test_file, nodeids in by_module.items():
        module = Path(test_file)
        # Every test of a module has its golden in the same folder: look there once.
        first = _golden_file(module, nodeids[0], config, golden_dir)
        if first is None or not first.parent.is_dir():
            continue
        whole_module = module.resolve() not in plugin_session.partial_modules
        for nodeid in nodeids:
            path = _golden_file(module, nodeid, config, golden_dir)
            if path is not None:
                inventory.add_collected(nodeid, path, whole_module=whole_module)


def pytest_collection(session: pytest.Session) -> None:
    """Note the modules that are collected only in part (node ids on the command line)."""
    plugin_session = session.config.stash[SESSION]
    for arg in session.config.args:
        if "::" in arg:
            path = arg.split("::", 1)[0]
            plugin_session.partial_modules.add(
                (session.config.invocation_params.dir / path).resolve()
            )


def pytest_collection_finish(session: pytest.Session) -> None:
    """Validate every selected test's marker arguments, naming each bad one."""
    plugin_session = session.config.stash[SESSION]
    if session.testsfailed:
        # Collection errors: some goldens' tests were never seen, so none may be deleted.
        plugin_session.filtered = True
    errors = []
    for item in session.items:
        markers = list(item.iter_markers(MARKER))
        if not markers:
            continue
        try:
            item.stash[SETTINGS] = settings_from_markers(
                ((m.args, m.kwargs) for m in markers), plugin_session.options.seed
            )
        except OptionError as exc:
            errors.append(f"{item.nodeid}: {exc}")
    if errors:
        raise pytest.UsageError(
            "pytest-determinism: bad @deterministic arguments:\n  " + "\n  ".join(errors)
        )
    # Every pytest-xdist worker collects the same tests: one of them warns for all.
    warn = getattr(session.config, "workerinput", {}).get("workerid", "gw0") == "gw0"
    _warn_about_case_clashes(session.items, plugin_session.options.golden_dir, warn=warn)


def _warn_about_case_clashes(
    items: list[pytest.Item], golden_dir: Path | None, *, warn: bool
) -> None:
    """Warn about tests whose goldens would be one file where letter case does not count.

    Each test's golden path is stashed on its item for the fixture either way.
    """
    from pytest_determinism.golden.paths import case_clashes

    paths = {}
    for item in items:
        if "golden_tensor" in getattr(item, "fixturenames", ()):
            path = _golden_file(Path(str(item.path)), item.nodeid, item.config, golden_dir)
            item.stash[GOLDEN_FILE] = path
            if path is not None:
                paths[item.nodeid] = path
    if not warn:
        return
    by_id = {item.nodeid: item for item in items}
    for clash in case_clashes(paths):
        for nodeid in clash:
            others = ", ".join(other for other in clash if other != nodeid)
            by_id[nodeid].warn(
                DeterminismWarning(
                    f"the golden file of {nodeid} differs only in letter case from that of "
                    f"{others} ({paths[nodeid].name}): on macOS and Windows they are one "
                    "file and overwrite each other; rename one of the tests"
                )
            )


def _invocation_id(item: pytest.Item) -> str:
    """The node id relative to where pytest was started, so a printed command runs as is."""
    file_part, _, rest = item.nodeid.partition("::")
    relative = os.path.relpath(item.config.rootpath / file_part, item.config.invocation_params.dir)
    return f"{Path(relative).as_posix()}::{rest}" if rest else Path(relative).as_posix()


def _golden_file(
    test_file: Path, nodeid: str, config: pytest.Config, golden_dir: Path | None
) -> Path | None:
    from pytest_determinism.golden.paths import golden_path

    try:
        return golden_path(
            test_file=test_file,
            # ``Class.test[param]``: the node id after the file, classes included.
            test_name=".".join(nodeid.split("::")[1:]),
            rootdir=config.rootpath,
            golden_dir=golden_dir,
        )
    except ValueError:
        # Only a symlinked folder could lead outside the golden root; such a test gets no
        # golden (the fixture says why) and is left out of the unused-golden inventory.
        return None


# --- running a test ---------------------------------------------------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """Before any fixture: capture the global state, apply the settings, seed."""
    settings = item.stash.get(SETTINGS, None)
    if settings is not None:
        from pytest_determinism.activation import ActiveTest

        active = ActiveTest(settings)
        item.stash[ACTIVE] = active
        active.start()
    return (yield)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run a marked test's body: reseeded right before it (after other plugins reseeded),
    repeated in CI mode, with torch's deterministic-algorithm errors explained."""
    active = pyfuncitem.stash.get(ACTIVE, None)
    if active is None or pyfuncitem.stash.get(RUNNING_BODY, False):
        return None
    plugin_session = pyfuncitem.config.stash[SESSION]
    pyfuncitem.stash[RUNNING_BODY] = True
    explained = None
    try:
        if plugin_session.options.ci_mode:
            from pytest_determinism.cimode import run_ci_mode

            run_ci_mode(
                pyfuncitem,
                active,
                pyfuncitem.stash.get(GOLDEN, None),
                plugin_session.options.runs,
                plugin_session.record,
            )
        else:
            active.before_body()
            pyfuncitem.ihook.pytest_pyfunc_call(pyfuncitem=pyfuncitem)
    except StochasticModuleError as exc:
        # Raised from the forward pre-hook; torch's and the hook's frames say nothing.
        explained = str(exc) + _location_in(exc, pyfuncitem)
    except RuntimeError as exc:
        from pytest_determinism.nondeterminism.torch_errors import explain_torch_error

        explained = explain_torch_error(exc)
        if explained is None:
            raise
        explained += _location_in(exc, pyfuncitem)
    finally:
        pyfuncitem.stash[RUNNING_BODY] = False
    if explained is not None:
        # Outside the except block, so the report is not chained to torch's traceback.
        pytest.fail(explained, pytrace=False)
    return True


def _location_in(exc: BaseException, item: pytest.Function) -> str:
    """Where in the test's own file the exception was raised, as a line to append."""
    test_file = str(item.path)
    where = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == test_file:
            where = f"{item.path.name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return f"\n  (raised at {where})" if where else ""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember the body's outcome: a failing test writes no golden."""
    report = yield
    if report.when == "call":
        item.stash[CALL_PASSED] = report.passed
    if (report.when == "call" or report.failed) and (
        SETTINGS in item.stash or GOLDEN in item.stash
    ):
        test = item.config.stash[SESSION].record.test(item.nodeid)
        test.outcome = report.outcome if report.when == "call" else f"{report.when} error"
        settings = item.stash.get(SETTINGS, None)
        if settings is not None:
            test.seed = settings.seed
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """After every fixture is torn down: restore the global state exactly."""
    try:
        return (yield)
    finally:
        active = item.stash.get(ACTIVE, None)
        if active is not None:
            del item.stash[ACTIVE]
            active.finish()
        _after_test(item)


def _after_test(item: pytest.Item) -> None:
    # A test that passed without checking anything leaves its golden file unused. The CI
    # report's key figures also go to JUnit XML, which reads the teardown report's
    # user_properties.
    record = item.config.stash[SESSION].record
    if item.stash.get(CALL_PASSED, False):
        # Its file counts as unused only if the test checked nothing (inventory.used).
        record.inventory.passed_unchecked.add(item.nodeid)
    test = record.tests.get(item.nodeid)
    if test is not None and (test.seed is not None or test.goldens):
        item.user_properties.extend(test.junit_properties())


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def determinism(request: pytest.FixtureRequest) -> Determinism:
    """The seed in force and seeded tools; requesting it marks the test ``deterministic``."""
    from pytest_determinism.fixture import Determinism

    active = request.node.stash[ACTIVE]
    return Determinism(active.settings.seed, active.guard)


@pytest.fixture
def golden_tensor(request: pytest.FixtureRequest) -> Iterator[GoldenTensor]:
    """Compare outputs with goldens stored in safetensors files (``--update-golden`` records)."""
    from pytest_determinism.golden.golden_tensor import GoldenTensor

    item = request.node
    plugin_session = request.config.stash[SESSION]
    options = plugin_session.options
    if GOLDEN_FILE in item.stash:
        path = item.stash[GOLDEN_FILE]
    else:
        # Requested dynamically (request.getfixturevalue): not seen at collection.
        path = _golden_file(Path(str(item.path)), item.nodeid, request.config, options.golden_dir)
    if path is None:
        pytest.fail(
            f"golden_tensor: no golden file can be placed for {item.nodeid}: it must be a "
            "test function whose golden path stays inside the golden root (check symbolic "
            "links in the test's folder and the ini option golden_dir)",
            pytrace=False,
        )
    from pytest_determinism.golden.paths import golden_root

    golden = GoldenTensor(
        path=path,
        root=golden_root(Path(str(item.path)), item.config.rootpath, options.golden_dir),
        test_id=item.nodeid,
        update=options.update_golden,
        tolerances=plugin_session.tolerances,
        seed=context.current_seed(),
        defer_failures=options.ci_mode and SETTINGS in item.stash,
        command_id=_invocation_id(item),
    )
    item.stash[GOLDEN] = golden
    yield golden
    result = golden.finish(test_passed=item.stash.get(CALL_PASSED, False))
    plugin_session.record.add_golden(item.nodeid, result)


# --- end of session ---------------------------------------------------------------------


def pytest_deselected(items: list[pytest.Item]) -> None:
    """Deselection (``-k``, ``-m``, ``--deselect``, ``--lf``, ...) means a filtered run."""
    if items:
        items[0].config.stash[SESSION].filtered = True


def _whole_suite_ran(session: pytest.Session, exitstatus: int) -> bool:
    config = session.config
    plugin_session = config.stash[SESSION]
    option = config.option
    return not (
        plugin_session.filtered
        or not plugin_session.worker_reports_complete
        or plugin_session.partial_modules
        or exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR)
        or session.shouldstop
        or session.shouldfail
        or getattr(option, "keyword", "")
        or getattr(option, "markexpr", "")
        or getattr(option, "deselect", None)
        or getattr(option, "lf", False)
        or getattr(option, "stepwise", False)
    )


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Send the record to the controller (xdist worker), or judge unused goldens and write
    the CI report (controller or single process)."""
    config = session.config
    plugin_session = config.stash.get(SESSION, None)
    if plugin_session is None:
        return
    record = plugin_session.record
    _take_inventory(config, plugin_session)
    torch = sys.modules.get("torch")
    if torch is not None and record.tests:
        record.devices.add(_device_description(torch))
    if _is_xdist_worker(config):
        config.workeroutput[WORKER_OUTPUT_KEY] = record.to_json()  # type: ignore[attr-defined]
        return
    plugin_session.unused = record.inventory.unused()
    if plugin_session.options.update_golden and _whole_suite_ran(session, exitstatus):
        for path in plugin_session.unused:
            path.unlink(missing_ok=True)
            plugin_session.deleted.append(path)
    if plugin_session.options.report_path is not None:
        from pytest_determinism.json_report import build_report, write_report

        write_report(
            plugin_session.options.report_path,
            build_report(record, plugin_session.options, exitstatus),
        )


def _device_description(torch: Any) -> str:
    if torch.cuda.is_initialized():
        index = torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads != 1 else ''})"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """One line for goldens, one for the CI mode, unused goldens listed with ``-v``."""
    plugin_session = config.stash.get(SESSION, None)
    if plugin_session is None:
        return
    from pytest_determinism.summary import summary_lines

    for line in summary_lines(plugin_session, verbose=config.getoption("verbose") > 0):
        terminalreporter.write_line(line)
