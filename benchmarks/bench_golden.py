"""Comparing an output with its golden on disk, and writing one: time and memory, in one run.

Run with ``python benchmarks/bench_golden.py`` (about 10 minutes on 2 cores; ``--quick`` for
a 30-second smoke run; ``--sizes 64M,512M`` for some cases only, ``512M:bf16`` for a
bfloat16 case). Default cases: float32 outputs of 64 MiB, 512 MiB and 2 GiB, and 512 MiB
of bfloat16. For each case, every measurement runs in its own fresh subprocess, one at a
time, and compares:

- **ours**: ``GoldenTensor(...).check(output)`` (the object behind the ``golden_tensor``
  fixture, called directly, without a pytest run around it), reading a real golden file
  that ``GoldenTensor`` wrote in update mode (``check`` then ``finish(test_passed=True)``),
  then ``finish``;
- **floor**: reading the golden's bytes from the page cache into memory plus one
  ``torch.equal`` pass over both arrays; and ``torch.equal`` over a memory map of the
  golden (``floor mmap``), shown beside it;
- **assert_close**: ``safetensors.torch.load_file`` of the golden, then
  ``torch.testing.assert_close``;
- **ndarrays_regression**: pytest-regressions' fixture in a real pytest subprocess, with
  the same tolerances as ours; the ``check`` call is timed inside the test (it includes
  pytest-datadir's lazy copy of the golden into the test's temporary folder, which
  ``check`` triggers).

Outputs are ``torch.randn`` (seeded) of shape ``(N / 4096, 4096)``, compared with their
golden in three variants: ``identical``; ``within`` tolerance (+1 ulp on every 100th
element, 1%); ``beyond`` tolerance (+0.5 on every 100th element: a failing check; the time
is the time to produce the failure report). Golden files are in the page cache before any
timing (they were just written, and are read once more).

Time: ours and the floors are the median of ``--repeats`` calls in one process (the first
call, in a fresh process, is reported too); assert_close and ndarrays_regression make one
call in a fresh process each (they take seconds to minutes). Memory: extra peak memory
beyond the output tensor, measured around the first call in a fresh process, twice:
*anon* is the peak of ``RssAnon`` (anonymous memory: buffers, temporaries, copies) sampled
every 0.5 ms by a helper process; *RSS* is ``VmHWM`` after resetting it through
``/proc/self/clear_refs``, which also counts file pages mapped into the process (a memory-
mapped golden: page-cache pages, shared and reclaimable, not extra memory).

Writing: ``GoldenTensor`` in update mode (``check`` + ``finish``: ``check`` writes the
output to a temporary file, ``finish`` writes the header, fsyncs, renames and fsyncs the
folder) against ``safetensors.torch.save_file``
followed by an fsync of the file and the folder, and one raw ``write`` of the bytes with
the same fsyncs, into the same folder, alternating; fsync is included for all three.
``--dir`` chooses the disk folder (default: the system temporary folder).

To keep the default run near 10 minutes, the slow alternatives run only where they take
less than about a minute: assert_close for every variant up to 512 MiB and for the
identical output above; ndarrays_regression (float32 only: NumPy has no bfloat16) for every
variant up to 64 MiB, for the identical output up to 512 MiB, and not above. ``--full``
runs them everywhere (much longer, and about 13 GiB of memory for assert_close at 2 GiB).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULT_TAG = "BENCH-RESULT "
COLUMNS = 4096
MIB = 1 << 20
VARIANTS = ("identical", "within", "beyond")
DEFAULT_SIZES = "64M,512M,2G,512M:bf16"
GOAL_TIME = 1.5
GOAL_MEMORY = 0.25
GOAL_WRITE = 0.8
# Stop repeating a timed call once its repeats have taken this long (at least one call).
TIME_BUDGET_S = 20.0

# ---------------------------------------------------------------------------------------
# Cases and outputs


def parse_case(text: str) -> tuple[int, str]:
    """``"512M"`` -> (bytes, "float32"); ``"512M:bf16"`` -> (bytes, "bfloat16")."""
    size, _, dtype = text.strip().partition(":")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if not size or size[-1].upper() not in units:
        raise argparse.ArgumentTypeError(f"size {text!r}: use a number and K, M or G")
    nbytes = int(float(size[:-1]) * units[size[-1].upper()])
    dtypes = {"": "float32", "f32": "float32", "float32": "float32"}
    dtypes |= {"bf16": "bfloat16", "bfloat16": "bfloat16"}
    if dtype not in dtypes:
        raise argparse.ArgumentTypeError(f"dtype {dtype!r}: use f32 or bf16")
    itemsize = 4 if dtypes[dtype] == "float32" else 2
    if nbytes % (COLUMNS * itemsize):
        raise argparse.ArgumentTypeError(f"size {text!r} is not a multiple of a 4096-wide row")
    return nbytes, dtypes[dtype]


def case_name(nbytes: int, dtype: str) -> str:
    size = f"{nbytes / (1 << 30):g} GiB" if nbytes >= 1 << 30 else f"{nbytes / MIB:g} MiB"
    return f"{size} {dtype}"


def make_output(nbytes: int, dtype: str, variant: str) -> Any:
    """The seeded output of a case, perturbed in place as ``variant`` says."""
    import torch

    itemsize = 4 if dtype == "float32" else 2
    rows = nbytes // itemsize // COLUMNS
    out = torch.randn(rows, COLUMNS, generator=torch.Generator().manual_seed(1234))
    if dtype == "bfloat16":
        out = out.to(torch.bfloat16)
    flat = out.view(-1)
    if variant == "within":
        # One ulp up on 1% of the elements: well within every default tolerance.
        bits = flat.view(torch.int32 if dtype == "float32" else torch.int16)
        bits[::100] += 1
    elif variant == "beyond":
        flat[::100] += 0.5
    return out


# ---------------------------------------------------------------------------------------
# Memory: RssAnon sampled by a helper process, VmHWM reset through clear_refs

_SAMPLER = r"""
import os, select, sys
status = f"/proc/{sys.argv[1]}/status"
def anon():
    with open(status, "rb") as handle:
        for line in handle:
            if line.startswith(b"RssAnon:"):
                return int(line.split()[1])
    return 0
