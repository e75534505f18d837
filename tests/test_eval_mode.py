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
            "*DeterminismWarning: Net was called in training mode, where these layers act "
            "differently from eval mode: body.1 (Dropout). Dropout and stochastic depth draw "
            "random numbers*Call model.eval() in your own inference code*",
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
            "*ConvNextModel was called in training mode, where these layers act differently "
            "from eval mode: encoder.stages.1.layers.0.drop_path (ConvNextDropPath)*"
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


def test_batch_norm_wording_and_zero_drop_probability(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        """
import pytest
import torch

class DropPath(torch.nn.Module):
    '''As timm's: stochastic depth with a drop probability.'''
    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return x

@pytest.mark.deterministic
def test_batch_norm():
    torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))(torch.ones(3, 4))

@pytest.mark.deterministic
def test_nothing_dropped():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(p=0.0), DropPath(0.0))
    model(torch.ones(3, 4))
    assert not model.training

@pytest.mark.deterministic
def test_both_kinds():
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(4), DropPath(0.1), torch.nn.Dropout(0.0))
    model(torch.ones(3, 4))
"""
    )
    result = run("-W", "always::pytest_determinism.DeterminismWarning")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*DeterminismWarning: Sequential was called in training mode, where these layers "
            "act differently from eval mode: 1 (BatchNorm1d). Batch normalisation draws no "
            "random numbers, but in training mode it normalises with the batch's own "
            "statistics, so one sample's output depends on the others in its batch, and it "
            "updates its running statistics on every call, a state change even under "
            "torch.no_grad(). Call model.eval()*",
            "*DeterminismWarning: Sequential was called in training mode, where these layers "
            "act differently from eval mode: 0 (BatchNorm1d), 1 (DropPath). Dropout and "
            "stochastic depth (1 (DropPath)) draw random numbers in training mode*Batch "
            "normalisation (0 (BatchNorm1d)) draws no random numbers*",
        ]
    )
    output = result.stdout.str()
    assert "test_nothing_dropped" not in output.split("warnings summary")[1]
    assert "(Dropout)" not in output


def test_failure_after_the_switch_says_so(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        """
import pytest
import torch

@pytest.mark.deterministic
def test_drops_in_train_mode():
    drop = torch.nn.Dropout(0.5).train()
    assert (drop(torch.ones(100)) == 0).any(), "should drop in train mode"

@pytest.mark.deterministic
def test_fails_without_a_switch():
    torch.nn.Linear(2, 2).eval()(torch.ones(1, 2))
    assert False, "its own failure"

@pytest.mark.deterministic(eval_mode=False)
def test_checks_training_behaviour():
    drop = torch.nn.Dropout(0.5).train()
    assert (drop(torch.ones(100)) == 0).any()
"""
    )
    for mode in ((), ("--determinism",)):
        result = run(*mode)
        result.assert_outcomes(failed=2, passed=1)
        result.stdout.fnmatch_lines(
            [
                "E*AssertionError: should drop in train mode",
                "*- pytest-determinism: eval mode -*",
                "pytest-determinism switched these modules from training to eval mode during "
                "this test: Dropout (with Dropout (Dropout)).*If the test checks training "
                "behaviour*mark it @pytest.mark.deterministic(eval_mode=False).",
            ]
        )
        own = result.stdout.str().split("_ test_fails_without_a_switch _")[1]
        assert "its own failure" in own and "pytest-determinism: eval mode" not in own


def test_a_child_back_in_training_mode_is_found_past_an_empty_slot() -> None:
    # The outermost call looks through the whole registered tree, where a slot may hold
    # None (an optional head left out); the child found in training mode is switched.
    torch = pytest.importorskip("torch")
    from pytest_determinism.state.evalmode import EvalModeGuard

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_module("pooler", None)
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    net = Net().eval()
    net.body.train()
    guard = EvalModeGuard(strict=False, warn=False)
    guard.install()
    try:
        net(torch.ones(2, 4))
        assert not net.body.training and not net.body[1].training
    finally:
        guard.restore()
    assert net.body.training and not net.training
