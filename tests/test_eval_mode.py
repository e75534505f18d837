"""Eval mode: modules called in training mode are switched, named, and restored."""

from __future__ import annotations

import pytest

MODEL = """
import pytest
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5))
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.body(x))

@pytest.fixture(scope="module")
def net():
    return Net()  # left in training mode: the bug of problem 000
"""


def test_train_mode_module_is_switched_and_named(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        MODEL
        + """
@pytest.mark.deterministic
def test_inference(net):
    x = torch.ones(3, 8)
    assert torch.equal(net(x), net(x))
    assert not net.training and not net.body[1].training

def test_flags_restored_after(net):
    assert net.training and net.body[1].training
"""
    )
    result = run("-W", "always::pytest_determinism.DeterminismWarning")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*DeterminismWarning: Net was called in training mode with stochastic layers "
            "active: body.1 (Dropout)*Call model.eval() in your own inference code*",
        ]
    )
    # The warning points at the user's call, not at torch or the plugin.
    result.stdout.fnmatch_lines(["*test_train_mode_module_is_switched_and_named.py:*"])


def test_strict_mode_fails_with_the_same_text(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        MODEL
        + """
@pytest.mark.deterministic(eval_mode="strict")
def test_inference(net):
    net(torch.ones(3, 8))
"""
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "Net was called in training mode*body.1 (Dropout)*strict*",
            "*(raised at test_strict_mode_fails_with_the_same_text.py:*)",
        ]
    )


def test_eval_mode_false_leaves_modes_alone(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        MODEL
        + """
@pytest.mark.deterministic(eval_mode=False)
def test_training(net):
    net(torch.ones(3, 8))
    assert net.training
"""
    )
    result = run("-W", "error::pytest_determinism.DeterminismWarning")
    result.assert_outcomes(passed=1)


def test_modules_without_stochastic_layers_switch_silently(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        """
import pytest
import torch

@pytest.mark.deterministic
def test_linear():
    lin = torch.nn.Linear(2, 2)
    lin(torch.ones(1, 2))
    assert not lin.training
"""
    )
    run("-W", "error::pytest_determinism.DeterminismWarning").assert_outcomes(passed=1)


def test_determinism_eval_is_for_this_test_only(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        MODEL
        + """
def test_explicit(net, determinism):
    assert determinism.eval(net) is net
    assert not net.training and not net.body[1].training

def test_after(net):
    assert net.training and net.body[1].training
"""
    )
    run().assert_outcomes(passed=2)


def test_third_party_convnext_drop_path_is_named(pytester: pytest.Pytester, run) -> None:
    """A real model library's stochastic depth, found by class name."""
    pytester.makepyfile(
        """
import pytest
import torch
from transformers import ConvNextConfig, ConvNextModel

@pytest.mark.deterministic
def test_convnext():
    config = ConvNextConfig(
        num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, drop_path_rate=0.5
    )
    model = ConvNextModel(config)
    pixels = torch.rand(1, 3, 32, 32)
    first = model(pixels).pooler_output
    second = model(pixels).pooler_output
    assert torch.equal(first, second)
"""
    )
    result = run("-W", "always::pytest_determinism.DeterminismWarning")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*ConvNextModel was called in training mode with stochastic layers "
            "active: encoder.stages.1.layers.0.drop_path (ConvNextDropPath)*"
        ]
    )


def test_nested_module_in_training_mode_gets_its_qualified_name(
    pytester: pytest.Pytester, run
) -> None:
    pytester.makepyfile(
        MODEL
        + """
@pytest.mark.deterministic
def test_child_left_training(net):
    x = torch.ones(3, 8)
    net(x)                 # switched to eval, remembered as a root
    net.body.train()       # the user's own code puts a child back in training mode
    net(x)
"""
    )
    result = run("-W", "always::pytest_determinism.DeterminismWarning")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*Net.body (Sequential) was called in training mode*1 (Dropout)*"])
