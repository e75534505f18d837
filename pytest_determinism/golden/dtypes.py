"""What the plugin knows about dtypes: names, kinds, bit containers, and decoding.

Dtypes are named as torch spells them. Those NumPy lacks are held in an unsigned integer
array of the same item size (``bfloat16`` as ``uint16``, the float8 types as ``uint8``,
``complex32`` as ``uint32``) and decoded here, without torch, into the NumPy dtype their
values are compared in.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

import numpy as np

__all__ = [
    "DTYPES",
    "EXACT_KINDS",
    "Array",
    "DtypeInfo",
    "Number",
    "bytes_equal",
    "compute_dtype",
    "decode",
    "numpy_dtype_name",
    "python_number",
    "raw_view",
]

#: A Python number: how a single value is reported.
Number = bool | int | float | complex
#: A NumPy array of any dtype and shape.
Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class DtypeInfo:
    """What the plugin knows about one dtype, by its torch name.

    ``kind`` is ``"bool"``, ``"int"``, ``"uint"``, ``"float"``, ``"complex"`` or
    ``"packed"`` (sub-byte floats, two to a byte, compared bit for bit); ``storage``
    is the NumPy dtype that holds the bits (the dtype itself where NumPy has it).
    """

    name: str
    kind: str
    storage: np.dtype[Any]

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return int(self.storage.itemsize)

    @cached_property
    def native(self) -> bool:
        """Whether ``storage`` is the dtype itself rather than a same-size bit container."""
        # Cached: NumPy builds a dtype's name in Python on every read, and every checked
        # value asks.
        return self.storage.name == self.name

    @property
    def torch_container(self) -> str:
        """torch's integer dtype of the same item size, through which torch hands over the
        bits of a dtype that is not native."""
        return _TORCH_CONTAINERS[self.itemsize]


def _info(name: str, kind: str, storage: str) -> DtypeInfo:
    return DtypeInfo(name=name, kind=kind, storage=np.dtype(storage))


#: Every dtype a leaf may have, keyed by torch's spelling.
DTYPES: dict[str, DtypeInfo] = {
    info.name: info
    for info in (
        _info("bool", "bool", "bool"),
        _info("uint8", "uint", "uint8"),
        _info("uint16", "uint", "uint16"),
        _info("uint32", "uint", "uint32"),
        _info("uint64", "uint", "uint64"),
        _info("int8", "int", "int8"),
        _info("int16", "int", "int16"),
        _info("int32", "int", "int32"),
        _info("int64", "int", "int64"),
        _info("float16", "float", "float16"),
        _info("bfloat16", "float", "uint16"),
        _info("float32", "float", "float32"),
        _info("float64", "float", "float64"),
        _info("float8_e4m3fn", "float", "uint8"),
        _info("float8_e4m3fnuz", "float", "uint8"),
        _info("float8_e5m2", "float", "uint8"),
        _info("float8_e5m2fnuz", "float", "uint8"),
        _info("float8_e8m0fnu", "float", "uint8"),
        # Two 4-bit floats packed in a byte: compared bit for bit, never decoded.
        _info("float4_e2m1fn_x2", "packed", "uint8"),
        _info("complex32", "complex", "uint32"),
        _info("complex64", "complex", "complex64"),
        _info("complex128", "complex", "complex128"),
    )
}

#: Kinds compared for equality only, whatever tolerance is asked for.
EXACT_KINDS = frozenset({"bool", "int", "uint", "packed"})

# NumPy dtypes from the ml_dtypes package carry the same names as torch's.
_NUMPY_EXTENSION_NAMES = frozenset(
    {
        "bfloat16",
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
    }
)

_TORCH_CONTAINERS = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}


def numpy_dtype_name(dtype: np.dtype[Any]) -> str | None:
    """torch's name of a NumPy dtype a leaf can hold, or ``None`` for one it cannot."""
    name = dtype.name
    if name in _NUMPY_EXTENSION_NAMES and dtype.itemsize == DTYPES[name].itemsize:
        return name
    if dtype.kind in "biufc" and name in DTYPES and DTYPES[name].native:
        return name
    return None


# Comparing a large array in one go would allocate a full-size boolean temporary.
_EQUAL_CHUNK_BYTES = 1 << 22


