"""The golden trace: recorded under --update-golden, and where a golden difference started.

Real pytest runs (pytester, in-process) on a tiny BERT built from a config object, changed
between recording and checking the way users change models: weights, an op's setting,
inputs, the sequence of modules.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
import transformers  # noqa: F401  (kept loaded: inner sessions must not import it afresh)
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_determinism import plot
from pytest_determinism.cli import main
from pytest_determinism.golden.golden_trace import (
    TRACE_KEY,
    GoldenTrace,
    TracedCall,
    TracedOutput,
    decode_trace,
    encode_trace,
)
from pytest_determinism.golden.storage import read_golden
from pytest_determinism.golden.writing import write_golden
from pytest_determinism.nondeterminism import recorder as recorder_module
from pytest_determinism.nondeterminism.recorder import recording

BERT_TEST = """
import pytest
import torch
from transformers import BertConfig, BertModel

CHANGE = "{change}"


def build():
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        vocab_size=100, max_position_embeddings=32,
    )
    model = BertModel(config)
    if CHANGE == "weights":
        with torch.no_grad():
            model.encoder.layer[1].intermediate.dense.weight.mul_(1.5)
    elif CHANGE == "epsilon":
        model.encoder.layer[0].attention.output.LayerNorm.eps = 1e-2
    elif CHANGE == "added":
        block = model.encoder.layer[1].output
        block.dense = torch.nn.Sequential(block.dense, torch.nn.LayerNorm(32))
    return model.eval()


{marker}
def test_bert(golden_tensor{args}):
    model = build()
    ids = torch.randint(0, 100, (2, 8))
    if CHANGE == "inputs":
        ids = (ids + 1) % 100
    with torch.no_grad():
        out = model(input_ids=ids)
    golden_tensor.check(out.last_hidden_state, name="hidden")
    if CHANGE == "raises":
        raise ValueError("after the check")
