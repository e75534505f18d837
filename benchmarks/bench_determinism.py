"""What ``--determinism`` costs a passing suite, against the same forward passes run plainly.

Run with ``python benchmarks/bench_determinism.py`` (``--rounds N``, ``--threads N``). One
in-process pytest session on a generated test module holding three tiny Hugging Face models
built from config objects (BERT, Llama, ConvNeXt; forwards of about 10-30 ms here):

- ``test_model[plain-model-round]``, unmarked: the model's forward three times (the 2 runs
  and the probe run of ``--determinism``, each one forward) and one ``golden_tensor.check``
  of the output: the plain suite the goal is stated against ("bodies run each forward three
  times and check once");
- ``test_model[settings-model-round]``, unmarked: the same, under the marker's own torch
  settings (deterministic algorithms, uninitialised memory filled), which a marked test
  has with or without ``--determinism``;
- ``test_model[checked-model-round]``, marked ``deterministic`` and run under
  ``--determinism``: one forward and a ``golden_tensor.check`` of its output, which the
  CI mode runs three times (run 0 compares with the golden, later runs only keep their
  values to compare the runs with each other). Every golden is written by a first,
  ``--update-golden`` session, which is not timed.

The three tests of a round run back to back, models interleaved, so a disturbance of the
shared machine moves all three. Each model's group starts with an untimed forward of that
model (``test_model[warm-...]``), and the order of the three timed tests turns with the
round: the first forward after another model's tests is 0.5-0.8 ms slower (the model's
weights are out of the caches), which whichever kind came first would otherwise pay in
every round. A conftest plugin times each test's call phase (and its whole
setup-call-teardown protocol) with ``time.perf_counter``. Printed per model: the medians of
the per-round ratios checked/settings (what ``--determinism`` itself adds) and checked/plain
(the marker's settings too), with quartiles, and checked/plain for the whole protocol. The
goal: the checked/settings call-phase median at most 1.10x.

Then the failure path: the same models in training mode with ``eval_mode=False`` (dropout
draws, so the seed probe run differs), timed once each: the runs, the recorded re-runs that
find the first diverging module, and the op-recording re-runs that find the op and line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

GOAL = 1.10

TEST_MODULE = """
import pytest
import torch
from transformers import (
    BertConfig, BertModel, ConvNextConfig, ConvNextModel, LlamaConfig, LlamaModel,
)

ROUNDS = {rounds}
NAMES = ["bert", "llama", "convnext"]
torch.manual_seed(0)
MODELS = {{
    "bert": (
        BertModel(BertConfig(
            vocab_size=1000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=512,
        )),
        {{"input_ids": torch.randint(0, 1000, (4, 128))}},
    ),
    "llama": (
        LlamaModel(LlamaConfig(
            vocab_size=1000, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.1,
        )),
        {{"input_ids": torch.randint(0, 1000, (4, 128))}},
    ),
    "convnext": (
        ConvNextModel(ConvNextConfig(
            hidden_sizes=[24, 48, 96, 192], depths=[2, 2, 4, 2], drop_path_rate=0.1,
        )),
        {{"pixel_values": torch.randn(4, 3, 96, 96)}},
    ),
}}
for model, _ in MODELS.values():
    model.eval()


def forward(name):
    model, inputs = MODELS[name]
    with torch.no_grad():
        return model(**inputs).last_hidden_state


@pytest.mark.parametrize("rnd", range(ROUNDS))
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["warm", "plain", "settings", "checked"])
def test_model(kind, name, rnd, golden_tensor):
    if kind == "warm":
        forward(name)
        return
    if kind == "plain":
        for _ in range(2):
            forward(name)
        golden_tensor.check(forward(name), "out")
        return
    if kind == "settings":
        # The marker's own torch settings, which a marked test has with or without
        # --determinism: filling uninitialised memory costs a pass over every new tensor.
        torch.use_deterministic_algorithms(True)
        torch.utils.deterministic.fill_uninitialized_memory = True
        try:
            for _ in range(2):
                forward(name)
            golden_tensor.check(forward(name), "out")
        finally:
            torch.use_deterministic_algorithms(False)
        return
    golden_tensor.check(forward(name), "out")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.deterministic(eval_mode=False, stochastic=False)
