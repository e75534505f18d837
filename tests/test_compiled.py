"""Compiled models (torch.compile and Module.compile) in every mode, with no warning, error or
graph break from the plugin's hooks."""

from __future__ import annotations

import pytest
import torch


def _warm_up() -> None:
    # In-process pytester runs drop the modules first imported inside them, and the
    # hundreds Dynamo imports at its first compile cannot be imported twice in one process
    # ("already registered"): compile once here, so they stay loaded.
    class Tiny(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1

    torch.compile(Tiny(), backend="eager", fullgraph=True)(torch.ones(1))


_warm_up()

# Dynamo's default backend is inductor; "eager" keeps Dynamo (where the hooks matter) and
# skips code generation, which costs seconds per graph on a small machine.
MODELS = """
import pytest
import torch

class Net(torch.nn.Module):
    def __init__(self, p=0.5):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.drop = torch.nn.Dropout(p)

    def forward(self, x):
        return self.drop(self.lin(x)).relu()

@pytest.fixture
def compiled():
    return torch.compile(Net().eval(), backend="eager", fullgraph=True)

@pytest.fixture
def in_place():
    net = Net().eval()
    net.compile(backend="eager", fullgraph=True)
    return net
"""

STRICT = ("-W", "error::UserWarning", "-W", "error::DeprecationWarning")


@pytest.fixture(autouse=True)
def _hash_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    # --determinism warns about an unset PYTHONHASHSEED, which -W error would turn into an
    # error of its own.
    monkeypatch.setenv("PYTHONHASHSEED", "0")


def test_compiled_models_in_every_mode(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        MODELS
        + """
@pytest.mark.deterministic
def test_fixture_built(compiled, golden_tensor):
    golden_tensor.check(compiled(torch.ones(2, 4)))

@pytest.mark.deterministic
def test_compiled_in_body(golden_tensor):
    # Found in timm's suite: the plugin's tracing hook was traced into this graph.
    model = torch.compile(torch.nn.Linear(4, 4).eval(), backend="eager", fullgraph=True)
    golden_tensor.check(model(torch.ones(2, 4)))

@pytest.mark.deterministic
def test_compile_method(in_place, golden_tensor):
    golden_tensor.check(in_place(torch.ones(2, 4)))

@pytest.mark.deterministic
def test_compile_method_in_body(golden_tensor):
    net = Net().eval()
    net.compile(backend="eager", fullgraph=True)
    golden_tensor.check(net(torch.ones(2, 4)))

def test_no_hook_left_behind():
    hooks = torch.nn.modules.module
    assert not hooks._global_forward_pre_hooks and not hooks._global_forward_hooks
"""
    )
    for mode in ("--update-golden", None, "--determinism"):
        result = run(*STRICT, *([mode] if mode else []))
        result.assert_outcomes(passed=5)
        assert "warning" not in result.stdout.str().lower(), mode
    result.stdout.fnmatch_lines(["determinism: 4 tests x 2 runs (+1 other-seed run)*"])


def test_compiled_train_mode_model_is_switched_and_named(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        MODELS
        + """
@pytest.mark.deterministic
def test_wrapper():
    model = torch.compile(Net(), backend="eager", fullgraph=True)
    x = torch.ones(2, 4)
    assert torch.equal(model(x), model(x))
    assert not model.training

@pytest.mark.deterministic
def test_in_place():
    net = Net()
    net.compile(backend="eager", fullgraph=True)
    x = torch.ones(2, 4)
    assert torch.equal(net(x), net(x))
    assert not net.training
"""
    )
    for mode in (None, "--determinism"):
        result = run(
            "-W", "always::pytest_determinism.DeterminismWarning", *([mode] if mode else [])
        )
        result.assert_outcomes(passed=2)
        result.stdout.fnmatch_lines(
            [
                "*DeterminismWarning: Net (compiled) was called in training mode, where these "
                "layers act differently from eval mode: drop (Dropout)*"
            ]
        )
        assert "OptimizedModule" not in result.stdout.str()
        assert "_orig_mod" not in result.stdout.str()


@pytest.mark.parametrize("how", ["wrapper", "in_place"])
def test_compiled_train_mode_model_caught_by_the_probe(
    pytester: pytest.Pytester, run, how: str
) -> None:
    build = (
        'model = torch.compile(Net(), backend="eager", fullgraph=True)'
        if how == "wrapper"
        else 'model = Net()\n    model.compile(backend="eager", fullgraph=True)'
    )
    pytester.makepyfile(
        MODELS
        + f"""
@pytest.mark.deterministic(eval_mode=False, stochastic=False)
def test_inference(golden_tensor):
    {build}
    golden_tensor.check(model(torch.ones(2, 4)))
"""
    )
    assert run("--update-golden").ret == 0
    result = run(*STRICT, "--determinism")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "Seed-dependent: the probe run differs from run 0.*",
            "  module: <root Net>",
            "  class: Net, compiled (torch.compile)*",
            "  mode: training",
            "  stochastic layers inside: drop (Dropout, training)",
            "*likely cause: stochastic layer in training mode*",
        ]
    )
    output = result.stdout.str()
    assert "_dynamo" not in output and "Dynamo" not in output
    # Below the module: compiled code runs its ops as one, so the op is not named, and the
    # report says why and how to see it.
    assert (
        "op: not seen: the difference arose inside <root Net>, a compiled module "
        "(torch.compile), whose ops run as compiled code that cannot be recorded one by one; "
        "run it uncompiled to see the op and the line"
    ) in " ".join(output.split())