"""

MARKED = "@pytest.mark.deterministic"


def _write_test(
    pytester: pytest.Pytester, change: str = "", marker: str = MARKED, args: str = ""
) -> None:
    pytester.makepyfile(test_bert=BERT_TEST.format(change=change, marker=marker, args=args))


def _golden(pytester: pytest.Pytester) -> Path:
    return pytester.path / "__golden__" / "test_bert" / "test_bert.safetensors"


def _recorded(pytester: pytest.Pytester, run, change: str = "", *args: str) -> Path:
    _write_test(pytester, change)
    result = run("--update-golden", *args)
    result.assert_outcomes(passed=1)
    return _golden(pytester)


def _section(result: pytest.RunResult) -> str:
    text = result.stdout.str()
    assert "pytest-determinism: golden trace" in text, text
    return text.split("pytest-determinism: golden trace", 1)[1]


def test_update_records_the_trace_in_the_one_golden_file(pytester, run) -> None:
    path = _recorded(pytester, run)
    assert [p.name for p in path.parent.iterdir()] == ["test_bert.safetensors"]
    with read_golden(path) as golden:
        trace = decode_trace(golden.metadata[TRACE_KEY])
    names = [call.qualname for call in trace.calls]
    assert names[0] == ""
    assert trace.calls[0].cls == "BertModel"
    assert "encoder.layer.1.intermediate.dense" in names
    dense = trace.calls[names.index("encoder.layer.1.intermediate.dense")]
    assert dense.cls == "Linear"
    assert dense.params != 0
    (output,) = dense.outputs
    assert output.dtype == "float32"
    assert output.shape == (2, 8, 64)
    assert output.samples is not None and len(output.samples) == 16 * 4
    # Recording again changes nothing: the golden stays byte-identical.
    before = path.read_bytes()
    run("--update-golden").assert_outcomes(passed=1)
    assert path.read_bytes() == before


def test_scaled_weights_name_the_module_and_the_weights(pytester, run) -> None:
    _recorded(pytester, run)
    _write_test(pytester, "weights")
    result = run()
    result.assert_outcomes(failed=1)
    section = _section(result)
    assert (
        "first module call beyond its tolerance: encoder.layer.1.intermediate.dense (Linear)"
        in section
    )
    assert "its inputs: as recorded; its parameters and buffers: differ from the recording" in (
        section
    )
    assert "verdict: the weights changed (a checkpoint, an init, a parameter edit)" in section
    assert "along the model: embeddings 0 -> layer.0 0 -> layer.1 " in section
    # The mismatch itself is reported as before, with its traceback in the test.
    assert "golden mismatch in check 'hidden'" in result.stdout.str()


@pytest.mark.parametrize("mode", [(), ("--determinism",)], ids=["plain", "ci-mode"])
def test_layernorm_epsilon_is_a_computation_with_its_drift_kind(pytester, run, mode) -> None:
    _recorded(pytester, run)
    _write_test(pytester, "epsilon")
    result = run(*mode)
    result.assert_outcomes(failed=1)
    section = _section(result)
    assert (
        "first module call beyond its tolerance: encoder.layer.0.attention.output.LayerNorm "
        "(LayerNorm)" in section
    )
    assert "its inputs: as recorded; its parameters and buffers: as recorded" in section
    assert "verdict: this module computes differently now (an op, a dtype" in section
    assert "drift kind of its output: computation (" in section


def test_changed_inputs_are_blamed_on_the_inputs(pytester, run) -> None:
    _recorded(pytester, run)
    _write_test(pytester, "inputs")
    result = run()
    result.assert_outcomes(failed=1)
    section = _section(result)
    assert "embeddings.word_embeddings (Embedding)" in section
    assert "verdict: the inputs to the model changed (data, preprocessing" in section


def test_an_added_module_names_where_the_sequences_part(pytester, run) -> None:
    _recorded(pytester, run)
    _write_test(pytester, "added")
    result = run()
    result.assert_outcomes(failed=1)
    section = _section(result)
    assert (
        "the sequences of module calls part at call 40: recorded "
        "encoder.layer.1.output.dense (Linear), now encoder.layer.1.output.dense (Sequential)"
        in section
    )
    assert "its inputs: differ from the recording" in section
    assert "the difference came in before this call" in section


def test_a_passing_check_does_not_trace_again(pytester, run, monkeypatch) -> None:
    made = []
    original = recorder_module.GoldenTraceRecorder.__init__

    def counting(self, torch_module) -> None:
        made.append(1)
        original(self, torch_module)

    monkeypatch.setattr(recorder_module.GoldenTraceRecorder, "__init__", counting)
    _recorded(pytester, run)
    assert len(made) == 1  # the recording itself, during the normal run
    run().assert_outcomes(passed=1)
    run("--determinism").assert_outcomes(passed=1)
    assert len(made) == 1
    _write_test(pytester, "weights")
    run().assert_outcomes(failed=1)
    assert len(made) == 2  # the failure path: one traced re-run


def test_the_determinism_fixture_gets_the_analysis_too(pytester, run) -> None:
    _recorded(pytester, run)
    _write_test(pytester, "weights", marker="", args=", determinism")
    result = run()
    result.assert_outcomes(failed=1)
    assert "verdict: the weights changed" in _section(result)


def test_a_failure_that_is_not_a_golden_difference_does_not_trace_again(
    pytester, run, monkeypatch
) -> None:
    _recorded(pytester, run)
    made = []
    original = recorder_module.GoldenTraceRecorder.__init__

    def counting(self, torch_module) -> None:
        made.append(1)
        original(self, torch_module)

    monkeypatch.setattr(recorder_module.GoldenTraceRecorder, "__init__", counting)
    _write_test(pytester, "raises")
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ValueError: after the check*"])
    assert "pytest-determinism: golden trace" not in result.stdout.str()
    assert made == []


def test_unmarked_tests_record_but_do_not_trace_on_failure(pytester, run) -> None:
    _write_test(pytester, marker="")
    run("--update-golden").assert_outcomes(passed=1)
    with read_golden(_golden(pytester)) as golden:
        assert TRACE_KEY in golden.metadata
    _write_test(pytester, "weights", marker="")
    result = run()
    result.assert_outcomes(failed=1)
    assert "pytest-determinism: golden trace" not in result.stdout.str()


def test_ini_golden_trace_false_records_none_and_old_goldens_work(pytester, run) -> None:
    pytester.makeini("[pytest]\ngolden_trace = false\n")
    path = _recorded(pytester, run)
    with read_golden(path) as golden:
        assert TRACE_KEY not in golden.metadata
    run().assert_outcomes(passed=1)
    _write_test(pytester, "weights")
    result = run()
    result.assert_outcomes(failed=1)
    assert "golden mismatch in check 'hidden'" in result.stdout.str()
    assert "pytest-determinism: golden trace" not in result.stdout.str()


def test_bad_ini_golden_trace_is_a_usage_error(pytester, run) -> None:
    pytester.makeini("[pytest]\ngolden_trace = sometimes\n")
    _write_test(pytester)
    result = run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini golden_trace must be true or false, got 'sometimes'*"])


def _corrupt_trace(path: Path) -> None:
    with read_golden(path) as golden:
        metadata = dict(golden.metadata)
        leaves = {key: golden.leaf(key) for key in golden.entries}
        metadata[TRACE_KEY] = '{"format":1,"calls":[["","BertModel",7,0,0,[]]]}'
        leaves = {
            key: type(leaf)(leaf.dtype, leaf.shape, leaf.data.copy())
            for key, leaf in leaves.items()
        }
    write_golden(path, leaves, metadata)


def test_a_corrupt_trace_is_a_clear_error_naming_the_file(pytester, run, capsys) -> None:
    path = _recorded(pytester, run)
    _corrupt_trace(path)
    run().assert_outcomes(passed=1)  # a passing check never reads the trace
    _write_test(pytester, "weights")
    result = run()
    result.assert_outcomes(failed=1)
    section = _section(result)
    assert f"the golden trace in {path} cannot be read: call 0 is malformed" in section
    assert "Re-record it: pytest --update-golden" in section
    capsys.readouterr()
    assert main(["show", str(path)], out=io.StringIO()) == 2
    assert (
        f"{path}: its golden trace cannot be read: call 0 is malformed" in capsys.readouterr().err
    )


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def test_diff_and_show_between_two_goldens(pytester, run, tmp_path) -> None:
    before = tmp_path / "before.safetensors"
    before.write_bytes(_recorded(pytester, run).read_bytes())
    after = _recorded(pytester, run, "weights")
    status, text = _cli("show", str(after))
    assert status == 0
    assert "    trace: 45 module calls (" in text
    status, text = _cli("diff", str(before), str(after))
    assert status == 1
    assert "golden mismatch in" in text
    assert (
        "where the difference started (golden trace: 45 module calls recorded, 45 made now)" in text
    )
    assert "encoder.layer.1.intermediate.dense (Linear), call 37 of 45" in text
    assert "verdict: the weights changed" in text
    status, text = _cli("diff", str(before), str(before))
    assert status == 0
    assert "where the difference started" not in text
    # An old golden on one side: the values are compared, and a line says what is missing.
    old = tmp_path / "old.safetensors"
    with read_golden(before) as golden:
        metadata = {k: v for k, v in golden.metadata.items() if k != TRACE_KEY}
        leaves = {key: golden.leaf(key) for key in golden.entries}
        leaves = {k: type(v)(v.dtype, v.shape, v.data.copy()) for k, v in leaves.items()}
    write_golden(old, leaves, metadata)
    status, text = _cli("diff", str(old), str(after))
    assert status == 1
    assert f"where the difference started: {old} holds no golden trace" in text


def test_diff_plot_draws_a_png(pytester, run, tmp_path) -> None:
    before = tmp_path / "before.safetensors"
    before.write_bytes(_recorded(pytester, run).read_bytes())
    after = _recorded(pytester, run, "epsilon")
    picture = tmp_path / "origin.png"
    status, _ = _cli("diff", str(before), str(after), "--plot", str(picture))
    assert status == 1
    data = picture.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    assert width >= 800 and height >= 400
    assert 10_000 < len(data) < 2_000_000


def test_diff_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(plot, "matplotlib_missing", lambda: True)
    status, _ = _cli("diff", "a.safetensors", "b.safetensors", "--plot", str(tmp_path / "x.png"))
    assert status == 2
    assert 'pip install "pytest-determinism[plot]"' in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_diff_plot_needs_traces_in_both(tmp_path, capsys) -> None:
    from pytest_determinism.golden.values import flatten

    plain = tmp_path / "plain.safetensors"
    write_golden(plain, flatten(torch.ones(3)), {})
    status, _ = _cli("diff", str(plain), str(plain), "--plot", str(tmp_path / "x.png"))
    assert status == 2
    assert f"{plain} holds none" in capsys.readouterr().err


class _Wide(torch.nn.Module):
    """Big outputs, and more of them than a call keeps."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(512, 2048)

    def forward(self, x):
        y = self.linear(x)
        wide = y.double()
        # float64 first: the widest sketches are the ones kept.
        return (
            *(wide * k for k in range(4)),
            *(y * k for k in range(5)),
            y.bfloat16(),
            y.argmax(-1),
        )


