"""Why a golden differs, as a user reads it: the kind per key in failures, `diff` and JSON."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from pytest_determinism.cli import main
from pytest_determinism.golden.values import flatten
from pytest_determinism.golden.writing import write_golden

MODEL = """
import copy, os
import pytest
import torch

MODE = os.environ.get("MODE", "float32")

@pytest.mark.deterministic
def test_logits(golden_tensor):
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 8))
    x = torch.randn(16, 64)
    with torch.no_grad():
        if MODE in ("bfloat16", "float16"):
            dtype = getattr(torch, MODE)
            out = copy.deepcopy(model).to(dtype)(x.to(dtype)).float()
        elif MODE == "bias":
            model[2].bias.add_(0.01)
            out = model(x)
        elif MODE == "nan":
            out = model(x)
            out[3, 1] = float("nan")
        else:
            out = model(x)
    golden_tensor.check(out, name="logits")
    golden_tensor.check(out.argmax(-1) + (MODE == "bias"), name="labels")
    golden_tensor.check((out > 0) ^ (MODE == "bias"), name="positive")
"""


@pytest.fixture
def recorded(pytester: pytest.Pytester, run) -> pytest.Pytester:
    pytester.makepyfile(test_model=MODEL)
    run("--update-golden").assert_outcomes(passed=1)
    return pytester


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_narrower_cast_back_is_precision_with_its_type(
    recorded: pytest.Pytester, run, monkeypatch: pytest.MonkeyPatch, dtype: str
) -> None:
    monkeypatch.setenv("MODE", dtype)
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*numbers drifted: 'logits' float32 (16, 8)*",
            f"*kind: precision (the values carry only {dtype} precision, the golden full "
            f"float32): the computation now runs in {dtype} and is cast back "
            f"(model.to(torch.{dtype}), autocast)",
        ]
    )
    result.stdout.no_fnmatch_line("*kind: rounding*")
    result.stdout.no_fnmatch_line("*kind: computation*")


def test_the_reverse_says_the_golden_carries_the_narrower_precision(
    recorded: pytest.Pytester, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODE", "bfloat16")
    run("--update-golden").assert_outcomes(passed=1)
    monkeypatch.setenv("MODE", "float32")
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*kind: precision (the golden carries only bfloat16 precision, the values full float32)*"]
    )


def test_a_changed_bias_is_computation_never_rounding(
    recorded: pytest.Pytester, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODE", "bias")
    # Under --determinism every check runs before the failures are reported.
    result = run("--determinism", "--determinism-report", "report.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*kind: computation (* ulps of float32 at magnitude *): what is computed changed"]
    )
    result.stdout.no_fnmatch_line("*kind: rounding*")
    result.stdout.no_fnmatch_line("*kind: precision*")
    entries = json.loads((recorded.path / "report.json").read_text())["tests"][0]["goldens"]
    by_key = {entry["key"]: entry for entry in entries}
    assert by_key["logits"]["kind"] == "computation"
    assert by_key["logits"]["ulps"] > 1000
    # Integers and bools are equal or not: they get no kind.
    assert by_key["labels"]["outcome"] == by_key["positive"]["outcome"] == "failed"
    assert "kind" not in by_key["labels"]
    assert "kind" not in by_key["positive"]


def test_a_nan_that_appeared_is_computation(
    recorded: pytest.Pytester, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODE", "nan")
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*kind: computation (NaN or infinity where the golden had a number, or the reverse)*"]
    )


SUM = """
import pytest
import torch

@pytest.mark.deterministic
def test_total(golden_tensor):
    x = torch.randn(8_000_000)
    # A sum whose terms cancel: its thread-split order moves it by tens of ulps.
    golden_tensor.check(x.sum().reshape(1), name="total")
"""


def test_the_same_sum_in_another_order_is_rounding_and_the_pin_is_suggested(
    pytester: pytest.Pytester, run
) -> None:
    pytester.makepyfile(test_sum=SUM)
    run("--update-golden", "--determinism-threads", "2").assert_outcomes(passed=1)
    result = run("--determinism-threads", "1")
    if result.ret == 0:
        pytest.skip("this CPU sums 8M floats identically at 1 and 2 threads")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*kind: rounding (* ulps of float32 at magnitude *): the same computation summed "
            "in another order (thread count, batch size or padding, a kernel or library "
            "version, TF32)",
            "*recorded elsewhere: the golden was made in another environment (threads 2 -> 1), "
            "which explains rounding: pin the thread count the golden was recorded with (ini "
            "determinism_threads = 2, or the marker's threads=2); or record goldens per "
            "environment; or loosen the tolerance to cover * ulps (atol=*)",
        ]
    )
    result.stdout.no_fnmatch_line("*kind: computation*")


def _write(path: Path, values: dict[str, torch.Tensor], **metadata: str) -> Path:
    write_golden(path, flatten(values), {"format": "pytest-determinism/1", **metadata})
    return path


def _diff(golden: Path, other: Path) -> tuple[int, str]:
    out = io.StringIO()
    status = main(["diff", str(golden), str(other)], out=out)
    return status, out.getvalue()


def test_diff_names_the_kind_per_key(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(256, generator=generator)
    golden = _write(tmp_path / "g.safetensors", {"a": base, "b": base, "c": base})
    moved = base.clone()
    moved[5] = torch.nextafter(moved[5], torch.tensor(10.0))
    other = _write(
        tmp_path / "o.safetensors",
        {"a": base.bfloat16().float(), "b": base + 0.5, "c": moved},
    )
    status, text = _diff(golden, other)
    assert status == 1
    lines = text.splitlines()
    kinds = {
        line.split("'")[1]: lines[i + 1].strip()
        for i, line in enumerate(lines)
        if "numbers drifted: '" in line
    }
    assert kinds["a"].startswith("kind: precision (the values carry only bfloat16 precision")
    assert kinds["b"].startswith("kind: computation (")
    # One ulp of one element, but compared at the default tolerance it passes: not listed.
    assert "c" not in kinds
    out = io.StringIO()
    assert main(["diff", "--exact", str(golden), str(other)], out=out) == 1
    exact_text = out.getvalue()
    # One ulp of an element two binades below the key's largest: a quarter ulp at its scale.
    assert "kind: rounding (0.25 ulps of float32 at magnitude" in exact_text


def test_a_bfloat16_golden_compared_with_bfloat16_values(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(64, generator=generator).bfloat16()
    golden = _write(tmp_path / "g.safetensors", {"h": base})
    status, text = _diff(golden, _write(tmp_path / "near.safetensors", {"h": base * 1.25}))
    assert status == 1
    assert "kind: computation (" in text
    assert "ulps of bfloat16" in text
    assert "precision (" not in text
