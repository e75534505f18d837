"""check_runs: repeated runs and the probe run, compared bit for bit, with verdicts."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from collections.abc import Mapping

import numpy as np
import pytest
import torch

from pytest_determinism.golden.values import Leaf, flatten
from pytest_determinism.nondeterminism import causes as d
from pytest_determinism.nondeterminism.runs import Verdict, check_runs
from pytest_determinism.state.evalmode import EvalModeGuard
from pytest_determinism.state.rng import capture_rng

X = torch.arange(32, dtype=torch.float32).reshape(4, 8) / 32


class Net(torch.nn.Module):
    def __init__(self, middle: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.first = torch.nn.Linear(8, 8)
        self.middle = middle if middle is not None else torch.nn.ReLU()
        self.last = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.middle(self.first(x)))


class NumpyNoise(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rng = np.random.default_rng()  # no seed: a new stream every process

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.from_numpy(self.rng.standard_normal(x.shape[-1]).astype(np.float32))


class GeneratorNoise(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(7)  # not reseeded between runs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand(x.shape, generator=self.generator)


class EvalNoise(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (torch.rand_like(x) > 0.3)  # random masking, whatever the mode


def check(model: torch.nn.Module, *, runs: int = 2, stochastic: bool = False) -> Verdict:
    def run_once(index: int) -> Mapping[str, Leaf]:
        with torch.no_grad():
            return flatten({"out": model(X)})

    return check_runs(run_once, runs=runs, seed=0, stochastic=stochastic)


def test_a_deterministic_model_passes() -> None:
    verdict = check(Net().eval(), runs=3)
    assert verdict.ok
    assert verdict.kind is None
    assert verdict.message == ""
    assert (verdict.module, verdict.module_class) == (None, None)
    assert verdict.runs_made == 4
    assert verdict.probe_run
    assert verdict.errors == (None, None, None, None)
    assert set(verdict.evidence) == {"out"}
    assert verdict.evidence["out"].shape == (4, 2)


def test_dropout_in_training_mode_is_found_by_the_probe_only() -> None:
    model = Net(torch.nn.Dropout(0.5)).train()
    assert check(model, runs=3, stochastic=True).ok  # seeded: repeatable
    verdict = check(model)
    assert not verdict.ok
    assert verdict.kind == "seed"
    assert (verdict.module, verdict.module_class) == ("middle", "Dropout")
    assert verdict.diverging_run == 2
    assert verdict.diagnosis is not None
    assert verdict.diagnosis.cause == d.STOCHASTIC_LAYER
    assert verdict.message.startswith("Seed-dependent: the probe run differs from run 0.")
    assert "module: middle" in verdict.message
    assert "model.eval()" in verdict.message


def test_a_draw_from_torchs_rng_in_eval_mode() -> None:
    verdict = check(Net(EvalNoise()).eval())
    assert verdict.kind == "seed"
    assert (verdict.module, verdict.module_class) == ("middle", "EvalNoise")
    assert verdict.diagnosis is not None
    assert verdict.diagnosis.cause == d.RNG_IN_EVAL
    assert "pass the forward a torch.Generator" in verdict.message


@pytest.mark.parametrize(
    ("middle", "name"), [(NumpyNoise, "NumpyNoise"), (GeneratorNoise, "GeneratorNoise")]
)
def test_noise_from_an_unseeded_generator_fails_repeat_runs(
    middle: type[torch.nn.Module], name: str
) -> None:
    verdict = check(Net(middle()).eval())
    assert verdict.kind == "repeat"
    assert verdict.diverging_run == 1
    assert verdict.runs_made == 2
    assert (verdict.module, verdict.module_class) == ("middle", name)
    assert verdict.diagnosis is not None
    assert verdict.diagnosis.cause == d.OUTSIDE_RNG
    assert verdict.diagnosis.inputs_differed is False
    assert verdict.message.startswith("Nondeterministic: run 1 differs from run 0")
    assert "out: float32[4, 2]: 8 of 8 elements differ, max abs diff" in verdict.message


def test_randomness_before_the_model() -> None:
    model = Net().eval()
    unseeded = np.random.default_rng()

    def run_once(index: int) -> Mapping[str, Leaf]:
        x = torch.from_numpy(unseeded.standard_normal((4, 8)).astype(np.float32))
        return flatten(model(x))

    verdict = check_runs(run_once, runs=2, seed=0, stochastic=False)
    assert verdict.kind == "repeat"
    assert verdict.module == "first"
    assert verdict.diagnosis is not None
    assert verdict.diagnosis.cause == d.BEFORE_MODEL
    assert verdict.diagnosis.inputs_differed is True
    assert "the cause lies before the model" in verdict.message


def test_batchnorm_in_training_mode_leaves_state_behind() -> None:
    model = Net(torch.nn.BatchNorm1d(8))

    def run_once(index: int) -> Mapping[str, Leaf]:
        model.train()
        model(X)
        model.eval()
        return flatten(model(X))

    verdict = check_runs(run_once, runs=2, seed=0, stochastic=False)
    assert verdict.kind == "repeat"
    assert (verdict.module, verdict.module_class) == ("middle", "BatchNorm1d")
    assert verdict.diagnosis is not None
    assert verdict.diagnosis.cause == d.STATE_LEFT
    assert "running_mean" in verdict.message


def test_a_model_built_from_the_seed_in_the_body_is_no_false_alarm() -> None:
    def run_once(index: int) -> Mapping[str, Leaf]:
        model = Net(torch.nn.Dropout(0.2)).eval()
        x = torch.randn(4, 8)
        noise = np.random.rand(4, 2).astype(np.float32) + random.random()
        return flatten({"out": model(x) + torch.from_numpy(noise), "after": torch.rand(3)})

    verdict = check_runs(run_once, runs=3, seed=11, stochastic=False)
    assert verdict.ok, verdict.message


def test_draws_between_forward_calls_are_the_tests_own() -> None:
    model = Net().eval()

    def run_once(index: int) -> Mapping[str, Leaf]:
        tokens = []
        x = X
        for _ in range(3):
            logits = model(x)
            tokens.append(torch.multinomial(torch.softmax(logits, -1), 1))
            x = x.roll(1, 0)
        return flatten(tokens)

    assert check_runs(run_once, runs=2, seed=0, stochastic=False).ok


def test_a_different_number_of_forward_calls_in_the_probe_run() -> None:
    class Coin(torch.nn.Module):
        def forward(self) -> torch.Tensor:
            return torch.rand(())

    coin = Coin()

    def run_once(index: int) -> Mapping[str, Leaf]:
        flips = 1
        while coin() < 0.8 and flips < 50:  # how long this runs depends on draws in forward
            flips += 1
        return {}

    verdict = check_runs(run_once, runs=2, seed=0, stochastic=False)
    assert verdict.kind == "seed"
    assert "forward calls: the probe run made 2 outermost forward calls, the reference run 8" in (
        verdict.message
    )
    # The first coin flip already differs: that call is named.
    assert verdict.module_class == "Coin"


def test_evidence_is_compared_by_keys_dtypes_shapes_and_nan_positions() -> None:
    values = [
        {"a": np.array([1.0, np.nan]), "b": np.zeros(2)},
        {"a": np.array([np.nan, 1.0]), "c": np.zeros(2)},
    ]
    verdict = check_runs(lambda i: flatten(values[i]), runs=2, seed=0, stochastic=True)
    assert verdict.kind == "repeat"
    reasons = {diff.key: diff.reason for diff in verdict.differences}
    assert reasons == {"a": "values", "b": "missing", "c": "extra"}
    nan = next(diff for diff in verdict.differences if diff.key == "a")
    assert nan.count == 2
    assert nan.nan_mismatches == 2
    typed = [{"x": np.zeros(2, np.float32)}, {"x": np.zeros(2, np.float64)}]
    verdict = check_runs(lambda i: flatten(typed[i]), runs=2, seed=0, stochastic=True)
    assert [diff.reason for diff in verdict.differences] == ["dtype"]
    shaped = [{"x": np.zeros(2)}, {"x": np.zeros(3)}]
    verdict = check_runs(lambda i: flatten(shaped[i]), runs=2, seed=0, stochastic=True)
    assert [diff.reason for diff in verdict.differences] == ["shape"]


def test_max_abs_diff_is_reported() -> None:
    values = [np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.5, 3.0])]
    verdict = check_runs(lambda i: flatten(values[i]), runs=2, seed=0, stochastic=True)
    (diff,) = verdict.differences
    assert diff.max_abs_diff == 0.5
    assert (diff.count, diff.size) == (1, 3)
    assert "max abs diff 0.5 at (1,): run 0 2.0, run 1 2.5" in verdict.message


def test_identical_errors_agree_and_are_kept() -> None:
    def run_once(index: int) -> Mapping[str, Leaf]:
        raise ValueError("always")

    verdict = check_runs(run_once, runs=2, seed=0, stochastic=False)
    assert verdict.ok
    assert [type(e) for e in verdict.errors] == [ValueError] * 3
    assert verdict.evidence == {}


def test_an_error_in_one_run_only_is_a_divergence() -> None:
    def run_once(index: int) -> Mapping[str, Leaf]:
        if index == 1:
            raise ValueError("second run")
        return flatten(np.zeros(2))

    verdict = check_runs(run_once, runs=2, seed=0, stochastic=True)
    assert verdict.kind == "repeat"
    assert "run 0 returned normally" in verdict.message
    assert "run 1 raised ValueError: second run" in verdict.message
    assert verdict.errors[0] is None
    assert isinstance(verdict.errors[1], ValueError)


def test_a_torch_error_for_a_nondeterministic_op_is_explained() -> None:
    def run_once(index: int) -> Mapping[str, Leaf]:
        if index == 1:
            raise RuntimeError(
                "put_ does not have a deterministic implementation, but you set "
                "'torch.use_deterministic_algorithms(True)'."
            )
        return {}

    verdict = check_runs(run_once, runs=2, seed=0, stochastic=True)
    assert "@deterministic(warn_only=True)" in verdict.message


def test_exceptions_outside_catch_propagate_and_nothing_is_left_behind() -> None:
    class Stop(BaseException):
        pass

    def run_once(index: int) -> Mapping[str, Leaf]:
        torch.nn.Identity()(X)
        raise Stop

    before = capture_rng()
    with pytest.raises(Stop):
        check_runs(run_once, runs=2, seed=0, stochastic=False)
    from torch.nn.modules import module as torch_module

    assert not torch_module._global_forward_hooks
    assert not torch_module._global_forward_pre_hooks
    assert capture_rng() == before


def test_every_rng_is_put_back() -> None:
    model = Net(torch.nn.Dropout(0.5)).train()
    torch.manual_seed(123)
    before = capture_rng()
    check(model)
    assert capture_rng() == before


def test_runs_must_be_positive() -> None:
    with pytest.raises(ValueError, match="runs must be at least 1"):
        check_runs(lambda i: {}, runs=0, seed=0, stochastic=False)


def test_an_inner_check_decides_and_the_outer_probe_stands_aside() -> None:
    model = Net(torch.nn.Dropout(0.5)).train()
    inner_verdicts = []

    def run_once(index: int) -> Mapping[str, Leaf]:
        inner = check_runs(
            lambda i: flatten(model(X)), runs=2, seed=5, stochastic=True
        )  # a training step: seed-dependent on purpose
        inner_verdicts.append(inner)
        return dict(inner.evidence)

    verdict = check_runs(run_once, runs=2, seed=0, stochastic=False)
    assert verdict.ok, verdict.message
    assert all(inner.ok for inner in inner_verdicts)
    assert len(inner_verdicts) == 3


def test_the_inner_checks_failure_is_its_own() -> None:
    model = Net(torch.nn.Dropout(0.5)).train()
    inner_verdicts = []

    def run_once(index: int) -> Mapping[str, Leaf]:
        inner_verdicts.append(
            check_runs(lambda i: flatten(model(X)), runs=2, seed=5, stochastic=False)
        )
        return {}

    verdict = check_runs(run_once, runs=2, seed=0, stochastic=False)
    assert verdict.ok
    assert all(inner.kind == "seed" for inner in inner_verdicts)
    assert all(inner.module == "middle" for inner in inner_verdicts)


def test_the_eval_mode_hook_registered_earlier_runs_first() -> None:
    model = Net(torch.nn.Dropout(0.5)).train()
    guard = EvalModeGuard(strict=False, warn=False)
    guard.install()
    try:
        verdict = check(model)
    finally:
        guard.restore()
    assert verdict.ok, verdict.message
    assert model.training


def test_without_torch_only_the_evidence_is_compared() -> None:
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from pytest_determinism.nondeterminism.runs import check_runs
        from pytest_determinism.golden.values import flatten

        ok = check_runs(lambda i: flatten(np.random.rand(3)), runs=2, seed=0, stochastic=False)
        unseeded = np.random.default_rng()
        bad = check_runs(
            lambda i: flatten(unseeded.random(3)), runs=2, seed=0, stochastic=False
        )
        print(ok.ok, ok.probe_run, ok.runs_made, bad.kind, "torch" in sys.modules)
        print("not traced" in bad.message)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["True", "False", "2", "repeat", "False", "True"]


def test_object_addresses_in_error_messages_do_not_count() -> None:
    def run_once(index: int) -> Mapping[str, Leaf]:
        raise TypeError(f"cannot use {object()!r}")

    verdict = check_runs(run_once, runs=2, seed=0, stochastic=True)
    assert verdict.ok