def test_the_size_per_call_does_not_grow_with_tensors() -> None:
    torch.manual_seed(0)
    model = _Wide()
    sizes = []
    for rows in (1, 256):
        with torch.no_grad(), recording() as recorder:
            model(torch.randn(rows, 512))
        trace = recorder.golden_trace()
        assert len(trace) == 2
        sizes.append(len(encode_trace(trace)))
    # Shapes and numbers print with a few more digits; tensors 256 times larger add nothing.
    assert abs(sizes[0] - sizes[1]) < 32
    assert max(sizes) / 2 <= 1024
    outputs = trace.calls[0].outputs
    assert [o.dtype for o in outputs] == ["float64"] * 4 + ["more"]
    assert outputs[-1].path == "+7"


_names = st.text(max_size=12)
_outputs = st.builds(
    TracedOutput,
    path=_names,
    dtype=st.sampled_from(["float32", "bfloat16", "int64", "float64"]),
    shape=st.lists(st.integers(0, 9), max_size=4).map(tuple),
    digest=st.integers(-1, 2**32),
    samples=st.none(),
    norm=st.none() | st.floats(allow_nan=False, allow_infinity=False),
)


@st.composite
def _traces(draw: st.DrawFn) -> GoldenTrace:
    count = draw(st.integers(0, 6))
    calls = []
    for index in range(count):
        outputs = draw(st.lists(_outputs, max_size=4))
        outputs = [
            TracedOutput(
                o.path, o.dtype, o.shape, o.digest, draw(st.binary(max_size=8)) * 8, o.norm
            )
            if o.dtype != "int64"
            else o
            for o in outputs
        ]
        calls.append(
            TracedCall(
                qualname=draw(_names),
                cls=draw(_names),
                parent=draw(st.integers(-1, index - 1)),
                inputs=draw(st.integers(0, 2**32)),
                params=draw(st.integers(0, 2**32)),
                outputs=tuple(outputs),
            )
        )
    return GoldenTrace(tuple(calls))


