"""--determinism through real pytest runs: every verdict names the right module."""

from __future__ import annotations

import pytest

MODELS = """
import numpy as np
import pytest
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Sequential(
            torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.ReLU()
        )
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.enc(x))

class RandomMask(torch.nn.Module):
    '''Draws from torch's RNG in eval mode: random masking, as some real models do.'''
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.proj(x) * (torch.rand_like(x) > 0.3)

class Unseeded(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.noise = NumpyNoise()

    def forward(self, x):
        return self.noise(self.lin(x))

class NumpyNoise(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rng = np.random.default_rng()   # unseeded: a fresh OS seed

    def forward(self, x):
        return x + torch.from_numpy(self.rng.random(x.shape).astype("float32"))
"""


def _ci(pytester: pytest.Pytester, body: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_models=MODELS + body)
    pytester.runpytest("-p", "no:randomly", "--update-golden", "-q")
    return pytester.runpytest("-p", "no:randomly", "--determinism", *args)


def test_dropout_in_training_mode_is_found_by_the_probe(pytester: pytest.Pytester) -> None:
    result = _ci(
        pytester,
        """
@pytest.mark.deterministic(eval_mode=False, stochastic=False)
def test_dropout(golden_tensor):
    golden_tensor.check(Net()(torch.ones(2, 8)), name="logits")
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "Seed-dependent: the probe run differs from run 0*",
            "*logits: float32[[]2, 2[]]*differ*",
            "*module: enc.1",
            "*class: Dropout*",
            "*mode: training",
            "*inputs: identical",
            "*likely cause: stochastic layer in training mode",
            "*fix: call model.eval()*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["determinism: 1 tests x 2 runs (+1 other-seed run), 1 nondeterministic"]
    )


def test_dropout_is_repeatable_once_reseeded(pytester: pytest.Pytester) -> None:
    """stochastic=True: only the repeat runs are asked, and reseeding makes them agree."""
    result = _ci(
        pytester,
        """
@pytest.mark.deterministic(eval_mode=False)
def test_training_step(golden_tensor):
    golden_tensor.check(Net()(torch.ones(2, 8)), name="logits")
""",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["determinism: 1 tests x 2 runs, 0 nondeterministic"])


def test_rng_draw_in_eval_mode(pytester: pytest.Pytester) -> None:
    result = _ci(
        pytester,
        """
class Wrapper(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(8, 8)
        self.mask = RandomMask()

    def forward(self, x):
        return self.mask(self.embed(x))

@pytest.mark.deterministic
def test_masking(golden_tensor):
    golden_tensor.check(Wrapper()(torch.ones(2, 8)))
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "Seed-dependent*",
            "*module: mask",
            "*class: RandomMask*",
            "*mode: eval",
            "*inputs: identical",
        ]
    )


def test_unseeded_numpy_generator_inside_a_module(pytester: pytest.Pytester) -> None:
    result = _ci(
        pytester,
        """
@pytest.mark.deterministic
def test_noise(golden_tensor):
    golden_tensor.check(Unseeded()(torch.ones(1, 4)), name="y")
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "Nondeterministic: run 1 differs from run 0*",
            "*module: noise",
            "*class: NumpyNoise*",
            "*inputs: identical",
            "*likely cause: randomness outside the seeded RNGs",
        ]
    )


def test_randomness_before_the_model(pytester: pytest.Pytester) -> None:
    result = _ci(
        pytester,
        """
@pytest.mark.deterministic
def test_inputs_vary(golden_tensor):
    net = Net()
    x = torch.from_numpy(np.random.default_rng().random((2, 8)).astype("float32"))
    golden_tensor.check(net(x), name="logits")
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["Nondeterministic*", "*inputs: differ*"])
    result.stdout.fnmatch_lines(["*the cause lies before the model*"])


def test_deterministic_model_built_in_the_body_passes(pytester: pytest.Pytester) -> None:
    """Weights and inputs drawn from the seed in the test body are no false alarm."""
    result = _ci(
        pytester,
        """
@pytest.mark.deterministic
def test_model(golden_tensor):
    net = Net()
    x = torch.randn(4, 8)
    golden_tensor.check(net(x), name="logits")
    torch.rand(3)  # a draw between two forward calls
    golden_tensor.check(net(torch.randn(4, 8)), name="again")
""",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "golden: 2 passed",
            "determinism: 1 tests x 2 runs (+1 other-seed run), 0 nondeterministic",
        ]
    )


