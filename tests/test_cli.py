"""``python -m pytest_determinism show|diff``: output, exit status, and never a traceback."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_determinism.cli import main
from pytest_determinism.golden.values import flatten
from pytest_determinism.golden.writing import write_golden


def _write(path: Path, value: object, **metadata: str) -> Path:
    write_golden(path, flatten(value), metadata)
    return path


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    status = main(list(argv), out=out)
    return status, out.getvalue()


def test_show_lists_keys_statistics_and_metadata(tmp_path: Path) -> None:
    values = torch.tensor([[1.0, -2.0], [float("nan"), float("inf")]])
    first = _write(
        tmp_path / "a.safetensors",
        {"logits": values, "tokens": torch.tensor([3, 1]), "half": torch.ones(1).bfloat16()},
        torch="2.13.0",
        seed="0",
    )
    second = _write(tmp_path / "b.safetensors", {"x": np.zeros(0)})
    status, text = _run("show", str(first), str(second))
    assert status == 0
    lines = text.splitlines()
    assert lines[0] == str(first)
    assert "  3 keys" in lines
    logits = next(line for line in lines if "logits" in line)
    assert "float32" in logits
    assert "(2, 2)" in logits
    assert "min -2.0" in logits
    assert "max 1.0" in logits
    assert "mean -0.5" in logits
    assert "nan 1" in logits
    assert "inf 1" in logits
    assert any("tokens" in line and "int64" in line and "min 1" in line for line in lines)
    assert any("half" in line and "bfloat16" in line for line in lines)
    assert "    torch: 2.13.0" in lines
    assert "    seed: 0" in lines
    assert str(second) in lines
    assert "    (none)" in lines


def test_diff_exit_status_and_report(tmp_path: Path) -> None:
    base = torch.linspace(0, 1, 10)
    golden = _write(tmp_path / "golden.safetensors", {"x": base, "y": torch.ones(2)}, torch="2.4")
    same = _write(
        tmp_path / "same.safetensors", {"x": base + 1e-8, "y": torch.ones(2)}, torch="2.4"
    )
    moved = _write(
        tmp_path / "moved.safetensors", {"x": base * 1.01, "z": torch.ones(1)}, torch="2.13"
    )
    status, text = _run("diff", str(golden), str(same))
    assert (status, text.strip()) == (0, f"{same} matches {golden} (2 keys)")
    status, text = _run("diff", str(golden), str(moved))
    assert status == 1
    assert f"golden mismatch in {moved} against {golden}" in text
    assert "numbers drifted: 'x' float32 (10,): 9 of 10 elements (90%) differ" in text
    assert "missing: in the golden but not checked: 'y'" in text
    assert "extra: checked but not in the golden: 'z'" in text
    assert "recorded elsewhere" in text
    assert "torch 2.4 -> 2.13" in text
    assert _run("diff", "--rtol", "0.02", str(golden), str(moved))[0] == 1
    loose = _write(tmp_path / "loose.safetensors", {"x": base * 1.01, "y": torch.ones(2)})
    assert _run("diff", "--rtol", "0.02", str(golden), str(loose))[0] == 0
    assert _run("diff", "--exact", str(golden), str(same))[0] == 1


def test_diff_reports_dtype_drift(tmp_path: Path) -> None:
    golden = _write(tmp_path / "g.safetensors", {"h": torch.ones(3)})
    other = _write(tmp_path / "o.safetensors", {"h": torch.ones(3).bfloat16()})
    status, text = _run("diff", str(golden), str(other))
    assert status == 1
    assert "dtype changed: 'h' is bfloat16 now, the golden is float32" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show", "{missing}"], "no such file"),
        (["show", "{folder}"], "is a folder"),
        (["show", "{corrupt}"], "not a valid golden file"),
        (["diff", "{good}", "{corrupt}"], "not a valid golden file"),
        (["diff", "{good}"], "the following arguments are required: OTHER"),
        (["diff", "--rtol", "-1", "{good}", "{good}"], "--rtol must be a number >= 0"),
        (["frobnicate"], "invalid choice"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_input_exits_2_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    good = _write(tmp_path / "good.safetensors", {"x": torch.ones(1)})
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(good.read_bytes()[:-2])
    names = {
        "missing": tmp_path / "missing.safetensors",
        "folder": tmp_path,
        "corrupt": corrupt,
        "good": good,
    }
    status, _ = _run(*(arg.format(**names) for arg in argv))
    err = capsys.readouterr().err
    assert status == 2
    assert message in err
    assert "Traceback" not in err


def test_module_entry_point(tmp_path: Path) -> None:
    golden = _write(tmp_path / "g.safetensors", {"x": torch.ones(1)})
    result = subprocess.run(
        [sys.executable, "-m", "pytest_determinism", "show", str(golden)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert "float32" in result.stdout
    broken = subprocess.run(
        [sys.executable, "-m", "pytest_determinism", "show", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert broken.returncode == 2
    assert "Traceback" not in broken.stderr
    helped = subprocess.run(
        [sys.executable, "-m", "pytest_determinism", "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0
    assert "show" in helped.stdout
    assert "diff" in helped.stdout
