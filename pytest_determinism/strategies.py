"""hypothesis strategies for torch tensors (this module imports hypothesis and torch).

``tensors(dtype=torch.bfloat16, shape=(2, 3))`` draws tensors of any dtype torch has:
floats of every width (float16, bfloat16 and the float8 types included), integers of every
width, bools and complex numbers. Without ``elements``, floating values come from raw bit
patterns, so NaN, both infinities, -0.0 and subnormals turn up as often as ordinary
numbers: exactly what a comparison or storage round trip must survive.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = ["FLOAT8_DTYPES", "dtypes", "shapes", "tensors"]

#: The float8 dtypes this torch build has (older builds lack some).
FLOAT8_DTYPES: tuple[torch.dtype, ...] = tuple(
    getattr(torch, name)
    for name in (
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
    )
    if hasattr(torch, name)
)

_BITS_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16}
_NUMPY = {
    torch.bool: np.bool_,
    torch.uint8: np.uint8,
    torch.int8: np.int8,
    torch.int16: np.int16,
    torch.int32: np.int32,
    torch.int64: np.int64,
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.complex64: np.complex64,
    torch.complex128: np.complex128,
}
for _name, _np in (("uint16", np.uint16), ("uint32", np.uint32), ("uint64", np.uint64)):
    if hasattr(torch, _name):
        _NUMPY[getattr(torch, _name)] = _np

_ALL_DTYPES: tuple[torch.dtype, ...] = (
    *_NUMPY,
    torch.float16,
    torch.bfloat16,
    *FLOAT8_DTYPES,
)


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise TypeError(f"tensors(dtype=...): {dtype!r} is not a torch dtype")
    return resolved


def dtypes(*, floating_only: bool = False) -> st.SearchStrategy[torch.dtype]:
    """Every dtype ``tensors`` supports (only floating ones with ``floating_only``)."""
    choices = [d for d in _ALL_DTYPES if not floating_only or d.is_floating_point]
    return st.sampled_from(choices)


def shapes(
    *, min_dims: int = 0, max_dims: int = 4, min_side: int = 0, max_side: int = 6
) -> st.SearchStrategy[tuple[int, ...]]:
    """Tensor shapes, 0-d and empty ones included by default."""
    return hnp.array_shapes(
        min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side
    )


def _special_bits(dtype: torch.dtype, bits: torch.dtype) -> list[int]:
    # NaN, the infinities, -0.0, the extremes and the smallest subnormal, as this dtype
    # holds them (float8 types without infinities turn those into NaN or saturate).
    info = torch.finfo(dtype)
    values = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, info.max, -info.max]
    values.append(info.smallest_normal / 2 ** max(info.bits - 8, 1))
    specials = torch.tensor(values, dtype=torch.float32).to(dtype).view(bits)
    return sorted(set(specials.tolist()))


def _from_bits(dtype: torch.dtype, shape: tuple[int, ...]) -> st.SearchStrategy[torch.Tensor]:
    # Every bit pattern is a value of these dtypes; the special ones are mixed in on
    # purpose, since random bits would almost never hit the two infinities.
    bits = _BITS_VIEW.get(dtype, torch.uint8)
    storage = np.int16 if bits is torch.int16 else np.uint8
    limits = np.iinfo(storage)
    element = st.one_of(
        st.sampled_from(_special_bits(dtype, bits)),
        st.integers(int(limits.min), int(limits.max)),
    )
    return hnp.arrays(storage, shape, elements=element).map(
        lambda array: torch.from_numpy(np.ascontiguousarray(array)).view(dtype)
    )


def _from_elements(
    dtype: torch.dtype, shape: tuple[int, ...], elements: st.SearchStrategy[Any]
) -> st.SearchStrategy[torch.Tensor]:
    source = _NUMPY.get(dtype, np.float64)
    return hnp.arrays(source, shape, elements=elements).map(
        lambda array: torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
    )


def tensors(
    dtype: torch.dtype | str | st.SearchStrategy[torch.dtype] = torch.float32,
    shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]] | None = None,
    elements: st.SearchStrategy[Any] | None = None,
    device: str | torch.device = "cpu",
) -> st.SearchStrategy[torch.Tensor]:
    """A strategy of torch tensors.

    ``dtype``: a torch dtype, its name (``"bfloat16"``) or a strategy of dtypes.
    ``shape``: a tuple or a strategy of tuples (default: ``shapes()``).
    ``elements``: a strategy of Python numbers cast to ``dtype`` (values it cannot hold
    exactly are rounded as torch rounds); default: every value of the dtype, specials
    included. ``device``: where the tensors are put.
    """
    dtype_strategy = dtype if isinstance(dtype, st.SearchStrategy) else st.just(_as_dtype(dtype))
    shape_strategy = (
        shape
        if isinstance(shape, st.SearchStrategy)
        else (st.just(tuple(shape)) if shape is not None else shapes())
    )

    @st.composite
    def draw_tensor(draw: st.DrawFn) -> torch.Tensor:
        chosen = _as_dtype(draw(dtype_strategy))
        size = draw(shape_strategy)
        if elements is not None:
            tensor = draw(_from_elements(chosen, size, elements))
        elif chosen in _NUMPY:
            tensor = torch.from_numpy(np.ascontiguousarray(draw(hnp.arrays(_NUMPY[chosen], size))))
        else:
            tensor = draw(_from_bits(chosen, size))
        return tensor.to(device)

    return draw_tensor()
