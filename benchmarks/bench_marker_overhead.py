"""What the ``deterministic`` marker costs per test, against the alternatives, in one run.

Run with ``python benchmarks/bench_marker_overhead.py`` (a few minutes; ``--quick`` for a
smoke run). It writes test modules of N trivial tests (2,000 by default) that all import
torch and NumPy at the top, so every configuration pays the same imports, and runs each
configuration as its own ``python -m pytest -q`` subprocess several times, interleaved:

- ``plain``: unmarked tests, ``-p no:determinism`` (the baseline);
- ``unmarked``: unmarked tests, plugin installed (what the plugin costs tests it ignores);
- ``marked``: ``pytestmark = pytest.mark.deterministic`` (every test seeded, torch switched
  to deterministic algorithms, everything restored afterwards);
- ``naive``: an autouse fixture doing what users write by hand: save the RNG states,
  ``random.seed``, ``np.random.seed``, ``torch.manual_seed``,
  ``torch.use_deterministic_algorithms(True)``, and undo it all after the test
  (``-p no:determinism``; inductor's config, which the first call of
  ``use_deterministic_algorithms`` imports, is imported at collection so that only the
  steady per-test cost is counted);
- ``randomly``: unmarked tests with pytest-randomly active (``-p no:determinism``).

A small plugin loaded with ``-p`` times the test loop (``pytest_runtestloop``) and the
collection inside each process, so interpreter start-up and imports do not blur the
per-test figure; the subprocess's wall and CPU time are shown too. Per-test overhead is
(median loop time - the plain median) / N. The goal for ``marked`` is under 1 ms a test.

With ``--profile`` (and always when the goal is missed) the marked run is repeated under
cProfile and the functions of ``pytest_determinism`` are listed with their time per test.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

GOAL_US = 1000.0

_HEADER = """\
import random

import numpy as np
import pytest
import torch
"""

_NAIVE_FIXTURE = '''
import torch._inductor.config  # noqa: F401  (see the benchmark's docstring)


@pytest.fixture(autouse=True)
def _naive_determinism():
    """What users write by hand: seed everything, deterministic kernels, undo it all."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(was_deterministic)
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch_state)
'''

_TIMER_PLUGIN = '''
"""Times collection and the test loop inside the pytest process."""
import json
import os
import time

import pytest

_times = {}


@pytest.hookimpl(wrapper=True)
def pytest_collection(session):
    start = time.perf_counter()
    try:
        return (yield)
    finally:
        _times["collection"] = time.perf_counter() - start


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session):
    start = time.perf_counter()
    cpu = time.process_time()
    try:
        return (yield)
    finally:
        _times["loop"] = time.perf_counter() - start
        _times["loop_cpu"] = time.process_time() - cpu
        _times["tests"] = session.testscollected
        _times["failed"] = session.testsfailed
        with open(os.environ["BENCH_TIMES_OUT"], "w") as handle:
            json.dump(_times, handle)