def test_nondeterminism_is_reported_before_a_golden_mismatch(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_models=MODELS
        + """
@pytest.mark.deterministic
def test_noise(golden_tensor):
    golden_tensor.check(Unseeded()(torch.ones(1, 4)), name="y")
"""
    )
    pytester.runpytest("-p", "no:randomly", "--update-golden")
    result = pytester.runpytest("-p", "no:randomly", "--determinism")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["Nondeterministic: run 1 differs from run 0*"])


def test_golden_mismatch_of_a_repeatable_test_is_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_models=MODELS
        + """
import os

@pytest.mark.deterministic
def test_scaled(golden_tensor):
    scale = float(os.environ.get("SCALE", "1"))
    golden_tensor.check(torch.ones(3) * scale, name="y")
"""
    )
    pytester.runpytest("-p", "no:randomly", "--update-golden")
    pytester._monkeypatch.setenv("SCALE", "2")
    result = pytester.runpytest("-p", "no:randomly", "--determinism")
    result.assert_outcomes(failed=1)
    result.stdout.no_fnmatch_line("*Nondeterministic*")
    result.stdout.fnmatch_lines(["*y*3 of 3*"])


def test_missing_golden_fails_and_writes_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_models=MODELS
        + """
@pytest.mark.deterministic
def test_new(golden_tensor):
    golden_tensor.check(torch.ones(3), name="y")
"""
    )
    result = pytester.runpytest("-p", "no:randomly", "--determinism")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*pytest --update-golden*test_new*"])
    assert not list(pytester.path.rglob("*.safetensors"))


def test_checks_made_before_a_skip_count_as_in_a_plain_run(pytester: pytest.Pytester) -> None:
    """Run 0 is compared with its golden after the runs, also when a run skipped the test."""
    pytester.makepyfile(
        """
import os
import pytest
import torch

@pytest.mark.deterministic
def test_skipped(golden_tensor):
    golden_tensor.check(torch.ones(3), name="y")
    if os.environ.get("SKIP_AFTER_CHECK"):
        pytest.skip("checked, then skipped")
"""
    )
    pytester.runpytest("-p", "no:randomly", "--update-golden").assert_outcomes(passed=1)
    pytester._monkeypatch.setenv("SKIP_AFTER_CHECK", "1")
    plain = pytester.runpytest("-p", "no:randomly")
    checked = pytester.runpytest("-p", "no:randomly", "--determinism")
    for result in (plain, checked):
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines(["golden: 1 passed*"])


def test_runs_option_and_body_run_count(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import pytest

calls = []

@pytest.fixture
def fixture_calls():
    calls.append("fixture")

@pytest.mark.deterministic
def test_counted(fixture_calls):
    calls.append("body")

def test_count():
    # 3 runs + the probe run, fixtures set up once
    assert calls == ["fixture"] + ["body"] * 4
"""
    )
    result = pytester.runpytest("-p", "no:randomly", "--determinism", "--determinism-runs", "3")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "determinism: 1 tests x 3 runs (+1 other-seed run), 0 nondeterministic, "
            "1 checked no values"
        ]
    )


def test_without_determinism_nothing_repeats(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import pytest

calls = []

@pytest.mark.deterministic
def test_once():
    calls.append(1)

def test_count():
    assert calls == [1]
"""
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("determinism: * tests x*")


def test_state_left_by_an_earlier_call(pytester: pytest.Pytester) -> None:
    """BatchNorm in training mode updates running stats: the next run differs."""
    pytester.makepyfile(
        test_models=MODELS
        + """
bn_model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))

@pytest.mark.deterministic(eval_mode=False, stochastic=True)
def test_bn(golden_tensor):
    bn_model.train()
    bn_model(torch.randn(8, 4))
    bn_model.eval()
    golden_tensor.check(bn_model(torch.ones(2, 4)), name="y")
"""
    )
    pytester.runpytest("-p", "no:randomly", "--update-golden")
    result = pytester.runpytest("-p", "no:randomly", "--determinism")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["Nondeterministic*", "*BatchNorm1d*"])
    result.stdout.fnmatch_lines(["*state*"])