peak = None
while True:
    ready, _, _ = select.select([0], [], [], 0.0005 if peak is not None else None)
    if ready:
        command = os.read(0, 1)
        if command in (b"", b"q"):
            break
        if command == b"s":
            peak = anon()
            os.write(1, b"ok\n")
        else:
            peak = max(peak or 0, anon())
            os.write(1, f"{peak}\n".encode())
            peak = None
    elif peak is not None:
        value = anon()
        if value > peak:
            peak = value
"""


def _status() -> dict[str, int]:
    """``/proc/self/status`` memory fields in bytes."""
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


class Sampler:
    """A helper process that samples this process's ``RssAnon`` every 0.5 ms."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-S", "-c", _SAMPLER, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def _ask(self, command: bytes) -> bytes:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(command)
        self.process.stdin.flush()
        return self.process.stdout.readline()

    def start(self) -> None:
        self._ask(b"s")

    def stop(self) -> int:
        """Peak RssAnon since ``start``, in bytes."""
        return int(self._ask(b"e")) * 1024

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._ask(b"q")
        self.process.wait()


@contextlib.contextmanager
def peak_memory(sampler: Sampler) -> Iterator[dict[str, int]]:
    """Extra peak memory of the block: ``anon`` (sampled) and ``rss`` (VmHWM), bytes."""
    result: dict[str, int] = {}
    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS
    before = _status()
    sampler.start()
    try:
        yield result
    finally:
        anon = sampler.stop()
        after = _status()
        result["anon"] = max(0, anon - before["RssAnon"])
        result["rss"] = max(0, after["VmHWM"] - before["VmRSS"])


# ---------------------------------------------------------------------------------------
# The measured calls


def _golden_tensor(path: Path, update: bool) -> Any:
    from pytest_determinism.golden.golden_tensor import GoldenTensor

    return GoldenTensor(
        path=path,
        root=path.parent,
        test_id=f"bench_golden.py::{path.stem}",
        update=update,
        tolerances={},
        seed=0,
        defer_failures=False,
    )


def ours_check(path: Path, out: Any) -> str:
    """Our check; returns "passed" or the failure report."""
    golden = _golden_tensor(path, update=False)
    try:
        golden.check(out)
        outcome = "passed"
    except AssertionError as exc:
        outcome = str(exc)
    golden.finish(test_passed=True)
    return outcome


