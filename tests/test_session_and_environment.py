"""Session-wide behaviour: header, CUBLAS_WORKSPACE_CONFIG, PYTHONHASHSEED, imports, no torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


def test_header_names_seed_torch_and_environment(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile("def test_fine():\n    pass\n")
    result = run("--determinism-seed", "3")
    result.stdout.fnmatch_lines(
        [
            "determinism: seed 3, torch 2.*, CUBLAS_WORKSPACE_CONFIG=*, PYTHONHASHSEED=*",
        ]
    )


def test_cublas_workspace_config_set_when_unset_and_restored(
    pytester: pytest.Pytester, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    pytester.makepyfile(
        """
import os

def test_env():
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
"""
    )
    run().assert_outcomes(passed=1)
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_user_cublas_workspace_config_is_kept(
    pytester: pytest.Pytester, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    pytester.makepyfile(
        """
import os

def test_env():
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
"""
    )
    run().assert_outcomes(passed=1)


def test_ci_mode_warns_when_pythonhashseed_is_unset(
    pytester: pytest.Pytester, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    pytester.makepyfile("def test_fine():\n    pass\n")
    result = run("--determinism")
    result.stdout.fnmatch_lines(["*DeterminismWarning: PYTHONHASHSEED is unset*PYTHONHASHSEED=0*"])
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    run("--determinism").stdout.no_fnmatch_line("*PYTHONHASHSEED is unset*")


def _python(code: str, **env: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return completed.stdout.strip()


def test_loading_the_plugin_imports_neither_torch_nor_hypothesis() -> None:
    out = _python(
        """
        import sys
        from importlib.metadata import entry_points
        [e.load() for e in entry_points(group="pytest11") if e.name == "determinism"]
        import pytest_determinism
        print(sorted(m for m in ("torch", "hypothesis", "numpy") if m in sys.modules))
        """
    )
    assert out == "[]"


SITECUSTOMIZE = """
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is hidden for this test")
        return None

sys.meta_path.insert(0, _NoTorch())
"""


def test_without_torch_the_marker_seeds_random_and_numpy(pytester: pytest.Pytester) -> None:
    """A project without torch: the marker still seeds random and NumPy, nothing breaks."""
    hide = pytester.mkdir("hide_torch")
    (hide / "sitecustomize.py").write_text(SITECUSTOMIZE)
    pytester.makepyfile(
        """
import random
import numpy as np
import pytest

def test_torch_really_hidden():
    with pytest.raises(ImportError):
        import torch

@pytest.mark.deterministic(seed=4)
def test_seeded():
    drawn = (random.random(), float(np.random.rand()))
    random.seed(4); np.random.seed(4)
    assert drawn == (random.random(), float(np.random.rand()))

def test_golden_numpy(golden_tensor):
    golden_tensor.check(np.arange(4.0), name="x")
"""
    )
    pytester._monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")])
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly", "--determinism")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*pytest --update-golden*test_golden_numpy*"])
    result = pytester.runpytest_subprocess("-p", "no:randomly", "--update-golden")
    result.assert_outcomes(passed=3)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "--determinism")
    result.assert_outcomes(passed=3)
    # test_seeded checks no values: its runs are compared only on whether they raised.
    result.stdout.fnmatch_lines(
        ["determinism: 1 tests x 2 runs*0 nondeterministic, 1 checked no values"]
    )


def test_record_command_runs_from_where_pytest_was_started(
    pytester: pytest.Pytester, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\n")
    sub = pytester.mkdir("models")
    (sub / "test_logits.py").write_text(
        "import numpy as np\n\ndef test_y(golden_tensor):\n    golden_tensor.check(np.ones(2))\n"
    )
    monkeypatch.chdir(sub)
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*pytest --update-golden 'test_logits.py::test_y'*"])
    run("--update-golden", "test_logits.py::test_y").assert_outcomes(passed=1)
    golden = next(sub.rglob("*.safetensors"))
    assert golden.stat().st_mode & 0o111 == 0, "goldens are data, not executables"


def test_every_record_command_runs_from_a_subfolder(
    pytester: pytest.Pytester, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The command printed for a mismatch, a missing check name and the CI mode's deferred
    # mismatch must name the test relative to where pytest was started, not the rootdir.
    pytester.makeini("[pytest]\n")
    sub = pytester.mkdir("models")
    (sub / "test_logits.py").write_text(
        "import os\n"
        "import numpy as np\n"
        "import pytest\n\n"
        "def test_y(golden_tensor):\n"
        "    golden_tensor.check(np.full(2, float(os.environ.get('VALUE', '1'))))\n\n"
        "@pytest.mark.deterministic\n"
        "def test_z(golden_tensor):\n"
        "    golden_tensor.check(np.full(2, float(os.environ.get('VALUE', '1'))))\n"
        "    if os.environ.get('MORE'):\n"
        "        golden_tensor.check(np.ones(1), name='more')\n"
    )
    monkeypatch.chdir(sub)
    run("--update-golden").assert_outcomes(passed=2)
    monkeypatch.setenv("VALUE", "2")
    result = run()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        ["*to accept the new values: pytest --update-golden 'test_logits.py::test_y'"]
    )
    result.stdout.no_fnmatch_line("*--update-golden 'models/*")
    result = run("--determinism")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        ["*to accept the new values: pytest --update-golden 'test_logits.py::test_z'"]
    )
    result.stdout.no_fnmatch_line("*--update-golden 'models/*")
    monkeypatch.setenv("VALUE", "1")
    monkeypatch.setenv("MORE", "1")
    result = run("--determinism", "test_logits.py::test_z")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*has nothing recorded for check 'more'*",
            "*pytest --update-golden 'test_logits.py::test_z'",
        ]
    )
    result.stdout.no_fnmatch_line("*--update-golden 'models/*")


def test_strict_mode_failure_has_no_traceback_from_torch_or_the_plugin(
    pytester: pytest.Pytester, run
) -> None:
    pytester.makepyfile(
        """
import pytest
import torch

@pytest.mark.deterministic(eval_mode="strict")
def test_strict():
    torch.nn.Sequential(torch.nn.Dropout(0.5))(torch.ones(2))
"""
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["Sequential was called in training mode*", "*(raised at *:6)"])
    result.stdout.no_fnmatch_line("*torch/nn/modules/module.py*")
    result.stdout.no_fnmatch_line("*pytest_determinism/*.py*")


def test_a_session_without_marked_tests_imports_no_numpy(pytester: pytest.Pytester) -> None:
    """An installed but unused plugin costs almost nothing: NumPy alone is 60-70 ms."""
    pytester.makepyfile("import sys\n\ndef test_plain():\n    assert 'numpy' not in sys.modules\n")
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:hypothesispytest")
    result.assert_outcomes(passed=1)