def test_failing(name, golden_tensor):
    model, inputs = MODELS[name]
    model.train()
    try:
        with torch.no_grad():
            golden_tensor.check(model(**inputs).last_hidden_state, "out")
    finally:
        model.eval()
"""

CONFTEST = """
import json
import time
from pathlib import Path

import pytest

TIMES = {}


def pytest_sessionfinish(session):
    Path(__file__).with_name("times.json").write_text(json.dumps(TIMES))


KINDS = ["plain", "settings", "checked"]


def pytest_collection_modifyitems(items):
    # For each round and model: an untimed forward of the model, then the three timed
    # tests in an order that turns with the round. The first forward after another
    # model's tests is slower (its weights are out of the caches): without the warm-up
    # and the turn, whichever kind came first would pay for it in every round.
    def key(item):
        params = item.callspec.params
        rnd, kind = params.get("rnd", -1), params.get("kind", "")
        position = (KINDS.index(kind) - rnd) % len(KINDS) if kind in KINDS else -1
        return (rnd, params["name"], position)
    items.sort(key=key)
    for item in items:
        if item.callspec.params.get("kind") == "checked":
            item.add_marker(pytest.mark.deterministic)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    start = time.perf_counter()
    result = yield
    TIMES.setdefault(item.nodeid, {})["protocol"] = time.perf_counter() - start
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    start = time.perf_counter()
    try:
        return (yield)
    finally:
        TIMES.setdefault(item.nodeid, {})["call"] = time.perf_counter() - start
"""


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="bench_determinism_"))
    (folder / "test_models.py").write_text(TEST_MODULE.format(rounds=args.rounds))
    (folder / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (folder / "pytest.ini").write_text("[pytest]\n")
    common = ["-q", "-p", "no:randomly", "-p", "no:cacheprovider", "-W", "ignore", str(folder)]
    pytest.main([*common, "--update-golden"])
    pytest.main([*common, "--determinism"])
    times = json.loads((folder / "times.json").read_text())
    print(f"\n--determinism on a passing suite vs the same forwards ({args.rounds} rounds)")
    print(
        f"{'model':9} {'plain ms':>8} {'settings ms':>11} {'checked ms':>10}"
        f" {'checked/settings (q1-q3)':>26} {'checked/plain (q1-q3)':>24} {'protocol':>9}"
    )
    worst = 0.0
    for name in ("bert", "llama", "convnext"):
        by_kind = {
            kind: [
                times[f"test_models.py::test_model[{kind}-{name}-{rnd}]"]
                for rnd in range(args.rounds)
            ]
            for kind in ("plain", "settings", "checked")
        }
        plain, settings, checked = by_kind["plain"], by_kind["settings"], by_kind["checked"]
        own = [c["call"] / s["call"] for c, s in zip(checked, settings, strict=True)]
        whole = [c["call"] / p["call"] for c, p in zip(checked, plain, strict=True)]
        protocol = [c["protocol"] / p["protocol"] for c, p in zip(checked, plain, strict=True)]
        q1, median, q3 = _quartiles(own)
        w1, wmedian, w3 = _quartiles(whole)
        worst = max(worst, median)
        ms = [statistics.median(x["call"] for x in runs) * 1e3 for runs in by_kind.values()]
        print(
            f"{name:9} {ms[0]:8.1f} {ms[1]:11.1f} {ms[2]:10.1f}"
            f" {median:10.3f}x ({q1:.2f}-{q3:.2f}x) {wmedian:9.3f}x ({w1:.2f}-{w3:.2f}x)"
            f" {statistics.median(protocol):8.3f}x"
        )
    print("\nfailure path (training mode, eval_mode=False: the probe run differs), one test each")
    for name in ("bert", "llama", "convnext"):
        entry = times[f"test_models.py::test_failing[{name}]"]
        plain = statistics.median(
            times[f"test_models.py::test_model[plain-{name}-{rnd}]"]["call"]
            for rnd in range(args.rounds)
        )
        print(
            f"{name:10} {entry['call']:.3f} s ({entry['call'] / plain:.1f}x the 3 plain forwards)"
        )
    verdict = "met" if worst <= GOAL else "NOT met"
    print(f"\ngoal: checked/settings call-phase median <= {GOAL:.2f}x: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