def raw_view(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A 1-d unsigned-integer view of a C-contiguous array's bytes, with the widest item
    size that divides its length (equality of such views is equality of the bytes)."""
    flat = array.reshape(-1).view(np.uint8)
    for width, kind in ((8, np.uint64), (4, np.uint32), (2, np.uint16)):
        if flat.size % width == 0:
            return flat.view(kind)
    return flat


def bytes_equal(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    """Whether two C-contiguous arrays hold identical bytes, in bounded extra memory."""
    ra = a.reshape(-1).view(np.uint8)
    rb = b.reshape(-1).view(np.uint8)
    if ra.size != rb.size:
        return False
    # Two views of the same memory, such as a kept leaf and the golden it came from (the
    # bounds test first: reading an address through ``ctypes`` costs ten times as much).
    if np.may_share_memory(ra, rb) and ra.ctypes.data == rb.ctypes.data:
        return True
    for start in range(0, ra.size, _EQUAL_CHUNK_BYTES):
        stop = start + _EQUAL_CHUNK_BYTES
        if not np.array_equal(raw_view(ra[start:stop]), raw_view(rb[start:stop])):
            return False
    return True


def _minifloat_table(exp_bits: int, man_bits: int, bias: int, style: str) -> Array:
    """float32 value of each of the 256 codes of an 8-bit float format.

    ``style``: ``"ieee"`` (all-ones exponent: infinity or NaN), ``"fn"`` (no infinity;
    only all-ones exponent and mantissa is NaN), ``"fnuz"`` (no infinity, no negative
    zero; the negative-zero code is the one NaN).
    """
    codes = np.arange(256, dtype=np.int64)
    sign = codes >> 7
    exponent = (codes >> man_bits) & ((1 << exp_bits) - 1)
    mantissa = (codes & ((1 << man_bits) - 1)).astype(np.float64) / (1 << man_bits)
    magnitude = np.where(
        exponent == 0,
        mantissa * 2.0 ** (1 - bias),
        (1.0 + mantissa) * np.exp2((exponent - bias).astype(np.float64)),
    )
    values = np.where(sign == 1, -magnitude, magnitude)
    top = (1 << exp_bits) - 1
    if style == "ieee":
        values[(exponent == top) & (mantissa == 0)] = np.inf
        values[(exponent == top) & (mantissa == 0) & (sign == 1)] = -np.inf
        values[(exponent == top) & (mantissa != 0)] = np.nan
    elif style == "fn":
        values[(exponent == top) & (codes & ((1 << man_bits) - 1) == (1 << man_bits) - 1)] = np.nan
    else:
        values[0x80] = np.nan
    return values.astype(np.float32)


@cache
def _table(dtype: str) -> Array:
    if dtype == "float8_e4m3fn":
        return _minifloat_table(4, 3, 7, "fn")
    if dtype == "float8_e4m3fnuz":
        return _minifloat_table(4, 3, 8, "fnuz")
    if dtype == "float8_e5m2":
        return _minifloat_table(5, 2, 15, "ieee")
    if dtype == "float8_e5m2fnuz":
        return _minifloat_table(5, 2, 16, "fnuz")
    if dtype == "float8_e8m0fnu":
        values = np.exp2(np.arange(256, dtype=np.float64) - 127)
        values[255] = np.nan
        return values.astype(np.float32)
    raise KeyError(dtype)


def compute_dtype(dtype: str) -> np.dtype[Any]:
    """The NumPy dtype values of ``dtype`` are compared in (their storage for exact kinds)."""
    info = DTYPES[dtype]
    if info.kind == "float":
        return np.dtype(np.float64 if dtype == "float64" else np.float32)
    if info.kind == "complex":
        return np.dtype(np.complex128 if dtype == "complex128" else np.complex64)
    return info.storage


def decode(dtype: str, bits: Array, out: Array | None = None) -> Array:
    """Decode stored bits of ``dtype`` into :func:`compute_dtype` values (1-d or any shape).

    Dtypes NumPy holds natively in their compute dtype are returned as they are; ``out``,
    when given, is a buffer of the compute dtype and the input's size to decode into.
    """
    target = compute_dtype(dtype)
    if bits.dtype == target:
        return bits
    if out is None:
        out = np.empty(bits.shape, dtype=target)
    if dtype == "bfloat16":
        # bfloat16 is the upper half of a float32.
        wide = out.view(np.uint32)
        np.copyto(wide, bits, casting="safe")
        np.left_shift(wide, 16, out=wide)
    elif dtype == "complex32":
        halves = bits.view(np.float16).reshape((*bits.shape, 2))
        np.copyto(out.view(np.float32).reshape((*bits.shape, 2)), halves)
    elif dtype.startswith("float8"):
        np.take(_table(dtype), bits, out=out)
    else:
        np.copyto(out, bits, casting="unsafe")
    return out


def python_number(value: Any) -> Number:
    """A NumPy scalar (or a Python number) as a Python number."""
    item = value.item() if hasattr(value, "item") else value
    if isinstance(item, bool | int | float | complex):
        return item
    return float(item)
