"""The module-call trace: names, order, fingerprints, state, nesting, and no hooks left."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import threading
import weakref

import pytest
import torch
from torch.nn.modules import module as torch_module

from pytest_determinism.nondeterminism.trace import tracing
from pytest_determinism.state.evalmode import EvalModeGuard


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.drop = torch.nn.Dropout(0.5)
        self.norm = torch.nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.norm(self.drop(self.lin(x))) * scale


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(), Block()])
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        for block in self.blocks:
            x = block(x, scale=2.0)
        return {"logits": self.head(x), "count": 3}


def no_hooks() -> bool:
    return not (torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks)


def test_calls_are_named_nested_and_ordered() -> None:
    torch.manual_seed(0)
    net = Net().eval()
    with tracing() as trace:
        net(torch.randn(3, 4))
    names = [c.qualname for c in trace.calls]
    assert names == [
        "",
        "blocks.0",
        "blocks.0.lin",
        "blocks.0.drop",
        "blocks.0.norm",
        "blocks.1",
        "blocks.1.lin",
        "blocks.1.drop",
        "blocks.1.norm",
        "head",
    ]
    root, block = trace.calls[0], trace.calls[1]
    assert (root.parent, root.last, root.display_name) == (-1, 9, "<root Net>")
    assert (block.parent, block.last, block.cls) == (0, 4, "Block")
    assert [c.qualname for c in trace.nested(block)] == [
        "blocks.0.lin",
        "blocks.0.drop",
        "blocks.0.norm",
    ]
    # Returned innermost first: each call after the calls inside it.
    exits = [c.qualname for c in trace.by_exit()]
    assert exits[:4] == ["blocks.0.lin", "blocks.0.drop", "blocks.0.norm", "blocks.0"]
    assert exits[-1] == ""
    assert all(c.root == "Net" for c in trace.calls)
    assert trace.outermost == [0]


def test_class_mode_and_stochastic_layers_are_recorded() -> None:
    net = Net().train()
    net.blocks[1].eval()
    with tracing() as trace:
        net(torch.randn(3, 4))
    calls = {c.qualname: c for c in trace.calls}
    assert calls["blocks.0.drop"].stochastic
    assert calls["blocks.0.drop"].training
    assert calls["blocks.0.norm"].stochastic
    assert calls["blocks.0.norm"].cls == "BatchNorm1d"
    assert not calls["blocks.1.drop"].training
    assert not calls["blocks.0.lin"].stochastic
    assert calls["blocks.0.lin"].from_torch
    assert not calls["blocks.0"].from_torch


def test_inputs_outputs_and_keyword_arguments_are_fingerprinted() -> None:
    net = Net().eval()
    x = torch.randn(3, 4)
    with tracing() as trace:
        net(x)
    root, block = trace.calls[0], trace.calls[1]
    assert [leaf[:3] for leaf in root.inputs] == [("0", "float32", (3, 4))]
    assert [leaf[:3] for leaf in block.inputs] == [("0", "float32", (3, 4)), ("scale", "float", ())]
    assert root.outputs is not None
    assert [leaf[:3] for leaf in root.outputs] == [
        ("logits", "float32", (3, 2)),
        ("count", "int", ()),
    ]
    # The output of one call is the input of the next: the same digest.
    lin, drop = trace.calls[2], trace.calls[3]
    assert lin.outputs is not None
    assert lin.outputs[0][3] == drop.inputs[0][3]


def test_same_values_give_same_digests_and_changes_are_seen() -> None:
    lin = torch.nn.Linear(16, 16)
    x = torch.randn(8, 16)
    with tracing() as trace:
        lin(x)
        lin(x.clone())
        changed = x.clone()
        changed[5, 7] = torch.nextafter(changed[5, 7], torch.tensor(10.0))
        lin(changed)
    first, second, third = (c.inputs[0][3] for c in trace.calls)
    assert first == second != third


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(6, 4).t(),  # not contiguous
        lambda: torch.randn(5, 3).to(torch.bfloat16),
        lambda: torch.randn(5, 3, dtype=torch.complex64).conj(),
        lambda: torch.randn(4, 0),
        lambda: torch.tensor(3.5),
    ],
    ids=["transposed", "bfloat16", "conj", "empty", "scalar"],
)
def test_unusual_tensors_are_hashed_by_their_logical_values(make) -> None:
    value = make()
    with tracing() as trace:
        torch.nn.Identity()(value)
        torch.nn.Identity()(value.clone().resolve_conj().contiguous())
    left, right = (c.inputs[0] for c in trace.calls)
    assert left == right
    assert left[3] != -1


def test_inference_mode_tensors_and_in_place_modules() -> None:
    relu = torch.nn.ReLU(inplace=True)
    with torch.inference_mode(), tracing() as trace:
        x = torch.randn(4, 4)
        relu(x)
    call = trace.calls[0]
    assert call.outputs is not None
    # The input was hashed before the module changed it in place.
    assert call.inputs[0][3] != call.outputs[0][3]


def test_a_trace_holds_no_tensor() -> None:
    lin = torch.nn.Linear(256, 256)
    with tracing() as trace:
        x = torch.randn(512, 256)
        out = lin(x)
    refs = [weakref.ref(x), weakref.ref(out)]
    del x, out
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert len(trace) == 1


def test_state_holds_buffer_digests_and_parameter_versions() -> None:
    norm = torch.nn.BatchNorm1d(4).train()
    x = torch.randn(8, 4)
    with tracing() as trace:
        norm(x)
        norm(x)
    first, second = (dict((leaf[0], leaf) for leaf in c.state) for c in trace.calls)
    assert first["running_mean"] != second["running_mean"]
    assert first["weight"] == ("weight", "version", (), norm.weight._version)
    assert first["weight"] == second["weight"]


def test_settings_are_recorded() -> None:
    with tracing() as trace:
        pass
    assert trace.settings is not None
    assert trace.settings.threads == torch.get_num_threads()


def test_no_hook_is_installed_outside_a_block() -> None:
    assert no_hooks()
    with tracing():
        assert len(torch_module._global_forward_hooks) == 1
        assert len(torch_module._global_forward_pre_hooks) == 1
    assert no_hooks()
    with pytest.raises(ZeroDivisionError), tracing():
        raise ZeroDivisionError
    assert no_hooks()


def test_an_inner_block_records_alone_and_the_outer_resumes() -> None:
    lin = torch.nn.Linear(2, 2)
    x = torch.randn(1, 2)
    with tracing() as outer:
        lin(x)
        with tracing() as inner:
            lin(x)
            lin(x)
            assert len(torch_module._global_forward_hooks) == 1
        lin(x)
    assert len(outer) == 2
    assert len(inner) == 2
    assert no_hooks()


def test_a_forward_that_raises_keeps_the_nesting_right() -> None:
    class Fails(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("boom")

    class Outer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fails = Fails()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with contextlib.suppress(ValueError):
                self.fails(x)
            return self.lin(x)

    with tracing() as trace:
        Outer()(torch.randn(1, 2))
    root, fails, lin = trace.calls
    assert fails.outputs is None
    assert fails.parent == 0
    assert lin.parent == 0
    assert lin.outputs is not None
    assert root.last == 2


def test_calls_on_other_threads_are_ignored() -> None:
    lin = torch.nn.Linear(2, 2)
    with tracing() as trace:
        worker = threading.Thread(target=lin, args=(torch.randn(1, 2),))
        worker.start()
        worker.join()
        lin(torch.randn(1, 2))
    assert len(trace) == 1


def test_modules_outside_the_root_are_named_by_class() -> None:
    class MakesOne(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.Dropout()(x)

    class Root(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = MakesOne()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    with tracing() as trace:
        Root()(torch.randn(2))
    assert [c.qualname for c in trace.calls] == ["", "inner", "inner.<Dropout>"]


def test_a_module_attached_after_the_first_call_is_found() -> None:
    class Grows(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not hasattr(self, "late"):
                self.late = torch.nn.Linear(2, 2)
            return self.late(x)

    with tracing() as trace:
        Grows()(torch.randn(2))
    assert [c.qualname for c in trace.calls] == ["", "late"]


def test_elementwise_torch_activations_are_not_recorded_unless_outermost() -> None:
    class Custom(torch.nn.ReLU):
        pass

    net = torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.GELU(), Custom(), torch.nn.Identity()
    )
    with tracing() as trace:
        net(torch.randn(2, 4))
        torch.nn.ReLU()(torch.randn(2))
    # A subclass may do anything: only torch's own classes are left out.
    assert [(c.qualname, c.cls) for c in trace.calls] == [
        ("", "Sequential"),
        ("0", "Linear"),
        ("3", "Custom"),
        ("", "ReLU"),
    ]


def test_training_flag_is_read_after_the_eval_mode_switch() -> None:
    net = Net().train()
    guard = EvalModeGuard(strict=False, warn=False)
    guard.install()
    try:
        with tracing() as trace:
            net(torch.randn(3, 4))
    finally:
        guard.restore()
    assert not any(c.training for c in trace.calls)
    assert net.training


def test_the_eval_switch_is_seen_when_installed_after_the_trace() -> None:
    net = Net().train()
    guard = EvalModeGuard(strict=False, warn=False)
    with tracing() as trace:
        guard.install()
        try:
            net(torch.randn(3, 4))
        finally:
            guard.restore()
    assert not any(c.training for c in trace.calls)


def test_nan_arguments_and_dataclass_outputs() -> None:
    @dataclasses.dataclass
    class Output:
        hidden: torch.Tensor
        note: str

    class Returns(torch.nn.Module):
        def forward(self, x: torch.Tensor, eps: float) -> Output:
            return Output(hidden=x * 2, note="done")

    module = Returns()
    with tracing() as trace:
        module(torch.ones(2), float("nan"))
        module(torch.ones(2), float("nan"))
    first, second = trace.calls
    assert first.inputs == second.inputs
    assert first.outputs is not None
    assert [leaf[:3] for leaf in first.outputs] == [
        ("hidden", "float32", (2,)),
        ("note", "str", ()),
    ]


@pytest.mark.parametrize("size", [7, 4096, 1 << 13])
def test_small_tensors_are_hashed_whole(size: int) -> None:
    from pytest_determinism.nondeterminism.digest import tensor_digest

    base = torch.randint(0, 256, (size,), dtype=torch.uint8, generator=torch.Generator())
    base[0], base[-1] = 1, 2
    digest = tensor_digest(torch, base)
    assert tensor_digest(torch, base.clone()) == digest
    seen = {digest}
    for position in range(0, size, max(1, size // 97)):
        flipped = base.clone()
        flipped[position] ^= 1
        seen.add(tensor_digest(torch, flipped))
    swapped = base.clone()
    swapped[0], swapped[-1] = 2, 1
    seen.add(tensor_digest(torch, swapped))
    assert len(seen) == len(range(0, size, max(1, size // 97))) + 2


@pytest.mark.parametrize("size", [(1 << 13) + 1, (1 << 14) + 3, 1 << 16, (1 << 20) + 5])
def test_large_tensors_are_fingerprinted_by_a_spread_sample(size: int) -> None:
    from pytest_determinism.nondeterminism import digest as module

    base = torch.randint(0, 256, (size,), dtype=torch.uint8, generator=torch.Generator())
    digest = module.tensor_digest(torch, base)
    assert module.tensor_digest(torch, base.clone()) == digest
    words = size // 8
    start, step = module._sample_layout(words)
    sampled = [(start + k * step) * 8 for k in range(module._SAMPLE_WORDS)]
    assert sampled[-1] == (words - 1) * 8
    # Every sampled word (the last word among them) and the trailing bytes are seen, bit
    # by bit.
    for position in [*sampled[:: max(1, len(sampled) // 40)], sampled[-1] + 7, size - 1]:
        flipped = base.clone()
        flipped[position] ^= 0x80
        assert module.tensor_digest(torch, flipped) != digest, position
    # A change between sampled words is not: the price of a cost independent of size.
    unsampled = base.clone()
    unsampled[sampled[0] + 8] ^= 1
    assert module.tensor_digest(torch, unsampled) == digest
    # A change to a few percent of the elements, as dropout or noise makes, is.
    noisy = base.clone()
    noisy[torch.randperm(size, generator=torch.Generator().manual_seed(1))[: size // 50]] += 1
    assert module.tensor_digest(torch, noisy) != digest


@pytest.mark.parametrize("size", [7, 1 << 13, (1 << 14) + 3, (1 << 20) + 5])
def test_tensors_off_the_cpu_get_the_same_digest_from_their_sample(size: int) -> None:
    from pytest_determinism.nondeterminism.digest import _device_digest, tensor_digest

    # The device path runs on CPU tensors too; only the sample would cross to the host.
    base = torch.randint(0, 256, (size,), dtype=torch.uint8, generator=torch.Generator())
    shifted = torch.empty(size + 3, dtype=torch.uint8)[3:]  # a misaligned storage offset
    shifted.copy_(base)
    digest = tensor_digest(torch, base)
    assert _device_digest(torch, base, size) == digest
    assert _device_digest(torch, shifted, size) == digest


def test_per_size_digesters_stay_bounded_and_agree_with_fresh_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pytest_determinism.nondeterminism import digest as module

    monkeypatch.setattr(module, "_digesters", {})
    monkeypatch.setattr(module, "_DIGESTERS_KEPT", 3)
    generator = torch.Generator().manual_seed(3)
    tensors = [torch.randn(n, generator=generator) for n in (5, 3000, 4096, 70001, 5, 3000)]
    first = [module.tensor_digest(torch, tensor) for tensor in tensors]
    assert len(module._digesters) <= 3
    # The same sizes again, from a cleared table: the same digests.
    module._digesters.clear()
    assert [module.tensor_digest(torch, tensor) for tensor in tensors] == first
    # Through NumPy (a Parameter) and straight from memory, one digest.
    assert module.tensor_digest(torch, torch.nn.Parameter(tensors[3])) == first[3]


def test_tensor_subclasses_are_hashed_through_numpy() -> None:
    from pytest_determinism.nondeterminism.digest import tensor_digest

    class Tagged(torch.Tensor):
        pass

    plain = torch.randn(5000)
    assert tensor_digest(torch, plain.as_subclass(Tagged)) == tensor_digest(torch, plain)
