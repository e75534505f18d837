"""What the golden trace costs: recording at ``--update-golden``, its size, the failure path.

Run with ``python benchmarks/bench_golden_trace.py`` (``--rounds N``, ``--threads N``;
about 2 minutes on 2 cores). In-process pytest sessions on a generated test module holding
three tiny Hugging Face models built from config objects (BERT, Llama, ConvNeXt), each test
marked ``deterministic`` and checking the model's output with ``golden_tensor``, one test
per model and round. Two project folders, identical but for their ini:

- **trace**: the default, ``golden_trace = true``;
- **plain**: ``golden_trace = false`` (what ``--update-golden`` cost before the trace).

Sessions alternate between the two folders, so a disturbance of the shared machine moves
both. A conftest plugin times each test's call phase with ``time.perf_counter``. Printed
per model, as medians over the rounds and ratios trace / plain:

1. ``--update-golden`` when the goldens exist already (the common update: the trace is
   recorded, the file compared and left alone) and when every golden is written afresh;
2. a passing check (no update): must cost the same whether its golden holds a trace;
3. the size of the trace: bytes per module call, calls per test, share of the file;
4. the failure path: one layer's weights scaled by 1.5, so every check fails: with a trace
   the body runs once more, traced, and the report says where the difference started;
   without one it does not.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

MODELS_CODE = """
import torch
from transformers import (
    BertConfig, BertModel, ConvNextConfig, ConvNextModel, LlamaConfig, LlamaModel,
)

torch.manual_seed(0)
MODELS = {
    "bert": (
        BertModel(BertConfig(
            vocab_size=1000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=512,
        )),
        {"input_ids": torch.randint(0, 1000, (4, 128))},
        lambda m: m.encoder.layer[2].intermediate.dense.weight,
    ),
    "llama": (
        LlamaModel(LlamaConfig(
            vocab_size=1000, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2,
        )),
        {"input_ids": torch.randint(0, 1000, (4, 128))},
        lambda m: m.layers[2].mlp.up_proj.weight,
    ),
    "convnext": (
        ConvNextModel(ConvNextConfig(hidden_sizes=[24, 48, 96, 192], depths=[2, 2, 4, 2])),
        {"pixel_values": torch.randn(4, 3, 96, 96)},
        # Not a block's pwconv (ConvNeXt's layer scale, 1e-6, hides it) nor the patch
        # embedding (a LayerNorm follows it): the last downsampling convolution.
        lambda m: m.encoder.stages[3].downsampling_layer[1].weight,
    ),
}
for model, _, _ in MODELS.values():
    model.eval()
"""

TEST_MODULE = """
import os

import pytest
import torch

ROUNDS = {rounds}
{models}

@pytest.mark.parametrize("rnd", range(ROUNDS))
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.deterministic
def test_model(name, rnd, golden_tensor):
    model, inputs, weight = MODELS[name]
    saved = weight(model).detach().clone()
    broken = os.environ.get("BENCH_BREAK") == "1"
    try:
        if broken:
            with torch.no_grad():
                weight(model).mul_(1.5)
        with torch.no_grad():
            out = model(**inputs).last_hidden_state
        golden_tensor.check(out, "out")
    finally:
        with torch.no_grad():
            weight(model).copy_(saved)
"""

CONFTEST = """
import json
import time
from pathlib import Path

import pytest

TIMES = {}


def pytest_sessionfinish(session):
    Path(__file__).with_name("times.json").write_text(json.dumps(TIMES))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    start = time.perf_counter()
    try:
        return (yield)
    finally:
        TIMES[item.nodeid] = time.perf_counter() - start
"""

MODELS = ("bert", "llama", "convnext")


def _project(root: Path, name: str, rounds: int, trace: bool) -> Path:
    folder = root / name
    folder.mkdir()
    module = TEST_MODULE.format(rounds=rounds, models=MODELS_CODE)
    (folder / f"test_{name}.py").write_text(textwrap.dedent(module))
    (folder / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (folder / "pytest.ini").write_text(f"[pytest]\ngolden_trace = {'true' if trace else 'false'}\n")
    return folder


def _session(folder: Path, threads: int | None, *args: str) -> dict[str, list[float]]:
    """One in-process pytest session; the call-phase seconds per model."""
    extra = ["--determinism-threads", str(threads)] if threads else []
    pytest.main(
        [
            str(folder),
            "-q",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "--import-mode=importlib",
            "-W",
            "ignore",
            *extra,
            *args,
        ]
    )
    times = json.loads((folder / "times.json").read_text())
    per_model: dict[str, list[float]] = {name: [] for name in MODELS}
    for nodeid, seconds in times.items():
        name = nodeid.split("[", 1)[1].split("-", 1)[0]
        per_model[name].append(seconds)
    return per_model


def _trace_size(folder: Path) -> dict[str, tuple[float, int, float]]:
    """Per model: bytes per call, calls per test, and the trace's share of the file."""
    from pytest_determinism.golden.golden_trace import TRACE_KEY, decode_trace
    from pytest_determinism.golden.storage import read_golden

    sizes = {}
    for name in MODELS:
        path = next(folder.glob(f"__golden__/**/test_model*{name}-0*.safetensors"))
        with read_golden(path) as golden:
            text = golden.metadata[TRACE_KEY]
            calls = len(decode_trace(text))
        sizes[name] = (len(text) / calls, calls, len(text) / path.stat().st_size)
    return sizes


