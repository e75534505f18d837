"""The diagnosis: the first diverging module, the verdict and the fix, for each cause."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from pytest_determinism.nondeterminism import causes as d
from pytest_determinism.nondeterminism.diagnosis import Diagnosis, diagnose
from pytest_determinism.nondeterminism.probe import SeedProbe
from pytest_determinism.nondeterminism.torch_errors import explain_torch_error
from pytest_determinism.nondeterminism.trace import Trace, tracing
from pytest_determinism.state.rng import seed_everything


def two_runs(run: Callable[[int], object], kind: str, seed: int = 0) -> tuple[Trace, Trace]:
    """Trace run 0 and a second run: reseeded alike ("repeat") or under the probe ("seed")."""
    probe = SeedProbe(seed) if kind == "seed" else None
    seed_everything(seed)
    with tracing(probe) as first:
        run(0)
    if probe is not None:
        probe.replay()
    seed_everything(seed)
    with tracing(probe) as other:
        run(1)
    return first, other


def diagnosed(run: Callable[[int], object], kind: str) -> Diagnosis:
    first, other = two_runs(run, kind)
    return diagnose(first, other, kind=kind, other_name="run 1")


class Noise(torch.nn.Module):
    """Adds noise from torch's RNG in eval mode too: random masking at inference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


class Mixer(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(x, 0.5, training=self.training)


class Pipeline(torch.nn.Module):
    def __init__(self, middle: torch.nn.Module) -> None:
        super().__init__()
        self.first = torch.nn.Linear(8, 8)
        self.middle = middle
        self.last = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.middle(self.first(x)))


X = torch.arange(32, dtype=torch.float32).reshape(4, 8) / 32


def test_a_stochastic_layer_in_training_mode() -> None:
    model = Pipeline(torch.nn.Dropout(0.5)).train()
    result = diagnosed(lambda i: model(X), "seed")
    assert (result.module, result.cls, result.cause) == (
        "middle",
        "Dropout",
        d.STOCHASTIC_LAYER,
    )
    assert result.training is True
    assert result.inputs_differed is False
    assert result.stochastic_inside == ("middle (Dropout, training)",)
    assert "model.eval()" in result.fix
    assert "module: middle" in result.text
    assert "class: Dropout" in result.text


def test_functional_dropout_in_training_mode() -> None:
    model = Pipeline(Mixer()).train()
    result = diagnosed(lambda i: model(X), "seed")
    assert (result.module, result.cls, result.cause) == (
        "middle",
        "Mixer",
        d.RNG_IN_TRAINING,
    )
    assert "F.dropout" in result.explanation
    assert "model.eval()" in result.fix


def test_a_draw_from_the_rng_in_eval_mode() -> None:
    model = Pipeline(Noise()).eval()
    result = diagnosed(lambda i: model(X), "seed")
    assert (result.module, result.cls, result.cause) == ("middle", "Noise", d.RNG_IN_EVAL)
    assert result.training is False
    assert "torch.Generator" in result.fix


def test_randomness_drawn_in_an_enclosing_forward() -> None:
    class Parent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(8, 8)
            self.b = torch.nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return self.b(h + torch.rand_like(h))

    model = Parent().eval()
    result = diagnosed(lambda i: model(X), "seed")
    assert (result.module, result.cls) == ("b", "Linear")
    assert result.inputs_differed is True
    assert result.origin == "<root Parent>"  # the root module's own forward
    assert result.cause == d.RNG_IN_EVAL
    assert "after a (Linear) returned identical outputs and before b (Linear)" in result.text


def test_inputs_that_differ_before_the_model() -> None:
    model = Pipeline(torch.nn.ReLU()).eval()
    generator = torch.Generator().manual_seed(1)  # not reseeded between runs

    result = diagnosed(lambda i: model(torch.randn(4, 8, generator=generator)), "repeat")
    assert (result.module, result.cause) == ("first", d.BEFORE_MODEL)
    assert result.inputs_differed is True
    assert "the cause lies before the model" in result.explanation


def test_state_left_by_an_earlier_call() -> None:
    model = Pipeline(torch.nn.BatchNorm1d(8))

    def run(index: int) -> object:
        model.train()
        model(X)  # updates the running statistics
        model.eval()
        return model(X)

    result = diagnosed(run, "repeat")
    assert (result.module, result.cls, result.cause) == ("middle", "BatchNorm1d", d.STATE_LEFT)
    assert result.inputs_differed is False
    assert "running_mean" in result.explanation
    assert "training mode" in result.explanation
    assert "eval" in result.fix


