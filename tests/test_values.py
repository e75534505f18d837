"""Flattening values into leaves of exact bits: every dtype, every container, clear errors."""

from __future__ import annotations

import collections
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from pytest_determinism.golden.dtypes import DTYPES, bytes_equal
from pytest_determinism.golden.values import Leaf, bits_equal, flatten


def _sample(dtype_name: str) -> torch.Tensor:
    dtype = getattr(torch, dtype_name)
    raw = torch.randint(0, 256, (3, 5 * dtype.itemsize), dtype=torch.uint8)
    # Random bytes reinterpreted: every bit pattern is fair, NaNs and infinities included.
    return raw.view(dtype)


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
def test_every_dtype_keeps_its_exact_bits(dtype_name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # complex32 is "experimental"
        tensor = _sample(dtype_name)
    leaf = flatten(tensor)[""]
    assert leaf.dtype == dtype_name
    assert leaf.shape == tuple(tensor.shape)
    assert leaf.data.shape == leaf.shape
    assert leaf.data.dtype == DTYPES[dtype_name].storage
    assert leaf.data.flags.c_contiguous
    assert leaf.device == "cpu"
    expected = tensor.view(torch.uint8).numpy().tobytes()
    assert leaf.data.tobytes() == expected


def test_non_contiguous_requires_grad_and_views_are_materialised() -> None:
    base = torch.randn(4, 6, requires_grad=True)
    leaf = flatten(base.t())[""]
    assert leaf.shape == (6, 4)
    assert leaf.data.flags.c_contiguous
    np.testing.assert_array_equal(leaf.data, base.detach().t().contiguous().numpy())
    conj = flatten(torch.tensor([1 + 2j, 3 - 4j]).conj())[""]
    np.testing.assert_array_equal(conj.data, np.array([1 - 2j, 3 + 4j], dtype=np.complex64))
    neg = flatten(torch.tensor([1 + 2j]).conj().imag)[""]
    np.testing.assert_array_equal(neg.data, np.array([-2.0], dtype=np.float32))


def test_zero_dim_and_empty_tensors() -> None:
    scalar = flatten(torch.tensor(2.5))[""]
    assert scalar.shape == ()
    assert scalar.data.shape == ()
    assert float(scalar.data) == 2.5
    empty = flatten(torch.zeros(0, 3, dtype=torch.bfloat16))[""]
    assert empty.shape == (0, 3)
    assert empty.data.size == 0


def test_copy_protects_against_later_in_place_changes() -> None:
    tensor = torch.arange(4.0)
    kept = flatten(tensor)[""]
    shared = flatten(tensor, copy=False)[""]
    tensor.add_(1)
    np.testing.assert_array_equal(kept.data, [0, 1, 2, 3])
    np.testing.assert_array_equal(shared.data, [1, 2, 3, 4])
    array = np.arange(3.0)
    kept_array = flatten(array)[""]
    array += 1
    np.testing.assert_array_equal(kept_array.data, [0, 1, 2])


@pytest.mark.parametrize(
    "dtype",
    [
        "bool",
        "uint8",
        "int8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    ],
)
def test_numpy_arrays_of_every_dtype(dtype: str) -> None:
    array = np.frombuffer(np.random.default_rng(0).bytes(64), dtype=dtype).reshape(2, -1)
    leaf = flatten(array[:, ::2])[""]
    assert leaf.dtype == dtype
    assert leaf.data.flags.c_contiguous
    assert leaf.data.tobytes() == np.ascontiguousarray(array[:, ::2]).tobytes()


def test_big_endian_arrays_keep_their_values() -> None:
    array = np.array([1.5, -2.0], dtype=">f4")
    leaf = flatten(array)[""]
    assert leaf.dtype == "float32"
    assert leaf.data.dtype.isnative
    np.testing.assert_array_equal(leaf.data, [1.5, -2.0])


def test_numpy_scalars_and_python_numbers() -> None:
    leaves = flatten(
        {
            "np": np.float16(1.5),
            "flag": True,
            "count": 7,
            "big": 2**63,
            "ratio": 0.25,
            "z": 1 - 2j,
        }
    )
    assert {k: v.dtype for k, v in leaves.items()} == {
        "np": "float16",
        "flag": "bool",
        "count": "int64",
        "big": "uint64",
        "ratio": "float64",
        "z": "complex128",
    }
    assert all(leaf.shape == () for leaf in leaves.values())
    assert int(leaves["big"].data) == 2**63
    with pytest.raises(TypeError, match=r"'huge'.*does not fit in 64 bits"):
        flatten({"huge": 2**64})


def test_nested_containers_join_keys_with_dots() -> None:
    pair = collections.namedtuple("pair", "values indices")
    value = {
        "logits": torch.zeros(2),
        "hidden_states": (torch.zeros(1), torch.ones(1)),
        "extra": [{"a": 1}, pair(torch.zeros(1), torch.zeros(1, dtype=torch.long))],
        "max": torch.max(torch.ones(2, 2), 0),
        7: 1.0,
    }
    assert list(flatten(value)) == [
        "logits",
        "hidden_states.0",
        "hidden_states.1",
        "extra.0.a",
        "extra.1.values",
        "extra.1.indices",
        "max.values",
        "max.indices",
        "7",
    ]
    assert list(flatten([1, 2], prefix="out")) == ["out.0", "out.1"]
    assert list(flatten(3, prefix="n")) == ["n"]
    assert flatten({}) == {}


def test_hugging_face_model_output_is_a_dict() -> None:
    outputs = pytest.importorskip("transformers.modeling_outputs")
    out = outputs.BaseModelOutput(
        last_hidden_state=torch.zeros(1, 2), hidden_states=(torch.zeros(1), torch.zeros(1))
    )
    assert list(flatten(out)) == ["last_hidden_state", "hidden_states.0", "hidden_states.1"]


def test_mapping_like_objects_with_keys_are_flattened() -> None:
    class Record:
        def keys(self) -> list[str]:
            return ["x"]

        def __getitem__(self, key: str) -> torch.Tensor:
            return torch.ones(1)

    assert list(flatten(Record())) == ["x"]

    class Layer:
        keys = torch.ones(1)  # an attribute named keys, not a mapping

        def __getitem__(self, index: int) -> torch.Tensor:
            return self.keys

    with pytest.raises(TypeError, match=r"'cache' has type .*Layer"):
        flatten({"cache": Layer()})


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        ({"a": [None]}, r"'a\.0' has type NoneType: expected a torch tensor"),
        ({"text": "hi"}, r"'text' has type str"),
        (object(), r"the value has type object"),
        (torch.randn(3).to_sparse(), r"sparse_coo tensor cannot be stored.*to_dense"),
        (torch.empty(2, device="meta"), r"meta tensor has no data"),
        (np.array(["a"], dtype=object), r"NumPy dtype object cannot be stored"),
        (np.ma.masked_array([1.0], mask=[True]), r"masked arrays lose their mask"),
        ({"when": np.datetime64("2020-01-01")}, r"'when'.*datetime64"),
        ({1.5: 1}, r"has a key of type float"),
    ],
)
def test_unsupported_values_raise_type_error_naming_path_and_type(
    value: object, pattern: str
) -> None:
    with pytest.raises(TypeError, match=pattern):
        flatten(value)


