"""What an installed but unused pytest-determinism costs a pytest run at start-up.

Run with ``python benchmarks/bench_startup.py`` (about a minute; ``--quick`` for a smoke
run). In one run, interleaved, it times ``python -m pytest --co -q`` on a tiny suite of
plain tests (no marker, no fixture of the plugin) in a temporary folder:

- with the plugin installed (loaded through its ``pytest11`` entry point), and
- with ``-p no:determinism`` (the module is never imported),

each many times, and prints the medians (wall clock, and the child's CPU time from
``wait4``, the steadier figure on a busy machine) and their ratio; the goal is within 5%.

Three comparisons: the strict one, with ``-p no:randomly -p no:hypothesispytest`` in both
runs (pytest-randomly imports NumPy, which would hide a NumPy import of ours, and
hypothesis's own pytest plugin imports all of hypothesis at the end of every session, a
constant that drowns ours), plus a third run there, ``-p no:determinism`` with a stub
plugin that only imports NumPy, to tell the plugin's own cost from NumPy's; one with every
installed plugin; and the strict one without a bytecode cache. Bytecode caching is on
otherwise, as users have it (into a folder of the run): this project's sandbox sets
``PYTHONDONTWRITEBYTECODE=1``, and then every run compiles every module and pytest
assertion-rewrites every plugin module, ours included, from source.

Then it checks what loading the plugin imports: in a fresh interpreter (``import pytest``,
then ``import pytest_determinism.plugin``) and at the end of a real ``pytest --co`` run,
neither torch, NumPy nor hypothesis may be loaded because of the plugin (the exit status
is 1 if one is). Finally ``python -X importtime`` shows what the plugin imports during a
real ``pytest --co`` run, its own modules and the packages they pull in.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HEAVY = ("torch", "numpy", "hypothesis", "safetensors")
FORBIDDEN = ("torch", "numpy", "hypothesis")
GOAL = 1.05
# pytest-randomly imports NumPy and hypothesis's pytest plugin imports all of hypothesis
# (about 2.5 s here, at terminal-summary time, whoever is installed): both would hide or
# drown the plugin's own cost, so the strict comparison leaves them out of both runs.
STRICT = ["-p", "no:randomly", "-p", "no:hypothesispytest"]

_MODULES_PLUGIN = '''
"""Writes which heavy modules are loaded at the end of the session."""
import json
import os
import sys


def pytest_sessionfinish(session):
    names = ("torch", "numpy", "hypothesis", "safetensors")
    loaded = [name for name in names if name in sys.modules]
    with open(os.environ["BENCH_MODULES_OUT"], "w") as handle:
        json.dump(loaded, handle)
'''


def cached_env(folder: Path) -> dict[str, str]:
    """The environment for the runs: bytecode caching on, as users have it.

    Some environments (this project's sandbox) set ``PYTHONDONTWRITEBYTECODE=1``; then every
    run compiles every module, and pytest rewrites the asserts of every plugin module (ours
    included) from source each time. The caches go to a folder of the run, not the repo.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
    return env


def make_suite(folder: Path, files: int = 3, tests: int = 5) -> None:
    """A tiny suite of plain tests: nothing in it touches the plugin."""
    (folder / "pytest.ini").write_text("[pytest]\n")
    for f in range(files):
        body = "\n\n".join(f"def test_{t}():\n    assert {t} + 1 > {t}" for t in range(tests))
        (folder / f"test_plain_{f}.py").write_text(body + "\n")
    (folder / "_bench_modules.py").write_text(textwrap.dedent(_MODULES_PLUGIN))
    (folder / "_bench_numpy.py").write_text('"""Only imports NumPy."""\nimport numpy  # noqa\n')


def run_once(folder: Path, extra: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one ``pytest --co -q`` in a fresh interpreter."""
    command = [sys.executable, "-m", "pytest", "--co", "-q", *extra]
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        stderr = process.stderr.read().decode() if process.stderr else ""
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{stderr}")
    if process.stderr:
        process.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime


def compare(
    folder: Path,
    repeats: int,
    common: list[str],
    label: str,
    env: dict[str, str],
    numpy_baseline: bool = False,
) -> dict[str, float]:
    """Interleaved runs with and without the plugin; medians and ratios.

    ``numpy_baseline`` adds a third run: ``-p no:determinism`` plus a stub plugin that only
    imports NumPy, to tell the plugin's own cost from that of the NumPy it imports.
    """
    configs = {"installed": common, "off": [*common, "-p", "no:determinism"]}
    if numpy_baseline:
        configs["off+numpy"] = [*configs["off"], "-p", "_bench_numpy"]
        env = {**env, "PYTHONPATH": str(folder)}
    labels = {
        "installed": "plugin installed",
        "off": "-p no:determinism",
        "off+numpy": "-p no:determinism, numpy imported",
    }
    for extra in configs.values():  # warm the file system and bytecode caches
        run_once(folder, extra, env)
    walls: dict[str, list[float]] = {name: [] for name in configs}
    cpus: dict[str, list[float]] = {name: [] for name in configs}
    for i in range(repeats):
        order = list(configs) if i % 2 == 0 else list(reversed(configs))
        for name in order:
            wall, cpu = run_once(folder, configs[name], env)
            walls[name].append(wall)
            cpus[name].append(cpu)
    result: dict[str, float] = {}
    print(f"\n{label} ({repeats} runs each, interleaved; median)")
    print(f"  {'pytest --co -q':<38}{'wall s':>9}{'CPU s':>9}")
    for name in configs:
        result[f"wall_{name}"] = statistics.median(walls[name])
        result[f"cpu_{name}"] = statistics.median(cpus[name])
        print(f"  {labels[name]:<38}{result[f'wall_{name}']:>9.3f}{result[f'cpu_{name}']:>9.3f}")
    wall_ratio = result["wall_ratio"] = result["wall_installed"] / result["wall_off"]
    cpu_ratio = result["cpu_ratio"] = result["cpu_installed"] / result["cpu_off"]
    verdict = "/".join("met" if r <= GOAL else "NOT met" for r in (wall_ratio, cpu_ratio))
    print(
        f"  {'ratio installed / off':<38}{wall_ratio:>9.3f}{cpu_ratio:>9.3f}"
        f"   goal <= {GOAL:.2f}: {verdict}"
    )
    if numpy_baseline:
        wall = result["wall_installed"] / result["wall_off+numpy"]
        cpu = result["cpu_installed"] / result["cpu_off+numpy"]
        print(f"  {'ratio installed / (off, numpy imported)':<38}{wall:>9.3f}{cpu:>9.3f}")
    return result


def fresh_interpreter_imports(folder: Path) -> tuple[list[str], float]:
    """Heavy modules imported by ``import pytest_determinism.plugin`` after ``import pytest``,
    and that import's cumulative ``-X importtime`` in ms."""
    code = (
        "import sys, json, pytest\n"
        f"heavy = {HEAVY!r}\n"
        "before = {m for m in heavy if m in sys.modules}\n"
        "import pytest_determinism, pytest_determinism.plugin\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules and m not in before)))\n"
    )
    for _ in range(2):  # the first run fills the bytecode cache
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code],
            env=cached_env(folder),
            capture_output=True,
            text=True,
            check=True,
        )
    nodes = _import_tree(done.stderr)
    ms = sum(n[2] for n in nodes if n[0] in ("pytest_determinism", "pytest_determinism.plugin"))
    return list(json.loads(done.stdout)), ms / 1e3