'''

# name: (module kind, extra pytest arguments)
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "plain": ("plain", ["-p", "no:determinism", "-p", "no:randomly"]),
    "unmarked": ("plain", ["-p", "no:randomly"]),
    "marked": ("marked", ["-p", "no:randomly"]),
    "naive": ("naive", ["-p", "no:determinism", "-p", "no:randomly"]),
    "randomly": ("plain", ["-p", "no:determinism"]),
}
COMMON = ["-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "_bench_timer"]


def write_modules(folder: Path, tests: int) -> None:
    """One module per kind of run, plus the timing plugin."""
    body = "\n\n".join(f"def test_{i}():\n    pass" for i in range(tests))
    modules = {
        "plain": "",
        "marked": "\npytestmark = pytest.mark.deterministic\n",
        "naive": _NAIVE_FIXTURE,
    }
    for kind, extra in modules.items():
        (folder / f"test_{kind}.py").write_text(f"{_HEADER}{extra}\n\n{body}\n")
    (folder / "_bench_timer.py").write_text(textwrap.dedent(_TIMER_PLUGIN))
    (folder / "pytest.ini").write_text("[pytest]\n")


def run_config(folder: Path, name: str) -> dict[str, float]:
    """One pytest subprocess of configuration ``name``: in-process and outside times."""
    kind, extra = CONFIGS[name]
    out = folder / f"times-{name}.json"
    # Bytecode caching on, as users have it (some sandboxes set PYTHONDONTWRITEBYTECODE).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env |= {"BENCH_TIMES_OUT": str(out), "PYTHONPATH": str(folder)}
    env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
    command = [sys.executable, "-m", "pytest", f"test_{kind}.py", *COMMON, *extra]
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = process.communicate()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{output.decode()[-3000:]}")
    times = json.loads(out.read_text())
    times["wall"] = wall
    return times


class _LoopProfiler:
    """Profiles only ``pytest_runtestloop``: imports and collection stay out of it."""

    def __init__(self) -> None:
        self.profiler = cProfile.Profile()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> object:
        self.profiler.enable()
        try:
            return (yield)
        finally:
            self.profiler.disable()


def profile_marked(folder: Path, tests: int, top: int) -> None:
    """The marked run in this process, its test loop under cProfile: where the time goes."""
    os.environ["BENCH_TIMES_OUT"] = str(folder / "times-profile.json")
    sys.path.insert(0, str(folder))
    old_cwd = os.getcwd()
    os.chdir(folder)
    loop = _LoopProfiler()
    try:
        status = pytest.main(["test_marked.py", *COMMON, "-p", "no:randomly"], plugins=[loop])
    finally:
        os.chdir(old_cwd)
    if status != 0:
        raise SystemExit(f"the profiled run failed ({status})")
    entries = pstats.Stats(loop.profiler).stats.items()  # type: ignore[attr-defined]
    ours = []
    everything = []
    for (filename, line, function), (_, calls, tottime, cumtime, _) in entries:
        if "pytest_determinism" in filename:
            short = filename.split("pytest_determinism/")[-1]
            ours.append((cumtime, tottime, calls, f"{short}:{line}({function})"))
        everything.append((tottime, calls, f"{Path(filename).name}:{line}({function})"))
    per = 1e6 / tests
    print(f"\ncProfile of the marked run's test loop ({tests} tests). cProfile inflates")
    print("every call: compare the rows with each other, not with the timings above.")
    print("pytest_determinism's functions by cumulative time:")
    print(f"  {'cum us/test':>12}{'own us/test':>12}{'calls':>8}  function")
    for cumtime, tottime, calls, where in sorted(ours, reverse=True)[:top]:
        print(f"  {cumtime * per:>12.1f}{tottime * per:>12.1f}{calls:>8}  {where}")
    print("every function (pytest, NumPy, torch included) by own time:")
    print(f"  {'own us/test':>12}{'calls':>8}  function")
    for tottime, calls, where in sorted(everything, reverse=True)[:top]:
        print(f"  {tottime * per:>12.1f}{calls:>8}  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=2000, help="tests per module")
    parser.add_argument("--repeats", type=int, default=5, help="runs per configuration")
    parser.add_argument("--profile", action="store_true", help="always profile the marked run")
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 tests, 2 runs")
    args = parser.parse_args()
    tests, repeats = (300, 2) if args.quick else (args.tests, args.repeats)

    with tempfile.TemporaryDirectory(prefix="bench-marker-") as tmp:
        folder = Path(tmp)
        write_modules(folder, tests)
        names = list(CONFIGS)
        for name in names:  # warm-up: bytecode caches, the file system
            run_config(folder, name)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for i in range(repeats):
            order = names if i % 2 == 0 else list(reversed(names))
            for name in order:
                times = run_config(folder, name)
                if times["tests"] != tests or times["failed"]:
                    raise SystemExit(f"{name}: {times}")
                results[name].append(times)
                print(f"  run {i + 1}/{repeats} {name:<9} loop {times['loop']:.3f} s", flush=True)

        def median(name: str, key: str) -> float:
            return statistics.median(t[key] for t in results[name])

        base = {key: median("plain", key) for key in ("loop", "loop_cpu", "collection")}
        print(f"\n{tests} trivial tests per run, {repeats} runs per configuration, interleaved;")
        print("medians. loop: pytest_runtestloop inside the process (wall and CPU); collect:")
        print("pytest_collection; wall: the whole subprocess. Per test: minus plain, / tests.")
        print(
            f"  {'config':<9}{'loop s':>8}{'CPU s':>7}{'collect s':>10}{'wall s':>8}"
            f"{'loop us/test':>13}{'CPU us/test':>12}{'collect us/test':>16}{'x plain':>8}"
        )
        over: dict[str, dict[str, float]] = {}
        for name in names:
            got = {key: median(name, key) for key in ("loop", "loop_cpu", "collection", "wall")}
            over[name] = {k: (got[k] - base[k]) / tests * 1e6 for k in base}
            print(
                f"  {name:<9}{got['loop']:>8.3f}{got['loop_cpu']:>7.3f}{got['collection']:>10.3f}"
                f"{got['wall']:>8.2f}{over[name]['loop']:>13.1f}{over[name]['loop_cpu']:>12.1f}"
                f"{over[name]['collection']:>16.1f}{got['loop'] / base['loop']:>8.2f}"
            )
        marked, naive = over["marked"], over["naive"]
        for key, label in (("loop", "wall"), ("loop_cpu", "CPU")):
            verdict = "met" if marked[key] < GOAL_US else "NOT met"
            ratio = f"{marked[key] / naive[key]:.2f}x" if naive[key] > 0 else "n/a"
            print(
                f"marked ({label}): {marked[key]:.0f} us/test over plain, "
                f"{marked[key] - over['unmarked'][key]:.0f} over unmarked with the plugin; "
                f"goal < {GOAL_US:.0f} us: {verdict}; naive fixture {naive[key]:.0f} us/test, "
                f"marked / naive {ratio}"
            )
        if args.profile or min(marked["loop"], marked["loop_cpu"]) >= GOAL_US:
            profile_marked(folder, tests, top=25)


if __name__ == "__main__":
    main()
