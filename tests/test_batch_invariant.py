"""assert_batch_invariant: each sample alone against its row of the batched output."""

from __future__ import annotations

import re

import pytest
import torch

from pytest_determinism import assert_batch_invariant

torch.manual_seed(0)
X = torch.randn(4, 6)
TABLE = torch.randn(20, 5)


def rowwise(x: torch.Tensor) -> torch.Tensor:
    return x * 2 + 1


def test_a_rowwise_function_is_batch_invariant() -> None:
    assert_batch_invariant(rowwise, X)
    assert_batch_invariant(lambda x: {"y": rowwise(x), "parts": [x.abs(), x.sign()]}, X)


def test_a_function_mixing_samples_is_caught_for_every_sample() -> None:
    with pytest.raises(AssertionError) as info:
        assert_batch_invariant(lambda x: x - x.mean(0), X)
    message = str(info.value)
    assert message.startswith("not batch invariant: 4 of 4 samples differ")
    assert all(f"sample {i}: DIFFERS" in message for i in range(4))


def test_the_differing_sample_and_position_are_named() -> None:
    def flawed(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = x * 2
        if x.shape[0] > 1:
            out[2, 4] += 0.5  # only in a batch
        return {"y": out, "loss": out.sum()}

    with pytest.raises(AssertionError) as info:
        assert_batch_invariant(flawed, X)
    message = str(info.value)
    assert "1 of 4 samples differ" in message
    assert "sample 0: identical" in message
    assert "sample 2: DIFFERS" in message
    assert "y: 1 of 6 elements differ (exact, float32)" in message
    assert "largest absolute difference 0.5 at (0, 4) alone / (2, 4) in the batch" in message
    assert "first difference at (0, 4) alone / (2, 4) in the batch" in message
    assert "not compared (no batch dimension): loss" in message


def test_tolerances() -> None:
    def noisy(x: torch.Tensor) -> torch.Tensor:
        return x * (1 + 1e-7) if x.shape[0] > 1 else x

    with pytest.raises(AssertionError, match="exact"):
        assert_batch_invariant(noisy, X)
    assert_batch_invariant(noisy, X, exact=False)  # float32's default tolerance
    assert_batch_invariant(noisy, X, rtol=1e-6)  # a tolerance implies exact=False
    with pytest.raises(AssertionError, match=re.escape("rtol=0 atol=0")):
        assert_batch_invariant(noisy, X, rtol=0.0, atol=0.0)


def test_dict_inputs_are_keyword_arguments_and_tuples_positional() -> None:
    def fn(a: torch.Tensor, b: torch.Tensor, *, flag: bool = False) -> torch.Tensor:
        return a + b if flag else a - b

    assert_batch_invariant(fn, {"a": X, "b": X.flip(1), "flag": True})
    assert_batch_invariant(fn, (X, X.flip(1)))


def test_another_batch_dimension() -> None:
    sequence_first = torch.randn(5, 3, 4)  # (time, batch, features)
    assert_batch_invariant(lambda x: x.cumsum(0), sequence_first, batch_dim=1)
    with pytest.raises(AssertionError, match="2 of 3 samples differ") as info:
        assert_batch_invariant(lambda x: x.cumsum(1), sequence_first, batch_dim=1)
    assert "sample 0: identical" in str(info.value)
    assert "first difference at (0, 0, 0) alone / (0, 1, 0) in the batch" in str(info.value)


def pool(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Embeds tokens and averages the real ones: invariant to padding."""
    emb = TABLE[input_ids] * attention_mask[..., None]
    pooled = emb.sum(1) / attention_mask.sum(1, keepdim=True)
    return {"tokens": emb, "pooled": pooled}


def forgets_the_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return TABLE[input_ids].mean(1)


IDS = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 8, 9, 10], [11, 0, 0, 0, 0]])
RIGHT = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
LEFT_IDS = torch.tensor([[0, 0, 3, 4, 5], [6, 7, 8, 9, 10], [0, 0, 0, 0, 11]])
LEFT = RIGHT.flip(1)


@pytest.mark.parametrize(("ids", "mask"), [(IDS, RIGHT), (LEFT_IDS, LEFT)], ids=["right", "left"])
def test_padding_is_dropped_when_a_sample_runs_alone(ids: torch.Tensor, mask: torch.Tensor) -> None:
    seen = []

    def spy(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        seen.append(input_ids.tolist())
        return pool(input_ids, attention_mask)

    assert_batch_invariant(spy, {"input_ids": ids, "attention_mask": mask}, exact=False)
    assert seen[1:] == [[[3, 4, 5]], [[6, 7, 8, 9, 10]], [[11]]]


def test_a_function_that_ignores_the_mask_is_caught_on_the_padded_samples() -> None:
    with pytest.raises(AssertionError) as info:
        assert_batch_invariant(forgets_the_mask, {"input_ids": IDS, "attention_mask": RIGHT})
    message = str(info.value)
    assert "2 of 3 samples differ when run alone without their padding" in message
    assert "sample 1: identical" in message
    assert "sample 0: DIFFERS" in message
    assert "sample 2: DIFFERS" in message


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"disagree on the batch size .*a: 4, b: 3"):
        assert_batch_invariant(lambda a, b: a, {"a": X, "b": X[:3]})
    with pytest.raises(TypeError, match="expected a tensor, a dict of tensors"):
        assert_batch_invariant(rowwise, "text")
    with pytest.raises(ValueError, match="no tensor to split"):
        assert_batch_invariant(lambda flag: flag, {"flag": True})
    with pytest.raises(ValueError, match="'attention_mask' must be a tensor"):
        assert_batch_invariant(pool, {"input_ids": IDS, "attention_mask": RIGHT[..., None]})
    with pytest.raises(ValueError, match="no output has the batch dimension"):
        assert_batch_invariant(lambda x: x.sum(), X)
    with pytest.raises(ValueError, match="batch_dim must be >= 0"):
        assert_batch_invariant(rowwise, X, batch_dim=-1)
    with pytest.raises(ValueError, match="no dimension 2"):
        assert_batch_invariant(rowwise, X, batch_dim=2)
    with pytest.raises(TypeError, match="the batched output cannot be compared"):
        assert_batch_invariant(lambda x: {"x": x, "o": object()}, X)


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return transformers.LlamaForCausalLM(config).eval()


LLAMA_IDS = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 9], [0, 0, 0, 8, 3]])
LLAMA_MASK = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])


def test_a_llama_with_left_padding_is_batch_invariant(llama: torch.nn.Module) -> None:
    positions = (LLAMA_MASK.cumsum(-1) - 1).clamp(min=0)

    def logits(**batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return llama(**batch, use_cache=False).logits

    batch = {"input_ids": LLAMA_IDS, "attention_mask": LLAMA_MASK, "position_ids": positions}
    assert_batch_invariant(logits, batch, exact=False)


def test_a_llama_called_without_its_mask_is_caught(llama: torch.nn.Module) -> None:
    def logits(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return llama(input_ids=input_ids, use_cache=False).logits  # the mask is forgotten

    with pytest.raises(AssertionError) as info:
        assert_batch_invariant(
            logits, {"input_ids": LLAMA_IDS, "attention_mask": LLAMA_MASK}, exact=False
        )
    message = str(info.value)
    assert "2 of 3 samples differ" in message
    assert "sample 1: identical" in message
    # Sample 0's first real token sits at position 2 of the padded batch.
    assert "first difference at (0, 0, 0) alone / (0, 2, 0) in the batch" in message
    assert "first difference at (0, 0, 0) alone / (2, 3, 0) in the batch" in message


def test_ini_tolerances_and_caller_traceback_in_a_real_run(pytester: pytest.Pytester) -> None:
    """The project's golden_tolerances apply; a failure shows the caller, not the helper."""
    pytester.makeini("[pytest]\ngolden_tolerances = float32: rtol=0.5 atol=0.5\n")
    pytester.makepyfile(
        """
import torch
from pytest_determinism import assert_batch_invariant

def scaled(x):
    return x * (1.1 if x.shape[0] == 1 else 1.0)

def test_loose():
    assert_batch_invariant(scaled, torch.ones(2, 3), exact=False)

def test_exact():
    assert_batch_invariant(scaled, torch.ones(2, 3))
"""
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.no_fnmatch_line("*pytest_determinism/helpers.py*")
    result.stdout.fnmatch_lines(["*assert_batch_invariant(scaled, torch.ones(2, 3))*"])