def session_imports(folder: Path, extra: list[str]) -> list[str]:
    """Heavy modules loaded at the end of a ``pytest --co`` run of the plain suite."""
    out = folder / "modules.json"
    env = {**cached_env(folder), "BENCH_MODULES_OUT": str(out), "PYTHONPATH": str(folder)}
    subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "-q", "-p", "_bench_modules", *extra],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return list(json.loads(out.read_text()))


def _import_tree(stderr: str) -> list[tuple[str, int, int, list[int]]]:
    """``-X importtime`` lines as ``(name, self us, cumulative us, children)`` nodes."""
    nodes: list[tuple[str, int, int, list[int]]] = []
    pending: list[tuple[int, int]] = []  # (depth, node index) not yet given a parent
    for line in stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        own_text, total_text, name_field = line[len("import time:") :].split("|")
        try:
            own, total = int(own_text), int(total_text)
        except ValueError:
            continue
        name = name_field.strip()
        depth = (len(name_field) - len(name_field.lstrip()) - 1) // 2
        children = []
        while pending and pending[-1][0] > depth:
            children.append(pending.pop()[1])
        nodes.append((name, own, total, children))
        pending.append((depth, len(nodes) - 1))
    return nodes


def import_times(folder: Path, repeats: int, strict: list[str]) -> None:
    """What the plugin imports in a real ``pytest --co`` run, by ``-X importtime``.

    Plugin modules are attributed with everything they import (NumPy, say); a module
    another module imported first is not counted again, as Python imports it once.
    """
    totals: list[int] = []
    per_module: dict[str, list[tuple[int, int]]] = {}
    foreign: dict[str, list[int]] = {}
    for _ in range(repeats):
        err = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "pytest", "--co", "-q", *strict],
            cwd=folder,
            env=cached_env(folder),
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        nodes = _import_tree(err)
        ours = {i for i, node in enumerate(nodes) if node[0].startswith("pytest_determinism")}
        roots = [i for i in ours if not any(i in nodes[j][3] for j in ours)]
        totals.append(sum(nodes[i][2] for i in roots))
        for i in ours:
            name, own, total, children = nodes[i]
            per_module.setdefault(name, []).append((own, total))
            for c in children:
                if c not in ours:
                    foreign.setdefault(f"{nodes[c][0]} (from {name})", []).append(nodes[c][2])
    print(f"\npython -X importtime -m pytest --co -q {' '.join(strict)} (median of {repeats}):")
    print(f"  everything imported because of the plugin: {statistics.median(totals) / 1e3:.1f} ms")
    print("  its modules, top by own time:")
    ranked = sorted(per_module.items(), key=lambda kv: -statistics.median(v[0] for v in kv[1]))
    for name, values in ranked[:12]:
        own = statistics.median(v[0] for v in values)
        total = statistics.median(v[1] for v in values)
        print(f"    {own / 1e3:7.2f} ms self {total / 1e3:7.2f} ms cumulative  {name}")
    if foreign:
        print("  other packages imported by them:")
        for name, values in sorted(foreign.items(), key=lambda kv: -statistics.median(kv[1])):
            print(f"    {statistics.median(values) / 1e3:7.2f} ms cumulative  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=25, help="runs per configuration")
    parser.add_argument("--quick", action="store_true", help="a few runs only (smoke test)")
    args = parser.parse_args()
    repeats = 4 if args.quick else args.repeats

    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        folder = Path(tmp)
        make_suite(folder)
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; suite: 3 files x 5 "
            "plain tests; `python -m pytest --co -q` in a fresh interpreter per run"
        )
        cached = cached_env(folder)
        strict = compare(
            folder, repeats, STRICT, " ".join(STRICT) + " in both (strict)", cached, True
        )
        loose = compare(folder, max(2, repeats // 2), [], "every installed plugin", cached)
        uncached = {**cached, "PYTHONDONTWRITEBYTECODE": "1"}
        uncached.pop("PYTHONPYCACHEPREFIX")
        nocache = compare(
            folder,
            max(2, repeats // 2),
            STRICT,
            "strict, PYTHONDONTWRITEBYTECODE=1 (no bytecode cache: every module compiled and "
            "every plugin module assertion-rewritten on each run)",
            uncached,
        )

        print("\nwhat loading the plugin imports:")
        fresh, ms = fresh_interpreter_imports(folder)
        print(
            f"  fresh interpreter, `import pytest_determinism.plugin` ({ms:.1f} ms with all "
            f"it imports): heavy modules added: {fresh or 'none'}"
        )
        on = session_imports(folder, STRICT)
        off = session_imports(folder, [*STRICT, "-p", "no:determinism"])
        added = sorted(set(on) - set(off))
        print(
            f"  pytest --co {' '.join(STRICT)}, at session finish:\n"
            f"    loaded with the plugin {on or 'none'}, without {off or 'none'}; "
            f"added by the plugin: {added or 'none'}"
        )
        bad = sorted({*fresh, *added} & set(FORBIDDEN))
        print(f"  torch / numpy / hypothesis imported by the plugin: {bad or 'none (ok)'}")
        import_times(folder, 3 if args.quick else 7, STRICT)

        print("\nsummary:")
        print(
            f"  start-up ratio (strict, wall / CPU): {strict['wall_ratio']:.3f} / "
            f"{strict['cpu_ratio']:.3f}; with all plugins: {loose['wall_ratio']:.3f} / "
            f"{loose['cpu_ratio']:.3f}; without a bytecode cache: {nocache['wall_ratio']:.3f} / "
            f"{nocache['cpu_ratio']:.3f}; goal <= {GOAL:.2f}"
        )
        print(f"  torch / numpy / hypothesis imported by the plugin: {bad or 'none (ok)'}")
        if bad:
            raise SystemExit(f"loading the plugin imported {bad}")


if __name__ == "__main__":
    main()