def test_parameters_changed_in_place() -> None:
    model = Pipeline(torch.nn.ReLU())

    def run(index: int) -> object:
        out = model(X)
        with torch.no_grad():
            model.last.weight.add_(1.0)
        return out

    first, other = two_runs(run, "repeat")
    result = diagnose(first, other, kind="repeat")
    assert (result.module, result.cause) == ("last", d.STATE_LEFT)
    assert "weight" in result.explanation
    assert "version counters" in result.explanation


def test_randomness_outside_the_seeded_rngs() -> None:
    class Unseeded(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.generator = torch.Generator().manual_seed(5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.rand(x.shape, generator=self.generator)

    model = Pipeline(Unseeded()).eval()
    result = diagnosed(lambda i: model(X), "repeat")
    assert (result.module, result.cls, result.cause) == ("middle", "Unseeded", d.OUTSIDE_RNG)
    assert "numpy.random.default_rng()" in result.explanation


def test_a_torch_module_that_changes_without_a_trace_is_blamed_on_its_kernels() -> None:
    model = Pipeline(torch.nn.ReLU())

    def run(index: int) -> object:
        out = model(X)
        model.last.weight.data.mul_(2.0)  # .data: no version bump, nothing to see
        return out

    result = diagnosed(run, "repeat")
    assert (result.module, result.cls, result.cause) == (
        "last",
        "Linear",
        d.NONDETERMINISTIC_KERNEL,
    )


def test_changed_settings_are_named() -> None:
    class ThreadBound(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.get_num_threads()

    model = Pipeline(ThreadBound()).eval()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with tracing() as first:
            model(X)
        torch.set_num_threads(2)
        with tracing() as other:
            model(X)
    finally:
        torch.set_num_threads(threads)
    result = diagnose(first, other, kind="repeat", other_name="run 1")
    assert result.cause == d.DIFFERENT_SETTINGS
    assert "threads: 1 -> 2" in result.explanation
    assert "threads=N" in result.fix


def test_a_different_sequence_of_calls() -> None:
    class LayerDrop(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                if not self.training or torch.rand(()) > 0.5:
                    x = layer(x)
            return x

    model = LayerDrop().train()
    result = diagnosed(lambda i: model(X), "seed")
    assert result.cause == d.RNG_IN_TRAINING
    assert result.module == "<root LayerDrop>"
    assert result.cls == "LayerDrop"
    assert "different sequence of module calls" in result.text
    assert "decided differently which modules to call" in result.explanation


def test_a_different_number_of_outermost_calls() -> None:
    lin = torch.nn.Linear(8, 8)
    first, other = two_runs(lambda i: [lin(X) for _ in range(i + 1)], "repeat")
    result = diagnose(first, other, kind="repeat")
    assert result.cause == d.CALL_SEQUENCE
    assert result.module is None
    assert "run 1 called Linear (the outermost module)" in result.text


def test_no_module_output_differed() -> None:
    lin = torch.nn.Linear(8, 8)
    first, other = two_runs(lambda i: lin(X), "repeat")
    result = diagnose(first, other, kind="repeat")
    assert (result.cause, result.module) == (d.OUTSIDE_RNG, None)
    assert "All 1 module calls returned identical outputs" in result.text
    seed_result = diagnose(first, other, kind="seed")
    assert seed_result.cause == d.OUTSIDE_MODULES
    assert "module.forward(x)" in seed_result.explanation


def test_no_module_called() -> None:
    with tracing() as first, tracing() as other:
        pass
    result = diagnose(first, other, kind="repeat")
    assert "No torch module was called" in result.text


def test_explain_torch_error_names_the_op_and_the_choices() -> None:
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError) as info:
            torch.zeros(5).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))
    finally:
        torch.use_deterministic_algorithms(was)
    text = explain_torch_error(info.value)
    assert text is not None
    assert "torch op put_ has no deterministic implementation" in text
    assert "@deterministic(warn_only=True)" in text
    assert "index_put_(..., accumulate=True)" in text
    assert "accept it" in text


def test_explain_torch_error_knows_cuda_spellings_and_ignores_other_errors() -> None:
    message = (
        "index_add_cuda_ does not have a deterministic implementation, but you set "
        "'torch.use_deterministic_algorithms(True)'."
    )
    text = explain_torch_error(RuntimeError(message))
    assert text is not None
    assert "index_add_cuda_" in text
    assert "one-hot" in text
    unknown = explain_torch_error(RuntimeError(message.replace("index_add_cuda_", "foo_bar")))
    assert unknown is not None
    assert "documentation lists" in unknown
    assert explain_torch_error(RuntimeError("shape mismatch")) is None
    assert explain_torch_error(ValueError("nothing")) is None
