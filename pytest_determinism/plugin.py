"""The pytest hooks, options and fixtures of pytest-determinism.

Hooks stay thin: each reads its settings and delegates to a module with one job. Modules
that import NumPy, torch or hypothesis are imported inside the hooks that need them, so a
session without marked tests pays almost nothing for the plugin.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_determinism.errors import DeterminismWarning
from pytest_determinism.golden.environment import device_description, torch_version
from pytest_determinism.golden_traces import ORIGIN_NOTE, TraceRecording
from pytest_determinism.inventory import delete_unused, take_inventory
from pytest_determinism.options import (
    OptionError,
    TestSettings,
    add_options,
    parse_golden_tolerances,
    session_options,
    settings_from_markers,
)
from pytest_determinism.paths import golden_file, invocation_id, warn_about_case_clashes
from pytest_determinism.session import PluginSession
from pytest_determinism.state import context, cublas
from pytest_determinism.xdist_hooks import WORKER_OUTPUT_KEY

if TYPE_CHECKING:
    from pytest_determinism.activation import ActiveTest
    from pytest_determinism.fixture import Determinism
    from pytest_determinism.golden.golden_tensor import GoldenTensor

MARKER = "deterministic"
MARKER_HELP = (
    "deterministic(seed=None, eval_mode=True, warn_only=False, tf32=False, threads=None, "
    "stochastic=False): seed every RNG, run torch modules in eval mode and deterministic "
    "kernels for this test, and restore everything afterwards"
)


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
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    """Validate options, register the marker, prepare the session."""
    config.addinivalue_line("markers", MARKER_HELP)
    try:
        options = session_options(config)
        tolerances = parse_golden_tolerances(config.getini("golden_tolerances"))
    except OptionError as exc:
        raise pytest.UsageError(f"pytest-determinism: {exc}") from None
    plugin_session = PluginSession(options=options, tolerances=tolerances)
    plugin_session.outer_tolerances = context.set_tolerance_overrides(tolerances)
    config.stash[SESSION] = plugin_session
    plugin_session.cublas_was_unset = cublas.set_if_unset()
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
    if options.update_golden and options.golden_trace:
        config.pluginmanager.register(TraceRecording(), "determinism-trace")
    if config.pluginmanager.hasplugin("xdist"):
        from pytest_determinism.xdist_hooks import XdistHooks

        config.pluginmanager.register(XdistHooks(plugin_session), "determinism-xdist")


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Undo the session-wide changes (in-process pytester runs share the process)."""
    plugin_session = config.stash.get(SESSION, None)
    if plugin_session is None:
        return
    if plugin_session.cublas_was_unset:
        cublas.unset()
    context.set_tolerance_overrides(plugin_session.outer_tolerances)
    from pytest_determinism import hypothesis_hook

    hypothesis_hook.set_active(False)


def pytest_report_header(config: pytest.Config) -> str:
    """Seed, pinned thread count, torch version (from metadata: no import), cuBLAS and
    hash-seed settings."""
    options = config.stash[SESSION].options
    torch = torch_version() or "not installed"
    mode = f", CI mode: {options.runs} runs" if options.ci_mode else ""
    threads = f", threads {options.threads}" if options.threads is not None else ""
    return (
        f"determinism: seed {options.seed}{threads}, torch {torch}, "
        f"{cublas.CUBLAS_WORKSPACE_CONFIG}="
        f"{os.environ.get(cublas.CUBLAS_WORKSPACE_CONFIG, 'unset')}, "
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
                ((m.args, m.kwargs) for m in markers),
                plugin_session.options.seed,
                plugin_session.options.threads,
            )
        except OptionError as exc:
            errors.append(f"{item.nodeid}: {exc}")
    if errors:
        raise pytest.UsageError(
            "pytest-determinism: bad @deterministic arguments:\n  " + "\n  ".join(errors)
        )
    # Each test's golden path is stashed for the fixture; every pytest-xdist worker
    # collects the same tests, so one of them warns for all.
    golden_dir = plugin_session.options.golden_dir
    paths = {}
    for item in session.items:
        if "golden_tensor" in getattr(item, "fixturenames", ()):
            path = golden_file(Path(str(item.path)), item.nodeid, item.config.rootpath, golden_dir)
            item.stash[GOLDEN_FILE] = path
            if path is not None:
                paths[item.nodeid] = path
    if getattr(session.config, "workerinput", {}).get("workerid", "gw0") == "gw0":
        warn_about_case_clashes({item.nodeid: item for item in session.items}, paths)


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
    from pytest_determinism.body import run_body

    pyfuncitem.stash[RUNNING_BODY] = True
    try:
        run_body(
            pyfuncitem,
            active,
            pyfuncitem.stash.get(GOLDEN, None),
            pyfuncitem.config.stash[SESSION],
        )
    finally:
        pyfuncitem.stash[RUNNING_BODY] = False
    return True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember the body's outcome: a failing test writes no golden."""
    report = yield
    if report.when == "call":
        item.stash[CALL_PASSED] = report.passed
        active = item.stash.get(ACTIVE, None)
        if report.failed and active is not None:
            from pytest_determinism.report_notes import add_note

            add_note(report, "eval mode", active.guard.failure_note())
            add_note(report, "golden trace", item.stash.get(ORIGIN_NOTE, None))
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
        path = golden_file(
            Path(str(item.path)), item.nodeid, request.config.rootpath, options.golden_dir
        )
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
        command_id=invocation_id(item),
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


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Send the record to the controller (xdist worker), or judge unused goldens and write
    the CI report (controller or single process)."""
    config = session.config
    plugin_session = config.stash.get(SESSION, None)
    if plugin_session is None:
        return
    record = plugin_session.record
    take_inventory(
        record.inventory,
        plugin_session.collected,
        rootdir=config.rootpath,
        golden_dir=plugin_session.options.golden_dir,
        partial_modules=plugin_session.partial_modules,
    )
    torch = sys.modules.get("torch")
    if torch is not None and record.tests:
        record.devices.add(device_description(torch))
    if _is_xdist_worker(config):
        config.workeroutput[WORKER_OUTPUT_KEY] = record.to_json()  # type: ignore[attr-defined]
        return
    delete_unused(session, plugin_session, exitstatus)
    if plugin_session.options.report_path is not None:
        from pytest_determinism.json_report import build_report, write_report

        write_report(
            plugin_session.options.report_path,
            build_report(record, plugin_session.options, exitstatus),
        )


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """One line for goldens, one for the CI mode, unused goldens listed with ``-v``."""
    plugin_session = config.stash.get(SESSION, None)
    if plugin_session is None:
        return
    from pytest_determinism.summary import summary_lines

    for line in summary_lines(plugin_session, verbose=config.getoption("verbose") > 0):
        terminalreporter.write_line(line)
