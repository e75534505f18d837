"""Cookbook 004: a model that only works after ``model.to(torch.bfloat16)``.

The golden of a bf16 model is recorded in bf16, compared at bf16 tolerance, and a run
whose output comes back in another dtype is reported as dtype drift, naming both dtypes.
"""

import os

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from pytest_determinism import deterministic
from pytest_determinism.strategies import tensors

# The dtype the demo script casts to. Run this file with EXAMPLE_MODEL_DTYPE=float32 to see
# a dtype drift report against the bf16 goldens.
MODEL_DTYPE = getattr(torch, os.environ.get("EXAMPLE_MODEL_DTYPE", "bfloat16"))

# Every test in this module is deterministic, on one CPU thread.
pytestmark = deterministic(threads=1)


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
    )
    return LlamaForCausalLM(config).eval()


# --8<-- [start:golden]
def test_bf16_logits(golden_tensor) -> None:
    model = tiny_llama().to(MODEL_DTYPE)  # the fix from the report: the model expects bf16
    input_ids = torch.tensor([[5, 17, 42, 8, 23, 11]])

    with torch.no_grad():
        logits = model(input_ids=input_ids).logits

    # bfloat16 keeps 8 bits of mantissa: the default tolerance is rtol=1.6e-2, atol=1e-5.
    golden_tensor.check(logits, name="logits")
    # A comparison in float32 would fail on any other CPU; cast only for a loose check.
    golden_tensor.check(logits.float().softmax(-1), name="probs", rtol=1.6e-2, atol=1e-4)


# --8<-- [end:golden]


# --8<-- [start:cast_back]
# The dtype the model runs in before its logits are cast back to float32. The golden was
# recorded in float32; run with EXAMPLE_CAST_DTYPE=bfloat16 to see a precision report.
CAST_DTYPE = getattr(torch, os.environ.get("EXAMPLE_CAST_DTYPE", "float32"))


def test_float32_logits(golden_tensor) -> None:
    model = tiny_llama().to(CAST_DTYPE)
    input_ids = torch.tensor([[5, 17, 42, 8, 23, 11]])

    with torch.no_grad():
        logits = model(input_ids=input_ids).logits.float()  # stored as float32 either way

    golden_tensor.check(logits, name="logits")


# --8<-- [end:cast_back]


# --8<-- [start:drift]
def test_bf16_against_fp32_reference() -> None:
    model = tiny_llama()
    input_ids = torch.tensor([[5, 17, 42, 8, 23, 11]])

    with torch.no_grad():
        reference = model(input_ids=input_ids).logits
        bf16 = model.to(torch.bfloat16)(input_ids=input_ids).logits

    # How far bf16 drifts from fp32 in a whole (tiny) model: far beyond fp32 tolerance.
    drift = (bf16.float() - reference).abs().max().item()
    assert 1e-3 < drift < 0.5


# --8<-- [end:drift]


# --8<-- [start:property]
@settings(max_examples=25, deadline=None)
@given(
    hidden=tensors(
        dtype=torch.bfloat16,
        shape=(4, 32),
        elements=st.floats(-8, 8, allow_nan=False, allow_infinity=False, width=32),
    )
)
def test_rmsnorm_bf16_within_one_rounding(hidden: torch.Tensor) -> None:
    norm = LlamaRMSNorm(32)
    expected = norm(hidden.float())  # the layer in float32
    actual = norm.to(torch.bfloat16)(hidden)  # computes in float32 inside, rounds once

    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual.float(), expected, rtol=2**-8, atol=1e-5)


# --8<-- [end:property]