def test_inductor_runs_deterministically_and_is_restored(pytester: pytest.Pytester) -> None:
    # In a fresh interpreter: this one imported inductor's config already, and the flag's
    # path for a config first imported inside the test is the one to check.
    pytester.makepyfile(
        """
import importlib
import pytest
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x).relu().sum(-1)

@pytest.mark.deterministic
def test_compiled(golden_tensor):
    # Imported here for the first time in this process, as torch.compile would.
    inductor = importlib.import_module("torch._inductor.config")
    assert inductor.deterministic
    model = torch.compile(Net().eval())
    golden_tensor.check(model(torch.ones(2, 4)))

def test_after():
    import torch._inductor.config as inductor

    assert not inductor.deterministic
"""
    )
    # Inductor's own code generation uses a torch.jit API torch itself deprecates.
    inductor = (*STRICT, "-W", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
    result = pytester.runpytest_subprocess("-p", "no:randomly", *inductor, "--update-golden")
    result.assert_outcomes(passed=2)
    result = pytester.runpytest_subprocess("-p", "no:randomly", *inductor, "--determinism")
    result.assert_outcomes(passed=2)


def test_same_error_in_every_run_is_that_error(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        """
import itertools
import pytest
import torch

counter = itertools.count()

@pytest.mark.deterministic
def test_shape():
    torch.nn.Linear(4, 4).eval()(torch.ones(3, 5))

@pytest.mark.deterministic
def test_address():
    raise ValueError(f"bad value {object()}")

@pytest.mark.deterministic
def test_changing_message():
    raise ValueError(f"call number {next(counter)}")
"""
    )
    plain = run()
    result = run("--determinism")
    result.assert_outcomes(failed=3)
    for outcome in (plain, result):
        outcome.stdout.fnmatch_lines(
            [
                "*_ test_shape _*",
                ">*torch.nn.Linear(4, 4).eval()(torch.ones(3, 5))",
                "E*RuntimeError: mat1 and mat2 shapes cannot be multiplied (3x5 and 4x4)",
                "*_ test_address _*",
                "E*ValueError: bad value <object object at 0x*>",
            ]
        )
    result.stdout.fnmatch_lines(
        [
            "*_ test_changing_message _*",
            "Nondeterministic: run 1 differs from run 0*",
            "  run 0 raised ValueError: call number 0",
            "  run 1 raised ValueError: call number 1",
        ]
    )
    result.stdout.fnmatch_lines(
        ["determinism: 3 tests x 2 runs*1 nondeterministic*", "*nondeterministic*changing*"]
    )
    assert "Nondeterministic" not in result.stdout.str().split("test_changing_message")[0]
