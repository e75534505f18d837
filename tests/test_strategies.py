"""The hypothesis strategies draw what they promise."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_determinism.strategies import FLOAT8_DTYPES, dtypes, shapes, tensors


@given(tensors(dtype=dtypes(), shape=shapes()))
def test_any_dtype_and_shape(t: torch.Tensor) -> None:
    assert isinstance(t, torch.Tensor)
    assert t.device.type == "cpu"
    assert t.is_contiguous()


@given(tensors(dtype="bfloat16", shape=(3, 2)))
def test_fixed_dtype_name_and_shape(t: torch.Tensor) -> None:
    assert t.dtype is torch.bfloat16 and t.shape == (3, 2)


@given(tensors(dtype=torch.float16, shape=(2,), elements=st.floats(-10, 10)))
def test_elements_are_cast(t: torch.Tensor) -> None:
    assert t.dtype is torch.float16
    assert bool((t.abs() <= 10).all())


@settings(max_examples=300)
@given(tensors(dtype=st.sampled_from([torch.bfloat16, torch.float16]), shape=(64,)))
def test_bit_patterns_reach_specials(t: torch.Tensor) -> None:
    # Not every example has one, but the strategy must be able to produce them.
    assert t.numel() == 64


def test_specials_do_occur() -> None:
    seen = {"nan": False, "inf": False, "negzero": False}

    @settings(max_examples=200, database=None)
    @given(tensors(dtype=torch.bfloat16, shape=(256,)))
    def probe(t: torch.Tensor) -> None:
        f = t.float()
        seen["nan"] |= bool(f.isnan().any())
        seen["inf"] |= bool(f.isinf().any())
        seen["negzero"] |= bool(((f == 0) & torch.signbit(f)).any())

    probe()
    assert all(seen.values()), seen


@given(tensors(dtype=st.sampled_from(FLOAT8_DTYPES), shape=shapes(max_dims=2)))
def test_float8(t: torch.Tensor) -> None:
    assert t.dtype in FLOAT8_DTYPES
