"""Cookbook 000: the same image, two calls, two different sets of class probabilities.

The model was left in training mode, so stochastic depth (DropPath) stays active at
inference. The classifier is a tiny ConvNeXt built from a config, like the OpenCLIP
``convnext_xxlarge`` in the field report but with a few thousand random weights.
"""

import pytest
import torch
from transformers import ConvNextConfig, ConvNextForImageClassification

from pytest_determinism import (
    DeterminismWarning,
    NondeterminismError,
    assert_deterministic,
    deterministic,
)


# --8<-- [start:model]
def build_classifier() -> ConvNextForImageClassification:
    config = ConvNextConfig(
        num_channels=3,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        num_stages=2,
        drop_path_rate=0.5,  # stochastic depth, as in convnext_xxlarge
        layer_scale_init_value=1.0,
        initializer_range=0.2,
        num_labels=3,
    )
    # A model built from a config starts in training mode, like an OpenCLIP model.
    return ConvNextForImageClassification(config)


def classify(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=images).logits.softmax(-1)


# --8<-- [end:model]


# --8<-- [start:symptom]
def test_symptom_two_calls_disagree() -> None:
    # Not marked: the plugin leaves this test alone. This is what the user saw.
    torch.manual_seed(0)
    model = build_classifier()
    images = torch.randn(8, 3, 32, 32)

    first = classify(model, images)
    second = classify(model, images)

    assert model.training
    assert not torch.equal(first, second)


# --8<-- [end:symptom]


# --8<-- [start:warned]
@deterministic  # eval_mode=True is the default
def test_marked_test_runs_in_eval_mode(golden_tensor) -> None:
    model = build_classifier()  # built from the test's seed: the same weights every run
    images = torch.randn(8, 3, 32, 32)

    # The bug is still in the code, so the plugin names the stochastic layer...
    with pytest.warns(DeterminismWarning, match=r"drop_path"):
        first = classify(model, images)
    # ...but runs the model in eval mode for this test, so both calls agree.
    second = classify(model, images)

    assert torch.equal(first, second)
    golden_tensor.check(first, name="probs")


# --8<-- [end:warned]


# --8<-- [start:caught]
@deterministic(eval_mode=False)  # leave the bug in place to see what the CI mode reports
def test_ci_mode_names_the_stochastic_layer() -> None:
    model = build_classifier()
    images = torch.randn(8, 3, 32, 32)

    with pytest.raises(NondeterminismError) as report:
        assert_deterministic(classify, model, images)

    # The report names the first module whose output changed, and its class.
    assert "encoder.stages.1.layers.0.drop_path" in str(report.value)
    assert "ConvNextDropPath" in str(report.value)


# --8<-- [end:caught]


# --8<-- [start:fixed]
@deterministic(eval_mode="strict")  # a module in training mode now fails the test
def test_fixed_inference(golden_tensor) -> None:
    model = build_classifier().eval()  # the fix
    images = torch.randn(8, 3, 32, 32)

    probs = classify(model, images)

    golden_tensor.check(probs, name="probs")
    golden_tensor.check(probs.argmax(-1), name="labels")  # integers: compared exactly


# --8<-- [end:fixed]
