"""Paying only on failure, and the op and the line below the first diverging module.

A passing check records nothing; a failing one is run again with recording on, and the
report names the first torch op that differed and the line of code that called it.
"""

from __future__ import annotations

import pytest

MAE_TEST = """
import pytest
import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

pytestmark = pytest.mark.deterministic

def test_mae(golden_tensor):
    config = ViTMAEConfig(
        image_size=16, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, decoder_hidden_size=16,
        decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=32, mask_ratio=0.5,
    )
    model = ViTMAEForPreTraining(config).eval()
    pixels = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        golden_tensor.check(model(pixel_values=pixels).logits, "logits")
"""


def _failing_determinism_output(run) -> str:
    """Record the goldens, then run --determinism, which must fail: its output."""
    run("--update-golden", "-q")
    result = run("--determinism", "-q")
    result.assert_outcomes(failed=1)
    return result.stdout.str()


def test_vit_mae_random_masking_names_aten_rand_and_the_library_line(
    pytester: pytest.Pytester, run
) -> None:
    pytest.importorskip("transformers")
    pytester.makepyfile(test_mae=MAE_TEST)
    out = _failing_determinism_output(run)
    assert "Seed-dependent" in out
    assert "op: aten.rand.default, with identical inputs" in out
    assert (
        "line: transformers/models/vit_mae/modeling_vit_mae.py:" in out
        and " in random_masking: noise = torch.rand(" in out
    )


def test_functional_dropout_ignoring_training_names_its_line_in_the_test_module(
    pytester: pytest.Pytester, run
) -> None:
    pytester.makepyfile(
        test_drop="""
        import pytest
        import torch
        import torch.nn.functional as F

        pytestmark = pytest.mark.deterministic

        class Block(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(8, 8)

            def forward(self, x):
                x = self.linear(x)
                return F.dropout(x, 0.5, training=True)

        def test_drop(golden_tensor):
            model = torch.nn.Sequential(torch.nn.Linear(8, 8), Block()).eval()
            golden_tensor.check(model(torch.ones(4, 8)), "out")
        """
    )
    out = _failing_determinism_output(run)
    assert "module: 1" in out
    # On the CPU, dropout in training mode draws its mask with bernoulli_.
    assert "op: aten.bernoulli_.float, with identical inputs" in out
    assert "line: test_drop.py:14 in forward: return F.dropout(x, 0.5, training=True)" in out


def test_unseeded_numpy_noise_names_the_line_where_it_enters(
    pytester: pytest.Pytester, run
) -> None:
    pytester.makepyfile(
        test_noise="""
        import numpy as np
        import pytest
        import torch

        pytestmark = pytest.mark.deterministic

        class Noisy(torch.nn.Module):
            def forward(self, x):
                noise = torch.from_numpy(np.random.default_rng().standard_normal(x.shape))
                return x + noise.float()

        def test_noise(golden_tensor):
            golden_tensor.check(Noisy()(torch.ones(4, 8)), "out")
        """
    )
    out = _failing_determinism_output(run)
    assert "Nondeterministic: run 1 differs from run 0" in out
    # The op that makes a tensor of NumPy's array is the first to see the new data.
    assert "op: aten.lift_fresh.default, whose inputs already differed" in out
    assert "line: test_noise.py:9 in forward: noise = torch.from_numpy(" in out


def test_a_difference_in_the_tests_own_code_gets_the_op_and_the_line(
    pytester: pytest.Pytester, run
) -> None:
    pytester.makepyfile(
        test_own="""
        import pytest
        import torch

        pytestmark = pytest.mark.deterministic

        def test_own(golden_tensor):
            out = torch.nn.Linear(4, 4)(torch.ones(2, 4))
            unseeded = torch.Generator()
            unseeded.seed()
            golden_tensor.check(out + torch.rand(2, 4, generator=unseeded), "out")
        """
    )
    out = _failing_determinism_output(run)
    assert "outside every module call" in out
    assert "op: aten.rand.generator, with identical inputs" in out
    assert "line: test_own.py:10 in test_own: golden_tensor.check(out + torch.rand(" in out


