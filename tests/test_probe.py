"""The seed probe: draws inside forward calls change, every other draw stays the same."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from pytest_determinism.nondeterminism.probe import SeedProbe, probe_seed
from pytest_determinism.nondeterminism.trace import tracing
from pytest_determinism.state.rng import capture_rng, seed_everything


class Draws(torch.nn.Module):
    """Returns what every seeded RNG gives inside its forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = torch.tensor([random.random(), float(np.random.rand())])
        return torch.cat([x + torch.rand(3), extra])


def body(model: torch.nn.Module) -> dict[str, object]:
    """A test body: builds inputs, calls the model twice, draws in between and after."""
    x = torch.randn(3)
    first = model(x)
    between = (torch.rand(2), random.random(), float(np.random.rand()))
    second = model(x)
    after = torch.rand(2)
    return {"x": x, "first": first, "between": between, "second": second, "after": after}


def probed(model: torch.nn.Module, seed: int = 0) -> tuple[dict[str, object], ...]:
    probe = SeedProbe(seed)
    seed_everything(seed)
    with tracing(probe):
        reference = body(model)
    probe.replay()
    seed_everything(seed)
    with tracing(probe):
        other = body(model)
    assert probe.mismatch is None
    return reference, other


def same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)  # type: ignore[arg-type]
    if isinstance(a, tuple):
        return all(same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    return a == b


def test_probe_seed_is_derived_and_differs() -> None:
    assert probe_seed(0, 0) == probe_seed(0, 0)
    assert len({probe_seed(0, n) for n in range(50)}) == 50
    assert all(probe_seed(seed, 0) != seed for seed in range(50))
    assert all(0 <= probe_seed(seed, 3) < 2**32 for seed in (-5, 0, 2**40))


def test_draws_inside_forward_change_and_all_others_stay() -> None:
    reference, other = probed(Draws())
    assert same(reference["x"], other["x"])
    assert same(reference["between"], other["between"])
    assert same(reference["after"], other["after"])
    assert not same(reference["first"], other["first"])
    assert not same(reference["second"], other["second"])
    # random and NumPy's global RNG are covered too, not only torch's.
    for key in ("first", "second"):
        ref, oth = reference[key], other[key]
        assert isinstance(ref, torch.Tensor)
        assert isinstance(oth, torch.Tensor)
        assert ref[3] != oth[3]
        assert ref[4] != oth[4]


def test_a_model_built_from_the_seed_and_run_in_eval_mode_is_unchanged() -> None:
    def build_and_run() -> torch.Tensor:
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5)).eval()
        return model(torch.randn(2, 4))

    probe = SeedProbe(3)
    seed_everything(3)
    with tracing(probe):
        reference = build_and_run()
    probe.replay()
    seed_everything(3)
    with tracing(probe):
        other = build_and_run()
    assert torch.equal(reference, other)


def test_the_state_after_the_run_is_the_reference_runs() -> None:
    probe = SeedProbe(0)
    seed_everything(0)
    with tracing(probe):
        torch.nn.Dropout(0.5)(torch.ones(8))
    expected = capture_rng()
    probe.replay()
    seed_everything(0)
    with tracing(probe):
        torch.nn.Dropout(0.5)(torch.ones(8))
    assert capture_rng() == expected


def test_the_state_is_put_back_when_forward_raises() -> None:
    class Fails(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            torch.rand(5)
            raise ValueError("boom")

    probe = SeedProbe(0)
    seed_everything(0)
    with tracing(probe), pytest.raises(ValueError):
        Fails()(torch.ones(1))
    expected = capture_rng()
    probe.replay()
    seed_everything(0)
    with tracing(probe), pytest.raises(ValueError):
        Fails()(torch.ones(1))
    assert capture_rng() == expected


@pytest.mark.parametrize(
    ("reference_calls", "probe_calls", "message"),
    [
        (2, 3, "the probe run made 3 outermost forward calls, the reference run 2"),
        (3, 2, "the probe run made 2 outermost forward calls, the reference run 3"),
    ],
)
def test_a_different_number_of_forward_calls_is_a_mismatch(
    reference_calls: int, probe_calls: int, message: str
) -> None:
    lin = torch.nn.Linear(2, 2)
    probe = SeedProbe(0)
    with tracing(probe):
        for _ in range(reference_calls):
            lin(torch.ones(2))
    probe.replay()
    with tracing(probe):
        for _ in range(probe_calls):
            lin(torch.ones(2))
    assert probe.mismatch == message


def test_different_modules_are_a_mismatch() -> None:
    probe = SeedProbe(0)
    with tracing(probe):
        torch.nn.Identity()(torch.ones(1))
    probe.replay()
    with tracing(probe):
        torch.nn.ReLU()(torch.ones(1))
    assert probe.mismatch == (
        "outermost forward call 0 was ReLU in the probe run but Identity in the reference run"
    )


def test_no_mismatch_before_replaying() -> None:
    probe = SeedProbe(0)
    with tracing(probe):
        torch.nn.Identity()(torch.ones(1))
    assert probe.mismatch is None
    assert not probe.replaying


def test_an_inner_block_hides_its_calls_from_an_outer_probe() -> None:
    drop = torch.nn.Dropout(0.5)
    probe = SeedProbe(0)
    seed_everything(0)
    with tracing(probe), tracing():
        reference = drop(torch.ones(16))
    probe.replay()
    seed_everything(0)
    with tracing(probe), tracing():
        other = drop(torch.ones(16))
    assert torch.equal(reference, other)