def ours_write(path: Path, out: Any, phases: list[tuple[float, float]] | None = None) -> bool:
    """Record ``out`` in update mode; ``phases`` gets (check s, finish s): ``check`` writes
    the data to the temporary file, ``finish`` completes and installs it."""
    start = time.perf_counter()
    golden = _golden_tensor(path, update=True)
    golden.check(out)
    middle = time.perf_counter()
    written = bool(golden.finish(test_passed=True).file_written)
    if phases is not None:
        phases.append((middle - start, time.perf_counter() - middle))
    return written


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def safetensors_write(path: Path, out: Any) -> bool:
    from safetensors.torch import save_file

    save_file({"0": out}, str(path))
    _fsync(path)
    _fsync(path.parent)
    return True


def _raw_bytes(out: Any) -> Any:
    import torch

    flat = out.reshape(-1)
    if flat.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    return flat.numpy().view("uint8")


def raw_write(path: Path, out: Any) -> bool:
    with open(path, "wb") as handle:
        handle.write(_raw_bytes(out).data)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync(path.parent)
    return True


def _data_offset(path: Path) -> int:
    with open(path, "rb") as handle:
        return 8 + int.from_bytes(handle.read(8), "little")


def _as_tensor(array: Any, like: Any) -> Any:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a read-only buffer: torch warns, we only read
        tensor = torch.from_numpy(array)
    return tensor.view(like.dtype).view(like.shape)


def floor_read_equal(path: Path, out: Any) -> str:
    """Read the golden's data from the page cache into memory, one torch.equal pass."""
    import numpy as np
    import torch

    nbytes = out.numel() * out.element_size()
    with open(path, "rb") as handle:
        handle.seek(_data_offset(path))
        buffer = np.empty(nbytes, dtype=np.uint8)
        if handle.readinto(buffer.data) != nbytes:
            raise RuntimeError(f"{path} is short")
    return "passed" if torch.equal(out, _as_tensor(buffer, out)) else "differs"


