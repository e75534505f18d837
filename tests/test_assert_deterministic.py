"""assert_deterministic: the helper form of the engine, on toy and real models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytest_determinism import NondeterminismError, assert_deterministic
from pytest_determinism.golden.values import flatten
from pytest_determinism.nondeterminism.runs import check_runs
from pytest_determinism.state.context import set_current_seed
from pytest_determinism.state.rng import capture_rng

X = torch.arange(24, dtype=torch.float32).reshape(3, 8) / 24


def net(middle: torch.nn.Module) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 8), middle, torch.nn.Linear(8, 2))


def test_returns_the_first_runs_result() -> None:
    model = net(torch.nn.ReLU()).eval()
    result = assert_deterministic(model, X)
    assert torch.equal(result, model(X))


def test_keyword_arguments_and_nested_results() -> None:
    def fn(x: torch.Tensor, *, scale: float) -> dict[str, object]:
        return {"y": x * scale, "parts": [x.sum(), x.mean()], "n": 3}

    result = assert_deterministic(fn, X, scale=2.0, runs=3)
    assert result["n"] == 3


def test_dropout_left_in_training_mode_is_named() -> None:
    model = net(torch.nn.Dropout(0.5)).train()
    with pytest.raises(NondeterminismError) as info:
        assert_deterministic(model, X)
    message = str(info.value)
    assert message.startswith("Seed-dependent")
    assert "module: 1" in message
    assert "class: Dropout" in message
    assert "model.eval()" in message


def test_stochastic_skips_the_probe() -> None:
    model = net(torch.nn.Dropout(0.5)).train()
    assert_deterministic(model, X, stochastic=True, runs=3)


def test_an_unseeded_generator_is_caught_in_repeat_runs() -> None:
    unseeded = np.random.default_rng()
    with pytest.raises(NondeterminismError, match="Nondeterministic: run 1 differs from run 0"):
        assert_deterministic(lambda: unseeded.random(4))


def test_the_seed_of_the_running_test_is_used() -> None:
    seen = []

    def fn() -> int:
        seen.append(torch.initial_seed())
        return 0

    set_current_seed(41)
    try:
        assert_deterministic(fn)
    finally:
        set_current_seed(None)
    assert_deterministic(fn, seed=7, stochastic=True)
    assert_deterministic(fn, stochastic=True)
    assert seen == [41, 41, 41, 7, 7, 0, 0]


def test_every_rng_is_left_as_it_was() -> None:
    model = net(torch.nn.Dropout(0.5)).train()
    before = capture_rng()
    assert_deterministic(model, X, stochastic=True)
    assert capture_rng() == before


def test_an_error_raised_by_every_run_is_reraised() -> None:
    def fn() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        assert_deterministic(fn)


def test_an_op_without_a_deterministic_implementation_is_explained() -> None:
    def fn() -> torch.Tensor:
        return torch.zeros(5).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))

    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError) as info:
            assert_deterministic(fn)
    finally:
        torch.use_deterministic_algorithms(was)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "torch op put_ has no deterministic implementation" in notes
    assert "@deterministic(warn_only=True)" in notes


def test_a_result_that_cannot_be_compared_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"assert_deterministic: fn's result cannot be compared"):
        assert_deterministic(lambda: {"x": object()})


def test_none_is_an_empty_result() -> None:
    assert assert_deterministic(lambda: None) is None


def test_runs_must_be_positive() -> None:
    with pytest.raises(ValueError, match="runs must be at least 1"):
        assert_deterministic(lambda: 0, runs=0)


def test_inside_a_checked_run_the_helper_decides() -> None:
    model = net(torch.nn.Dropout(0.5)).train()

    def run_once(index: int) -> dict[str, object]:
        # A training step with dropout is seed-dependent on purpose.
        return flatten(assert_deterministic(model, X, stochastic=True))

    verdict = check_runs(run_once, runs=2, seed=0, stochastic=False)
    assert verdict.ok, verdict.message


def test_droppath_in_a_transformers_convnext_is_named() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ConvNextConfig(
        num_channels=3,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        num_stages=2,
        drop_path_rate=0.5,
        image_size=32,
    )
    model = transformers.ConvNextModel(config).train()
    pixels = torch.randn(8, 3, 32, 32)
    with pytest.raises(NondeterminismError) as info:
        assert_deterministic(lambda: model(pixel_values=pixels).last_hidden_state)
    message = str(info.value)
    assert "module: encoder.stages.1.layers.0.drop_path" in message
    assert "class: ConvNextDropPath" in message
    assert "mode: training" in message
    assert "likely cause: stochastic layer in training mode" in message
    model.eval()
    assert_deterministic(lambda: model(pixel_values=pixels).last_hidden_state)
