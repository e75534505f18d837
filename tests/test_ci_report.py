"""--determinism-report: JSON per test, valid against its schema; JUnit XML properties."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import jsonschema
import pytest

from pytest_determinism.json_report import SCHEMA_PATH

SUITE = """
import numpy as np
import pytest
import torch

class Noisy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rng = np.random.default_rng()

    def forward(self, x):
        return x + torch.from_numpy(self.rng.random(x.shape).astype("float32"))

@pytest.mark.deterministic(seed=3)
def test_good(golden_tensor):
    golden_tensor.check(torch.linspace(0, 1, 5), name="y")
    golden_tensor.check({"a": torch.ones(2), "b": torch.tensor([float("inf")])}, name="d")

@pytest.mark.deterministic
def test_noisy(golden_tensor):
    golden_tensor.check(Noisy()(torch.ones(3)), name="y")

def test_unmarked():
    pass
"""


def test_json_report_validates_and_says_what_happened(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(test_suite=SUITE)
    run("--update-golden")
    report_path = pytester.path / "out" / "report.json"
    result = run("--determinism", "--determinism-report", str(report_path))
    result.assert_outcomes(passed=2, failed=1)
    report = json.loads(report_path.read_text())
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))
    tests = {t["nodeid"]: t for t in report["tests"]}
    assert set(tests) == {"test_suite.py::test_good", "test_suite.py::test_noisy"}
    good, noisy = tests["test_suite.py::test_good"], tests["test_suite.py::test_noisy"]
    assert good["outcome"] == "passed" and good["seed"] == 3 and good["runs"] == 2
    assert good["probe_run"] is True and good["nondeterministic"] is False
    keys = {g["key"]: g for g in good["goldens"]}
    assert set(keys) == {"y", "d.a", "d.b"}
    assert keys["y"]["tolerance"] and keys["y"]["max_abs_diff"] == 0
    assert noisy["outcome"] == "failed" and noisy["nondeterministic"] is True
    assert noisy["verdict"] == "repeat"
    assert noisy["first_diverging_module"] and noisy["first_diverging_class"] == "Noisy"
    # The unseeded NumPy draw enters torch through from_numpy, inside Noisy.forward.
    assert noisy["reproduced"] is True and noisy["first_diverging_op"].startswith("aten.")
    assert noisy["source_line"].startswith("test_suite.py:")
    assert "in forward: return x + torch.from_numpy(" in noisy["source_line"]
    assert good["reproduced"] is None and good["first_diverging_op"] is None
    assert report["summary"]["nondeterministic"] == ["test_suite.py::test_noisy"]
    assert report["session"]["ci_mode"] is True and report["schema_version"] == 1


def test_schema_rejects_a_broken_report() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema_version": 1, "tests": []}, schema)


def test_junit_xml_gets_the_key_figures(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(test_suite=SUITE)
    run("--update-golden")
    run("--determinism", "--junitxml", "junit.xml")
    tree = ET.parse(pytester.path / "junit.xml")
    props = {
        (case.get("name"), p.get("name")): p.get("value")
        for case in tree.iter("testcase")
        for p in case.iter("property")
    }
    assert props[("test_good", "determinism_seed")] == "3"
    assert props[("test_good", "determinism_runs")] == "2"
    assert props[("test_noisy", "determinism_nondeterministic")] == "True"
    assert props[("test_good", "golden_y_max_abs_diff")] == "0.0"