def test_a_difference_that_does_not_come_back_is_reported_as_not_reproduced(
    pytester: pytest.Pytester, run
) -> None:
    pytester.makepyfile(
        test_flaky="""
        import pytest
        import torch

        pytestmark = pytest.mark.deterministic
        calls = []

        def test_flaky(golden_tensor):
            calls.append(1)
            model = torch.nn.Linear(4, 4)
            out = model(torch.ones(2, 4))
            if len(calls) == 2:  # run 1, the first time only
                out = out + 1
            golden_tensor.check(out, "out")
        """
    )
    out = _failing_determinism_output(run)
    assert "Nondeterministic: run 1 differs from run 0" in out
    assert "out: float32[2, 4]: 8 of 8 elements differ, max abs diff 1" in out
    assert "not reproduced: run 0 and run 1 were made again 3 times" in out
    assert "a race in a kernel" in out
    assert "First module call" not in out


def test_assert_deterministic_names_the_op_and_the_line(pytester: pytest.Pytester, run) -> None:
    pytester.makepyfile(
        test_helper="""
        import pytest
        import torch
        from pytest_determinism import NondeterminismError, assert_deterministic

        class Noise(torch.nn.Module):
            def forward(self, x):
                return x + torch.rand_like(x)

        def test_helper():
            model = torch.nn.Sequential(torch.nn.Linear(4, 4), Noise()).eval()
            with pytest.raises(NondeterminismError) as info:
                assert_deterministic(model, torch.ones(2, 4))
            text = str(info.value)
            assert "module: 1" in text
            assert "op: aten.rand_like.default, with identical inputs" in text
            assert "line: test_helper.py:7 in forward: return x + torch.rand_like(x)" in text
        """
    )
    run("-q").assert_outcomes(passed=1)


def test_passing_runs_record_nothing(pytester: pytest.Pytester, run) -> None:
    # The spy counts tracer blocks and op recorders made while the suite runs: a passing
    # test under --determinism must make none, a failing one must make some.
    pytester.makeconftest(
        """
        import pytest
        # The classes the re-runs use, looked up as they do (through sys.modules): an
        # in-process pytester run drops the modules first imported inside it, while
        # `from package import module` may still find the dropped one on the package.
        from pytest_determinism.nondeterminism.recorded import OpRecorder
        from pytest_determinism.nondeterminism.trace import Tracer

        made = {"tracers": 0, "recorders": 0}

        @pytest.fixture(autouse=True)
        def spy(monkeypatch, request):
            original_init = Tracer.__init__
            original_mode = OpRecorder.mode

            def counting_init(self, *args, **kwargs):
                made["tracers"] += 1
                original_init(self, *args, **kwargs)

            def counting_mode(self, *args, **kwargs):
                made["recorders"] += 1
                return original_mode(self, *args, **kwargs)

            monkeypatch.setattr(Tracer, "__init__", counting_init)
            monkeypatch.setattr(OpRecorder, "mode", counting_mode)
            yield
            print(f"\\nMADE {request.node.name} {made['tracers']} {made['recorders']}")
            made["tracers"] = made["recorders"] = 0
        """
    )
    pytester.makepyfile(
        test_two="""
        import pytest
        import torch

        pytestmark = pytest.mark.deterministic

        def test_passes(golden_tensor):
            model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))
            golden_tensor.check(model(torch.ones(2, 4)), "out")

        def test_fails(golden_tensor):
            unseeded = torch.Generator()
            unseeded.seed()
            x = torch.rand(2, 4, generator=unseeded)
            golden_tensor.check(torch.nn.Linear(4, 4)(x), "out")
        """
    )
    run("--update-golden", "-q")
    result = run("--determinism", "-q", "-s")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "MADE test_passes 0 0" in out
    assert "MADE test_fails 4 2" in out


def test_passing_runs_leave_nested_module_calls_without_hooks(
    pytester: pytest.Pytester, run
) -> None:
    # torch runs a module call on its fast path only while no global hook is registered:
    # inside an outermost call of a passing check, nested calls must find none.
    pytester.makepyfile(
        test_fast="""
        import pytest
        import torch

        registry = torch.nn.modules.module
        SEEN = []

        class Inner(torch.nn.Linear):
            def forward(self, x):
                SEEN.append(bool(registry._global_forward_pre_hooks))
                return super().forward(x)

        @pytest.mark.deterministic
        def test_model(golden_tensor):
            model = torch.nn.Sequential(Inner(4, 4), torch.nn.Dropout(0.5)).train()
            golden_tensor.check(model(torch.ones(2, 4)), "out")

        def test_after():
            # 2 runs and the probe run; the model was switched to eval mode before each.
            assert SEEN == [False, False, False]
            assert not registry._global_forward_pre_hooks
        """
    )
    run("--update-golden", "-q", "-W", "ignore")
    run("--determinism", "-q", "-p", "no:randomly", "-W", "ignore").assert_outcomes(passed=2)