def test_sparse_csr_quantized_and_nested_tensors_are_refused() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        csr = torch.eye(3).to_sparse_csr()
        quantized = torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)
        nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    with pytest.raises(TypeError, match=r"'csr'.*sparse_csr"):
        flatten({"csr": csr})
    with pytest.raises(TypeError, match=r"quantized tensor.*dequantize"):
        flatten(quantized)
    with pytest.raises(TypeError, match=r"nested tensor.*unbind"):
        flatten(nested)


def test_unsupported_torch_dtype_is_named() -> None:
    with pytest.raises(TypeError, match=r"dtype bits8 cannot be stored"):
        flatten(torch.zeros(2, dtype=torch.uint8).view(torch.bits8))


def test_keys_that_collide_once_joined_are_an_error() -> None:
    with pytest.raises(ValueError, match=r"same key 'a\.b'"):
        flatten({"a.b": 1, "a": {"b": 2}})
    with pytest.raises(ValueError, match=r"empty key"):
        flatten({"": 1})


def test_a_container_holding_itself_is_an_error() -> None:
    loop: list[object] = [1]
    loop.append(loop)
    with pytest.raises(ValueError, match=r"'1' contains itself"):
        flatten(loop)


def test_bits_equal_compares_dtype_shape_and_bytes() -> None:
    def leaf(values: list[float], dtype: str = "float32") -> Leaf:
        return flatten(np.array(values, dtype=dtype))[""]

    assert bits_equal(leaf([1.0, np.nan]), leaf([1.0, np.nan]))
    assert not bits_equal(leaf([0.0]), leaf([-0.0]))
    assert not bits_equal(leaf([1.0]), leaf([1.0], "float64"))
    assert not bits_equal(leaf([1.0, 2.0]), leaf([1.0, 2.0, 3.0]))
    reshaped = Leaf("float32", (2, 1), np.zeros((2, 1), dtype=np.float32))
    assert not bits_equal(leaf([0.0, 0.0]), reshaped)
    assert bits_equal(leaf([1.0]), Leaf("float32", (1,), np.ones(1, np.float32), "cuda:0"))


def test_bytes_equal_finds_a_difference_in_any_chunk() -> None:
    a = np.zeros(9 * (1 << 20) + 3, dtype=np.uint8)
    for position in (0, 1 << 22, a.size - 1):
        b = a.copy()
        b[position] = 1
        assert not bytes_equal(a, b)
    assert bytes_equal(a, a.copy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_are_copied_with_their_device_named() -> None:
    tensor = torch.randn(3, 3, device="cuda").bfloat16()
    leaf = flatten(tensor)[""]
    assert leaf.device == "cuda:0"
    assert leaf.data.tobytes() == tensor.cpu().view(torch.int16).numpy().tobytes()


def test_importing_the_engine_imports_neither_torch_nor_hypothesis() -> None:
    code = (
        "import sys\n"
        "import pytest_determinism.golden.values, pytest_determinism.golden.golden_tensor\n"
        "import pytest_determinism.cli\n"
        "import pytest_determinism.golden.storage, pytest_determinism.golden.compare\n"
        "print(sorted(m for m in ('torch', 'hypothesis') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