@settings(max_examples=50, deadline=None)
@given(_traces())
def test_a_trace_round_trips_through_its_text(trace: GoldenTrace) -> None:
    text = encode_trace(trace)
    assert decode_trace(text) == trace
    assert encode_trace(decode_trace(text)) == text
    json.loads(text)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "it is not valid JSON"),
        ('{"format":2,"calls":[]}', "its format is 2, not 1"),
        ('{"format":1}', "it holds no list of calls"),
        (
            '{"format":1,"calls":[["a","B",-1,0,0,[["","float99",[1],0,"AAAA",null]]]]}',
            "samples of an output of dtype 'float99'",
        ),
        ('{"format":1,"calls":[["a","B",3,0,0,[]]]}', "parent 3 is not an earlier call"),
        (
            '{"format":1,"calls":[["a","B",-1,0,0,[["","float32",[1],0,"%%",null]]]]}',
            "call 0 is malformed",
        ),
    ],
)
def test_a_bad_trace_text_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        decode_trace(text)


SEED_DEPENDENT = """
import pytest
import torch


class Noisy(torch.nn.Module):
    def forward(self, x):
        return x + torch.randn_like(x)


@pytest.mark.deterministic
def test_noise(golden_tensor):
    golden_tensor.check(Noisy()(torch.ones(4)), name="out")
"""


@pytest.mark.parametrize("runs", ["1", "2"])
def test_recording_leaves_the_seed_probe_its_first_run(pytester, run, runs) -> None:
    # The probe listens to run 0's outermost calls; the recording block must pass them on.
    pytester.makepyfile(test_noise=SEED_DEPENDENT)
    result = run("--update-golden", "--determinism", "--determinism-runs", runs)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Seed-dependent: the probe run differs from run 0*"])
    assert not list(pytester.path.glob("__golden__/**/*.safetensors"))


def test_recording_in_run_0_keeps_a_repeatable_test_passing(pytester, run) -> None:
    # Run 0 is the seed probe's reference: unheard, its calls would read as a mismatch.
    _write_test(pytester)
    result = run("--update-golden", "--determinism", "--determinism-runs", "1")
    result.assert_outcomes(passed=1)
    with read_golden(_golden(pytester)) as golden:
        assert len(decode_trace(golden.metadata[TRACE_KEY])) == 45


def _call(qualname: str, parent: int) -> TracedCall:
    return TracedCall(qualname, "Block", parent, 0, 0, ())