def _ratio_line(label: str, trace: dict[str, list[float]], plain: dict[str, list[float]]) -> None:
    cells = []
    for name in MODELS:
        a, b = statistics.median(trace[name]), statistics.median(plain[name])
        best = min(trace[name]) / min(plain[name])
        cells.append(
            f"{name} {a * 1000:6.1f} / {b * 1000:6.1f} ms = {a / b:5.2f}x (fastest {best:4.2f}x)"
        )
    print(f"  {label:<19}" + "  ".join(cells))


def _paired(rounds: int, root: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Recording with and without the trace in one process, interleaved per round: the
    seconds of ``--update-golden``'s call phase (forward, ``check``, ``finish``) with the
    trace and without, per model."""
    import contextlib
    import time

    import torch

    from pytest_determinism.golden.golden_tensor import GoldenTensor
    from pytest_determinism.golden.golden_trace import encode_trace
    from pytest_determinism.nondeterminism.recorder import recording

    space: dict[str, object] = {}
    exec(MODELS_CODE, space)  # the same models as the pytest sessions
    models = space["MODELS"]
    assert isinstance(models, dict)
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in MODELS}
    for rnd in range(rounds + 1):
        for name in MODELS:
            model, inputs, _ = models[name]
            seconds = {}
            for traced in (rnd % 2 == 0, rnd % 2 == 1):
                golden = GoldenTensor(
                    path=root / f"{name}-{traced}.safetensors",
                    root=root,
                    test_id=name,
                    update=True,
                    tolerances={},
                    seed=0,
                    defer_failures=False,
                )
                torch.manual_seed(0)
                start = time.perf_counter()
                block = recording() if traced else contextlib.nullcontext()
                with block as recorder, torch.no_grad():
                    golden.check(model(**inputs).last_hidden_state, "out")
                if recorder is not None:
                    golden.keep_trace(encode_trace(recorder.golden_trace()))
                golden.finish(test_passed=True)
                seconds[traced] = time.perf_counter() - start
            if rnd:  # round 0 warms both up
                times[name][0].append(seconds[True])
                times[name][1].append(seconds[False])
    return times


def main() -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="tests per model and session")
    parser.add_argument("--threads", type=int, default=None, help="--determinism-threads")
    arguments = parser.parse_args()
    import os

    import torch

    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    root = Path(tempfile.mkdtemp(prefix="bench-golden-trace-"))
    try:
        warm = _project(root, "warm", 1, trace=True)
        trace = _project(root, "trace", arguments.rounds, trace=True)
        plain = _project(root, "plain", arguments.rounds, trace=False)
        # Imports and first calls (transformers' lazy modules, torch's kernels) are paid here.
        _session(warm, arguments.threads, "--update-golden")
        results: dict[str, tuple[dict[str, list[float]], dict[str, list[float]]]] = {}
        # Fresh goldens: the first update of each folder writes every file.
        results["update, written"] = (
            _session(trace, arguments.threads, "--update-golden"),
            _session(plain, arguments.threads, "--update-golden"),
        )
        for label, args, env in (
            ("update, unchanged", ("--update-golden",), "0"),
            ("passing check", (), "0"),
            ("failure path", (), "1"),
        ):
            os.environ["BENCH_BREAK"] = env
            both: tuple[dict[str, list[float]], dict[str, list[float]]] = (
                {n: [] for n in MODELS},
                {n: [] for n in MODELS},
            )
            for alternation in range(4):
                order = (
                    ((0, trace), (1, plain)) if alternation % 2 == 0 else ((1, plain), (0, trace))
                )
                for side, folder in order:
                    for name, values in _session(folder, arguments.threads, *args).items():
                        both[side][name].extend(values)
            results[label] = both
            os.environ.pop("BENCH_BREAK", None)
        paired = _paired(arguments.rounds * 4, root / "warm")
        print()
        print(
            f"golden trace on / off (ini golden_trace), call phase per test, median over "
            f"{arguments.rounds * 8} tests per model (first update: {arguments.rounds}); "
            f"sessions alternate; torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
        for label, (on, off) in results.items():
            _ratio_line(label, on, off)
        print("  in one process, forward + check + finish under --update-golden, interleaved:")
        _ratio_line(
            "update, paired",
            {name: on for name, (on, _) in paired.items()},
            {name: off for name, (_, off) in paired.items()},
        )
        print("  trace size per golden:")
        for name, (per_call, calls, share) in _trace_size(trace).items():
            print(
                f"    {name:<9} {calls:4d} module calls, {per_call:6.0f} bytes a call, "
                f"{share:6.1%} of the golden file"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
