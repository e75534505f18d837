"""After every marked test the global state equals what it was before, whatever ran."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_determinism.state import snapshot as state

# Each body disturbs global state the way real tests do; marked tests must undo all of it.
DISTURBANCES = {
    "draw": "random.random(); np.random.rand(3); torch.rand(3)",
    "reseed": "random.seed(99); np.random.seed(99); torch.manual_seed(99)",
    "flags": "torch.use_deterministic_algorithms(False); torch.backends.cudnn.benchmark = True",
    "warn_only": "torch.use_deterministic_algorithms(True, warn_only=True)",
    "tf32": "torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True",
    "precision": 'torch.set_float32_matmul_precision("medium")',
    "threads": "torch.set_num_threads(1)",
    "env": 'os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"',
    "fill": "torch.utils.deterministic.fill_uninitialized_memory = False",
    "nothing": "pass",
}

MARKER_OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "seed": st.integers(0, 2**32 - 1),
        "eval_mode": st.sampled_from([True, False, "strict"]),
        "warn_only": st.booleans(),
        "tf32": st.booleans(),
        "threads": st.sampled_from([None, 1, 2]),
        "stochastic": st.booleans(),
    },
)

TESTS = st.lists(
    st.tuples(
        st.one_of(st.none(), MARKER_OPTIONS),
        st.lists(st.sampled_from(sorted(DISTURBANCES)), max_size=3),
    ),
    min_size=1,
    max_size=6,
)

CONFTEST = """
import pytest
from pytest_determinism.state import snapshot as state

def pytest_configure(config):
    config.snapshot_errors = []

@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    before = state.capture()
    result = yield
    after = state.capture()
    if item.get_closest_marker("deterministic") and after != before:
        item.config.snapshot_errors.append(item.nodeid)
    return result

def pytest_terminal_summary(terminalreporter, config):
    terminalreporter.write_line(f"SNAPSHOT ERRORS: {config.snapshot_errors}")
"""


def _test_file(tests: list[tuple[dict[str, object] | None, list[str]]]) -> str:
    lines = ["import os, random", "import numpy as np", "import pytest", "import torch", ""]
    for index, (options, disturbances) in enumerate(tests):
        if options is not None:
            args = ", ".join(f"{key}={value!r}" for key, value in options.items())
            lines.append(f"@pytest.mark.deterministic({args})")
        lines.append(f"def test_{index}():")
        lines.extend(f"    {DISTURBANCES[name]}" for name in disturbances or ["nothing"])
        lines.append("")
    return "\n".join(lines)


@settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tests=TESTS)
def test_marked_tests_restore_everything(pytester: pytest.Pytester, tests) -> None:
    before = state.capture()
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_state=_test_file(tests))
    try:
        result = pytester.runpytest("-p", "no:randomly", "-q")
    finally:
        # Unmarked tests may leave state behind, which is theirs to own; the outer
        # session must not inherit it.
        state.restore(before)
    result.assert_outcomes(passed=len(tests))
    result.stdout.fnmatch_lines(["SNAPSHOT ERRORS: []"])


def test_the_snapshot_sees_each_disturbance() -> None:
    """The property above is only as strong as the snapshot: it must see every change."""
    import os
    import random

    import numpy as np
    import torch

    for name, code in DISTURBANCES.items():
        if name == "nothing":
            continue
        before = state.capture()
        try:
            # "flags" only shows when the algorithms were deterministic to begin with.
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
            reference = state.capture()
            exec(code, {"os": os, "random": random, "np": np, "torch": torch})
            assert state.capture() != reference, name
        finally:
            state.restore(before)
    assert state.capture() == before


def test_teardown_draws_the_same_numbers_with_or_without_the_ci_mode(
    pytester: pytest.Pytester, run
) -> None:
    """The runs of --determinism leave the RNGs as one run of the body leaves them."""
    pytester.makepyfile(
        """
import os, random
import numpy as np
import pytest
import torch

@pytest.fixture
def after_body():
    yield
    with open(os.environ["TEARDOWN_DRAWS"], "a") as out:
        out.write(f"{random.random()} {np.random.rand()} {torch.rand(1).item()}\\n")

@pytest.mark.deterministic
def test_draws(after_body):
    random.random(); np.random.rand(2)
    torch.nn.Linear(2, 2)(torch.rand(1, 2))
"""
    )
    draws = pytester.path / "draws.txt"
    pytester._monkeypatch.setenv("TEARDOWN_DRAWS", str(draws))
    run().assert_outcomes(passed=1)
    run("--determinism").assert_outcomes(passed=1)
    plain, checked = draws.read_text().splitlines()
    assert plain == checked