def test_the_growth_line_opens_containers_of_numbered_blocks_and_elides_the_middle() -> None:
    from pytest_determinism.nondeterminism.growth import (
        format_difference,
        growth_line,
        growth_of,
    )

    calls = [_call("", -1), _call("embeddings", 0), _call("encoder", 0)]
    for layer in range(12):
        calls.append(_call(f"encoder.layer.{layer}", 2))
        calls.append(_call(f"encoder.layer.{layer}.attention", len(calls) - 1))
    calls.append(_call("lm_head", 0))
    trace = GoldenTrace(tuple(calls))
    blocks = [3 + 2 * layer for layer in range(12)]
    differences = {1: 0.0, **{b: 2e-7 * 10**k for k, b in enumerate(blocks)}, len(calls) - 1: 4e-3}
    growth = growth_of(trace, differences)
    assert [node.name for node in growth] == [
        "embeddings",
        *(f"layer.{k}" for k in range(12)),
        "lm_head",
    ]
    assert growth_line(growth, first=4) == (
        "embeddings 0 -> layer.0 2e-7 -> layer.1 2e-6 -> layer.2 2e-5 -> layer.3 2e-4 -> "
        "layer.4 2e-3 -> ... -> layer.11 2e4 -> lm_head 4e-3"
    )
    assert [format_difference(v) for v in (0.0, 1.3e-6, 0.5, 150.0, math.inf)] == [
        "0",
        "1.3e-6",
        "0.5",
        "1.5e2",
        "inf",
    ]


def test_a_sketch_is_the_same_at_any_thread_count() -> None:
    # Byte-stable goldens: the norm must not follow how a reduction is split.
    from pytest_determinism.nondeterminism.sketch import take_sketch

    values = torch.randn(3_000_000, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = take_sketch(torch, values)
        torch.set_num_threads(2)
        two = take_sketch(torch, values)
    finally:
        torch.set_num_threads(threads)
    assert one == two
    assert one[1] == pytest.approx(float(values.double().norm()), rel=1e-12)
    assert len(one[0]) == 16 * 4


class _Summing(torch.nn.Module):
    """The same sum in one order or the other: a rounding difference, nothing more."""

    def __init__(self, reverse: bool) -> None:
        super().__init__()
        self.reverse = reverse

    def forward(self, x):
        return (x.flip(-1) if self.reverse else x).sum(-1)


def test_differences_within_tolerance_name_the_first_call_that_changed() -> None:
    from pytest_determinism.golden.tolerances import default_tolerance
    from pytest_determinism.nondeterminism.origin import find_origin

    x = torch.randn(64, 4096, generator=torch.Generator().manual_seed(0))
    traces = []
    for reverse in (False, True):
        model = torch.nn.Sequential(_Summing(reverse), torch.nn.Identity())
        with torch.no_grad(), recording() as recorder:
            model(x)
        traces.append(recorder.golden_trace())
    same = find_origin(traces[0], traces[0], default_tolerance).message()
    assert "every module call's output is as recorded, bit for bit" in same
    origin = find_origin(traces[0], traces[1], default_tolerance)
    assert origin.first is None
    assert origin.first_changed is not None
    text = origin.message()
    assert "no module call's output differs beyond its tolerance; the first whose bits " in text
    assert "differ: 0 (_Summing), call 2 of 3" in text
    assert "within rtol 1.3e-6 (float32)" in text
    assert "drift kind of its output: rounding (" in text


def test_a_swapped_activation_is_named_where_the_sequences_part() -> None:
    # The CI mode's tracer skips torch's elementwise activations (they cannot make two
    # runs part); a golden trace compares two versions of a model, and ReLU for GELU is
    # exactly the change to name.
    from pytest_determinism.golden.tolerances import default_tolerance
    from pytest_determinism.nondeterminism.origin import find_origin

    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    traces = []
    for activation in (torch.nn.ReLU(), torch.nn.GELU()):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), activation, torch.nn.Linear(8, 2))
        with torch.no_grad(), recording() as recorder:
            model(x)
        traces.append(recorder.golden_trace())
    assert [call.cls for call in traces[0].calls] == ["Sequential", "Linear", "ReLU", "Linear"]
    text = find_origin(traces[0], traces[1], default_tolerance).message()
    assert "the sequences of module calls part at call 3: recorded 1 (ReLU), now 1 (GELU)" in text
