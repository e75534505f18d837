"""The shared hook pair: outermost subscribers cost nothing inside an outermost call."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pytest_determinism.state import hooks  # noqa: E402

registry = torch.nn.modules.module


def _hooks_present() -> bool:
    return bool(registry._global_forward_pre_hooks or registry._global_forward_hooks)


class Probe(torch.nn.Module):
    """Notes, from inside its forward, whether torch's global hook dicts hold anything."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: Any) -> Any:
        self.seen.append(_hooks_present())
        return x + 1


class Outer(torch.nn.Module):
    def __init__(self, recurse: int = 0) -> None:
        super().__init__()
        self.inner = Probe()
        self.recurse = recurse

    def forward(self, x: Any) -> Any:
        if self.recurse:
            self.recurse -= 1
            x = self(x)
        return self.inner(x)


@pytest.fixture
def heard() -> Iterator[list[tuple[str, str]]]:
    calls: list[tuple[str, str]] = []

    def enter(module: Any, args: Any) -> None:
        calls.append(("enter", type(module).__name__))

    def exit(module: Any, args: Any, *rest: Any) -> None:
        calls.append(("exit", type(module).__name__))

    hooks.subscribe_outermost(enter=enter, exit=exit)
    yield calls
    hooks.unsubscribe_outermost(enter=enter, exit=exit)
    assert not _hooks_present()


def test_nested_calls_run_without_hooks_and_the_outermost_is_heard(heard) -> None:
    model = Outer()
    assert _hooks_present()
    model(torch.ones(2))
    model(torch.ones(2))
    assert model.inner.seen == [False, False]
    assert heard == [("enter", "Outer"), ("exit", "Outer")] * 2
    assert _hooks_present() and not model._forward_hooks and not model._forward_pre_hooks


def test_a_module_calling_itself_is_one_outermost_call(heard) -> None:
    model = Outer(recurse=2)
    model(torch.ones(2))
    assert heard == [("enter", "Outer"), ("exit", "Outer")]
    model.inner(torch.ones(2))
    assert heard[2:] == [("enter", "Probe"), ("exit", "Probe")]


def test_a_forward_that_raises_still_ends_its_call(heard) -> None:
    class Broken(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            raise ValueError("broken")

    with pytest.raises(ValueError, match="broken"):
        Broken()(torch.ones(1))
    assert heard == [("enter", "Broken"), ("exit", "Broken")]
    assert _hooks_present()
    Outer()(torch.ones(1))
    assert heard[2:] == [("enter", "Outer"), ("exit", "Outer")]


def test_a_call_left_by_a_base_exception_is_forgotten_at_the_next_subscription(heard) -> None:
    # torch runs always-called hooks for an Exception only: after a KeyboardInterrupt the
    # call never ends, until the subscribers change (a new run).
    class Interrupted(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            raise KeyboardInterrupt

    model = Interrupted()
    with pytest.raises(KeyboardInterrupt):
        model(torch.ones(1))
    assert not _hooks_present()
    hooks.subscribe_outermost()
    assert _hooks_present() and not model._forward_hooks
    Outer()(torch.ones(1))
    assert heard[-2:] == [("enter", "Outer"), ("exit", "Outer")]


def test_an_every_call_subscriber_hears_nested_calls_after_the_outermost_start(heard) -> None:
    seen: list[str] = []

    def pre(module: Any, args: Any) -> None:
        seen.append(type(module).__name__)
        heard.append(("pre", type(module).__name__))

    hooks.subscribe(pre=pre)
    try:
        model = Outer()
        model(torch.ones(2))
    finally:
        hooks.unsubscribe(pre=pre)
    assert model.inner.seen == [True]
    assert heard == [("enter", "Outer"), ("pre", "Outer"), ("pre", "Probe"), ("exit", "Outer")]


def test_the_module_walk_finds_what_modules_finds() -> None:
    from pytest_determinism.state.module_tree import registered_modules

    shared = torch.nn.Linear(2, 2)
    model = torch.nn.Sequential(
        torch.nn.Sequential(shared, torch.nn.Dropout()), torch.nn.ModuleList(), shared
    )
    model.register_module("empty", None)
    found = registered_modules(model)
    assert found[0] is model
    assert {id(m) for m in found} == {id(m) for m in model.modules()}
    # The shared layer is listed once per parent.
    assert sum(m is shared for m in found) == 2