def floor_mmap_equal(path: Path, out: Any) -> str:
    """One torch.equal pass over the output and a memory map of the golden."""
    import mmap

    import numpy as np
    import torch

    nbytes = out.numel() * out.element_size()
    with open(path, "rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    golden = np.frombuffer(mapping, dtype=np.uint8, count=nbytes, offset=_data_offset(path))
    equal = torch.equal(out, _as_tensor(golden, out))
    del golden
    mapping.close()
    return "passed" if equal else "differs"


def assert_close_check(path: Path, out: Any) -> str:
    import torch
    from safetensors.torch import load_file

    golden = load_file(str(path))["0"]
    try:
        torch.testing.assert_close(out, golden)
    except AssertionError as exc:
        return str(exc)
    return "passed"


def warm_page_cache(*paths: Path) -> None:
    """Read files once so that every timed read comes from the page cache."""
    buffer = bytearray(16 * MIB)
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = call()
    return time.perf_counter() - start, value


def repeat_interleaved(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each call, the calls interleaved; a slow call repeats less."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            if samples[name] and sum(samples[name]) > TIME_BUDGET_S:
                continue
            samples[name].append(timed(call)[0])
    return {name: statistics.median(values) for name, values in samples.items()}


# ---------------------------------------------------------------------------------------
# Workers: each runs in a fresh subprocess and prints one JSON result line


def worker_write(spec: dict[str, Any]) -> dict[str, Any]:
    """Write the golden with ours, safetensors and a raw write; leave ours and safetensors'."""
    import torch

    folder = Path(spec["dir"])
    out = make_output(spec["nbytes"], spec["dtype"], "identical")
    ours_path = folder / "golden.safetensors"
    st_path = folder / "safetensors.safetensors"
    raw_path = folder / "raw.bin"
    writers: dict[str, tuple[Path, Callable[[Path, Any], bool]]] = {
        "ours": (ours_path, ours_write),
        "save_file": (st_path, safetensors_write),
        "raw": (raw_path, raw_write),
    }
    # One-time costs (imports, first use) out of the way, as in a running pytest session.
    tiny = torch.zeros(4, dtype=out.dtype)
    for name, (path, write) in writers.items():
        warm = path.with_name(f"warm-{name}.safetensors")
        write(warm, tiny)
        warm.unlink()
    # Memory first, in an untimed pass: the sampler process would disturb the timings.
    sampler = Sampler()
    memory = {}
    try:
        for name in ("ours", "save_file"):
            path, write = writers[name]
            with peak_memory(sampler) as peak:
                write(path, out)
            memory[name] = dict(peak)
            path.unlink()
    finally:
        sampler.close()
    phases: list[tuple[float, float]] = []
    writers["ours"] = (ours_path, lambda p, o: ours_write(p, o, phases))
    times: dict[str, list[float]] = {name: [] for name in writers}
    for i in range(spec["repeats"]):
        order = list(writers) if i % 2 == 0 else list(reversed(writers))
        for name in order:
            path, write = writers[name]
            path.unlink(missing_ok=True)
            seconds, written = timed(lambda p=path, w=write: w(p, out))
            if not written:
                raise RuntimeError(f"{name} wrote nothing")
            times[name].append(seconds)
    # Recording again an unchanged output: compared with the file, nothing written.
    warm_page_cache(ours_path)
    rerecord, written = timed(lambda: ours_write(ours_path, out))
    if written:
        raise RuntimeError("re-recording an unchanged golden rewrote it")
    raw_path.unlink(missing_ok=True)
    return {
        "nbytes": spec["nbytes"],
        "write": {name: statistics.median(v) for name, v in times.items()},
        "write_best": {name: min(v) for name, v in times.items()},
        "write_samples": times,
        "ours_phases": {
            "data (check)": statistics.median(p[0] for p in phases),
            "install (finish)": statistics.median(p[1] for p in phases),
        },
        "rerecord": rerecord,
        "write_memory": memory,
        "file_bytes": ours_path.stat().st_size,
    }


def worker_check(spec: dict[str, Any]) -> dict[str, Any]:
    """Ours (memory on the first call, then timed repeats) and, for identical, the floors."""
    import torch

    folder = Path(spec["dir"])
    # One-time costs (imports, first use) out of the way, as in a running pytest session:
    # a passing and a failing check of a tiny golden.
    dtype = getattr(torch, spec["dtype"])
    tiny = torch.zeros(4, dtype=dtype)
    warm = folder / f"warm-{os.getpid()}.safetensors"
    ours_write(warm, tiny)
    if ours_check(warm, tiny) != "passed" or ours_check(warm, tiny + 1) == "passed":
        raise RuntimeError("the warm-up check went wrong")
    warm.unlink()
    golden = folder / "golden.safetensors"
    out = make_output(spec["nbytes"], spec["dtype"], spec["variant"])
    warm_page_cache(golden)
    sampler = Sampler()
    try:
        with peak_memory(sampler) as memory:
            first, outcome = timed(lambda: ours_check(golden, out))
    finally:
        sampler.close()
    calls: dict[str, Callable[[], Any]] = {"ours": lambda: ours_check(golden, out)}
    if spec["variant"] == "identical":
        calls["floor"] = lambda: floor_read_equal(golden, out)
        calls["floor_mmap"] = lambda: floor_mmap_equal(golden, out)
        for name in ("floor", "floor_mmap"):
            if calls[name]() != "passed":
                raise RuntimeError(f"{name} found a difference in identical outputs")
    times = repeat_interleaved(calls, spec["repeats"])
    return {
        "first": first,
        "times": times,
        "memory": dict(memory),
        "outcome": "passed" if outcome == "passed" else "failed",
        "report_lines": 0 if outcome == "passed" else outcome.count("\n") + 1,
    }


def worker_assert_close(spec: dict[str, Any]) -> dict[str, Any]:
    """One load_file + assert_close in this fresh process: time and memory."""
    import torch

    # One-time costs out of the way (the first assert_close of a process takes about 2 s
    # here), as in a running pytest session: a passing and a failing call on tiny tensors.
    importlib.import_module("safetensors.torch")
    tiny = torch.zeros(4)
    torch.testing.assert_close(tiny, tiny.clone())
    with contextlib.suppress(AssertionError):
        torch.testing.assert_close(tiny, tiny + 1)
    path = Path(spec["dir"]) / "safetensors.safetensors"
    out = make_output(spec["nbytes"], spec["dtype"], spec["variant"])
    warm_page_cache(path)
    sampler = Sampler()
    try:
        with peak_memory(sampler) as memory:
            seconds, outcome = timed(lambda: assert_close_check(path, out))
    finally:
        sampler.close()
    return {
        "time": seconds,
        "memory": dict(memory),
        "outcome": "passed" if outcome == "passed" else "failed",
    }


WORKERS = {"write": worker_write, "check": worker_check, "assert_close": worker_assert_close}


# ---------------------------------------------------------------------------------------
# pytest-regressions, in a real pytest subprocess

_REGRESSIONS_TEST = """
import json
import os
import time

import numpy as np
import pytest

import bench_golden as bench


def test_output(ndarrays_regression):
    spec = json.loads(os.environ["BENCH_SPEC"])
    # One-time costs out of the way, as in a running session: a passing and a failing check.
    for basename, value in (("warm_pass", 0.0), ("warm_fail", 1.0)):
        tiny = np.zeros(4) if spec["regen"] else np.full(4, value)
        try:
            ndarrays_regression.check({"out": tiny}, basename=basename)
        except (AssertionError, pytest.fail.Exception):
            pass
    out = bench.make_output(spec["nbytes"], "float32", spec["variant"]).numpy()
    if not spec["regen"]:
        # What the check reads, into the page cache, as for the other tools.
        bench.warm_page_cache(*ndarrays_regression.original_datadir.glob("*.npz"))
    sampler = bench.Sampler()
    try:
        with bench.peak_memory(sampler) as memory:
            start = time.perf_counter()
            try:
                ndarrays_regression.check(
                    {"out": out}, default_tolerance={"rtol": 1.3e-6, "atol": 1e-5}
                )
                outcome = "passed"
            except (AssertionError, pytest.fail.Exception):
                outcome = "failed"
            seconds = time.perf_counter() - start
    finally:
        sampler.close()
    result = {"time": seconds, "memory": dict(memory), "outcome": outcome}
    with open(spec["result"], "w") as handle:
        json.dump(result, handle)
"""


def run_regressions(folder: Path, nbytes: int, variant: str, regen: bool) -> dict[str, Any]:
    """ndarrays_regression.check in a pytest subprocess; ``regen`` writes the golden."""
    test = folder / "test_regressions.py"
    if not test.exists():
        test.write_text(textwrap.dedent(_REGRESSIONS_TEST))
        (folder / "pytest.ini").write_text("[pytest]\n")
    result_path = folder / "result.json"
    result_path.unlink(missing_ok=True)
    spec = {"nbytes": nbytes, "variant": variant, "regen": regen, "result": str(result_path)}
    env = {**os.environ, "BENCH_SPEC": json.dumps(spec), "PYTHONPATH": str(BENCH_DIR)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:determinism"]
    command += ["-p", "no:cacheprovider", "-p", "no:hypothesispytest", test.name]
    if regen:
        command.append("--force-regen")
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"ndarrays_regression run failed:\n{done.stdout[-3000:]}")
    return dict(json.loads(result_path.read_text()))


# ---------------------------------------------------------------------------------------
# The driver


def run_worker(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return dict(json.loads(line[len(RESULT_TAG) :]))
    raise RuntimeError(f"worker {kind} {spec} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")


def _gib(nbytes: float) -> str:
    return f"{nbytes / (1 << 30):.2f} GiB" if nbytes >= 1 << 30 else f"{nbytes / MIB:.0f} MiB"


def _mem(memory: dict[str, int], nbytes: int) -> str:
    return (
        f"anon {_gib(memory['anon']):>9} ({memory['anon'] / nbytes:4.2f}x)  "
        f"RSS {_gib(memory['rss']):>9} ({memory['rss'] / nbytes:4.2f}x)"
    )


def run_case(
    nbytes: int, dtype: str, args: argparse.Namespace, root: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    name = case_name(nbytes, dtype)
    folder = root / name.replace(" ", "-")
    folder.mkdir(parents=True, exist_ok=True)
    log(f"\n== {name} ({nbytes // (4 if dtype == 'float32' else 2):,} elements)")
    write_repeats = args.write_repeats or (
        5 if nbytes <= 64 * MIB else 4 if nbytes <= 512 * MIB else 2
    )
    spec = {"nbytes": nbytes, "dtype": dtype, "dir": str(folder)}
    case: dict[str, Any] = {"name": name, "nbytes": nbytes, "dtype": dtype}

    w = case["write"] = run_worker("write", {**spec, "repeats": write_repeats})
    mbs = {k: nbytes / MIB / v for k, v in w["write"].items()}
    log(
        f"  write, fsync included ({write_repeats} writes each, alternating, same folder; "
        "median and best):"
    )
    for key, label in (
        ("ours", "GoldenTensor update"),
        ("save_file", "safetensors save_file"),
        ("raw", "raw write()"),
    ):
        extra = (
            f"   extra memory {_mem(w['write_memory'][key], nbytes)}"
            if key in w["write_memory"]
            else ""
        )
        log(
            f"    {label:<22}{w['write'][key]:8.3f} s {mbs[key]:6.0f} MiB/s   best "
            f"{w['write_best'][key]:7.3f} s{extra}"
        )
    phases = ", ".join(f"{k} {v:.3f} s" for k, v in w["ours_phases"].items())
    best = w["write_best"]["save_file"] / w["write_best"]["ours"]
    log(
        f"    ours / save_file throughput: median {mbs['ours'] / mbs['save_file']:.2f}x, best "
        f"{best:.2f}x (goal >= {GOAL_WRITE}); ours' median phases: {phases}"
    )
    log(f"    re-recording unchanged (compared, nothing written): {w['rerecord']:.3f} s")

    full = args.full
    case["variants"] = {}
    for variant in args.variants:
        result: dict[str, Any] = {}
        result["ours"] = run_worker("check", {**spec, "variant": variant, "repeats": args.repeats})
        if not args.no_assert_close and (full or nbytes <= 512 * MIB or variant == "identical"):
            result["assert_close"] = run_worker("assert_close", {**spec, "variant": variant})
        regressions_ok = dtype == "float32" and not args.no_regressions
        if regressions_ok and not full:
            regressions_ok = nbytes <= 64 * MIB or (nbytes <= 512 * MIB and variant == "identical")
        if regressions_ok:
            reg_folder = folder / "regressions"
            reg_folder.mkdir(exist_ok=True)
            if "regen" not in case:
                case["regen"] = run_regressions(reg_folder, nbytes, "identical", regen=True)
                log(
                    f"  ndarrays_regression writing its golden (np.savez_compressed): "
                    f"{case['regen']['time']:.2f} s, "
                    f"{nbytes / MIB / case['regen']['time']:.0f} MiB/s "
                    f"({case['regen']['time'] / w['write']['save_file']:.1f}x save_file)"
                )
            result["regressions"] = run_regressions(reg_folder, nbytes, variant, regen=False)
        case["variants"][variant] = result
        report_case_variant(case, variant, log)
    shutil.rmtree(folder, ignore_errors=True)
    return case


def report_case_variant(case: dict[str, Any], variant: str, log: Callable[[str], None]) -> None:
    nbytes = case["nbytes"]
    result = case["variants"][variant]
    ours = result["ours"]
    identical = case["variants"].get("identical", {}).get("ours", {}).get("times", {})
    floor = identical.get("floor")
    floor_mmap = identical.get("floor_mmap")
    expected = "failed" if variant == "beyond" else "passed"
    log(
        f"  {variant}: ours {ours['outcome']} (expected {expected})"
        + (f", report of {ours['report_lines']} lines" if ours["report_lines"] else "")
    )

    def ratio(seconds: float) -> str:
        return f"{seconds / floor:6.2f}x floor" if floor else ""

    if variant == "identical" and floor and floor_mmap:
        log(f"    {'floor (read + torch.equal)':<34}{floor:9.3f} s")
        log(
            f"    {'floor mmap (torch.equal over mmap)':<34}{floor_mmap:9.3f} s {ratio(floor_mmap)}"
        )
    log(f"    {'ours, median':<34}{ours['times']['ours']:9.3f} s {ratio(ours['times']['ours'])}")
    log(
        f"    {'ours, first call, fresh process':<34}{ours['first']:9.3f} s {ratio(ours['first'])}"
        f"   extra {_mem(ours['memory'], nbytes)}"
    )
    for key, label in (
        ("assert_close", "load_file + assert_close"),
        ("regressions", "ndarrays_regression.check"),
    ):
        if key in result:
            other = result[key]
            log(
                f"    {label:<34}{other['time']:9.3f} s {ratio(other['time'])}   extra "
                f"{_mem(other['memory'], nbytes)}   [{other['outcome']}]"
            )
        else:
            log(f"    {label:<34}  skipped")


def summary(cases: list[dict[str, Any]], log: Callable[[str], None]) -> None:
    log("\n== summary: ours against the floor and the alternatives (medians; x = / floor;")
    log("   x mmap = ours / floor mmap; anon, RSS: ours' extra peak memory / data size)")
    log(
        f"  {'case':<18}{'variant':<10}{'floor s':>8}{'ours s':>8}{'x floor':>8}{'x mmap':>7}"
        f"{'anon x':>7}{'RSS x':>6}{'assert_close':>14}{'ndarrays_reg':>14}"
    )
    verdicts = []
    for case in cases:
        nbytes = case["nbytes"]
        floors = case["variants"].get("identical", {}).get("ours", {}).get("times", {})
        floor, floor_mmap = floors.get("floor"), floors.get("floor_mmap")
        for variant, result in case["variants"].items():
            ours = result["ours"]
            seconds = ours["times"]["ours"]
            x = seconds / floor if floor else float("nan")
            xm = seconds / floor_mmap if floor_mmap else float("nan")
            anon = ours["memory"]["anon"] / nbytes
            rss = ours["memory"]["rss"] / nbytes
            others = []
            for key in ("assert_close", "regressions"):
                if key in result:
                    t = result[key]["time"]
                    others.append(f"{t:7.2f}s {t / floor:4.0f}x" if floor else f"{t:7.2f}s")
                else:
                    others.append("-")
            log(
                f"  {case['name']:<18}{variant:<10}{floor or float('nan'):8.3f}{seconds:8.3f}"
                f"{x:8.2f}{xm:7.2f}{anon:7.2f}{rss:6.2f}{others[0]:>14}{others[1]:>14}"
            )
            if variant != "beyond" and nbytes >= 512 * MIB:
                verdicts.append(
                    (
                        f"time {case['name']} {variant}",
                        x <= GOAL_TIME,
                        f"{x:.2f}x floor ({xm:.2f}x floor mmap)",
                    )
                )
            if nbytes < 64 * MIB:
                continue  # below, a few fixed-size buffers are a large share of the data
            verdicts.append(
                (
                    f"memory {case['name']} {variant}",
                    anon < GOAL_MEMORY,
                    f"anon {anon:.2f}x, RSS {rss:.2f}x",
                )
            )
        w = case["write"]["write"]
        write_ratio = w["save_file"] / w["ours"]
        best = case["write"]["write_best"]
        best_ratio = best["save_file"] / best["ours"]
        verdicts.append(
            (
                f"write {case['name']}",
                write_ratio >= GOAL_WRITE,
                f"{write_ratio:.2f}x save_file's throughput (median; best of each "
                f"{best_ratio:.2f}x)",
            )
        )
    log(
        f"\n== goals: check <= {GOAL_TIME}x floor at >= 512 MiB (identical, within); extra "
        f"anonymous memory < {GOAL_MEMORY}x the data; write >= {GOAL_WRITE}x save_file"
    )
    for what, met, value in verdicts:
        log(f"  {'met    ' if met else 'NOT MET'}  {what:<34} {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default=None,
        help=f"comma-separated cases, e.g. 64M,512M,2G,512M:bf16 (default {DEFAULT_SIZES})",
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated: identical,within,beyond"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of ours and the floors")
    parser.add_argument(
        "--write-repeats",
        type=int,
        default=0,
        help="writes per writer (default: 3 up to 64 MiB, 2 up to 512 MiB, else 1)",
    )
    parser.add_argument("--dir", default=None, help="folder for the files (default: system temp)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="30-second smoke run: 16M, identical and beyond, no ndarrays_regression",
    )
    parser.add_argument("--full", action="store_true", help="run the slow alternatives everywhere")
    parser.add_argument("--no-assert-close", action="store_true", help="skip assert_close")
    parser.add_argument("--no-regressions", action="store_true", help="skip ndarrays_regression")
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        kind, spec = args.worker
        print(RESULT_TAG + json.dumps(WORKERS[kind](json.loads(spec))), flush=True)
        return
    if args.quick:
        args.sizes = args.sizes or "16M"
        args.variants = "identical,beyond"
        args.repeats = 2
        args.write_repeats = args.write_repeats or 1
        args.no_regressions = True
    cases = [parse_case(text) for text in (args.sizes or DEFAULT_SIZES).split(",")]
    args.variants = [v.strip() for v in args.variants.split(",")]
    if not set(args.variants) <= set(VARIANTS) or "identical" not in args.variants:
        parser.error(f"--variants: choose among {VARIANTS}; identical is needed for the floor")
    args.variants.sort(key=VARIANTS.index)

    import platform

    import torch

    print(
        f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), python {platform.python_version()}"
    )
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-golden-", dir=args.dir) as tmp:
        print(f"files in {tmp}")
        for nbytes, dtype in cases:
            results.append(run_case(nbytes, dtype, args, Path(tmp), lambda s: print(s, flush=True)))
    summary(results, print)
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
