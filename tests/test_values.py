"""Flattening values into leaves of exact bits: every dtype, every container, clear errors."""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

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
        ({"a": [None]}, r"'a\.0' has type NoneType: None is left out only as a field.*list"),
        (None, r"the value has type NoneType"),
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


# -- dataclasses, named tuples, None fields -----------------------------------------------


@dataclasses.dataclass
class _Inner:
    scores: torch.Tensor
    mask: torch.Tensor | None = None


@dataclasses.dataclass
class _Output:
    logits: torch.Tensor
    inner: _Inner
    attentions: tuple[torch.Tensor, ...] | None = None
    labels: list[str] | None = None


def test_dataclasses_and_named_tuples_flatten_by_field_name_leaving_none_out() -> None:
    out = _Output(torch.zeros(2), _Inner(torch.ones(1)))
    assert list(flatten(out)) == ["logits", "inner.scores"]
    pair = collections.namedtuple("pair", "values indices")
    assert list(flatten(pair(torch.ones(1), None), prefix="top")) == ["top.values"]
    assert list(flatten({"a": None, "b": 1, "c": {"d": None}})) == ["b"]
    # The class itself is not an output.
    with pytest.raises(TypeError, match=r"'kind' has type type"):
        flatten({"kind": _Output})


# -- Hugging Face caches ------------------------------------------------------------------


def _kv(seed: int, length: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, 2, length, 4, generator=generator),
        torch.randn(1, 2, length, 4, generator=generator),
    )


def test_a_transformers_dynamic_cache_flattens_to_key_and_value_per_layer() -> None:
    cache_utils = pytest.importorskip("transformers.cache_utils")
    cache = cache_utils.DynamicCache()
    for layer in range(2):
        cache.update(*_kv(layer), layer_idx=layer)
    leaves = flatten({"logits": torch.zeros(1), "past_key_values": cache})
    assert list(leaves) == [
        "logits",
        "past_key_values.0.key",
        "past_key_values.0.value",
        "past_key_values.1.key",
        "past_key_values.1.value",
    ]
    assert leaves["past_key_values.1.value"].data.tobytes() == _kv(1)[1].numpy().tobytes()


def test_a_static_cache_gives_only_its_initialised_layers_whole() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=8, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=8,
    )  # fmt: skip
    cache = transformers.StaticCache(config=config, max_cache_len=5)
    assert flatten(cache) == {}
    cache.update(*_kv(0), layer_idx=0, cache_kwargs={"cache_position": torch.arange(3)})
    leaves = flatten(cache)
    assert list(leaves) == ["0.key", "0.value"]
    # Preallocated: the positions not written yet are zeros, and checked as they are.
    assert leaves["0.key"].shape == (1, 2, 5, 4)


def test_an_encoder_decoder_cache_names_self_and_cross_attention() -> None:
    cache_utils = pytest.importorskip("transformers.cache_utils")
    own, cross = cache_utils.DynamicCache(), cache_utils.DynamicCache()
    own.update(*_kv(0), layer_idx=0)
    cross.update(*_kv(1, length=7), layer_idx=0)
    leaves = flatten(cache_utils.EncoderDecoderCache(own, cross))
    assert list(leaves) == [
        "self_attention.0.key",
        "self_attention.0.value",
        "cross_attention.0.key",
        "cross_attention.0.value",
    ]
    assert leaves["cross_attention.0.key"].shape == (1, 2, 7, 4)


class DynamicCache:
    """A stand-in for transformers 4.x's DynamicCache (lists of tensors per layer): 4.x
    cannot be installed beside the 5.x this project tests with, so the layout is mirrored."""

    def __init__(self, layers: int) -> None:
        self.key_cache = [_kv(layer)[0] for layer in range(layers)]
        self.value_cache = [_kv(layer)[1] for layer in range(layers)]


def test_the_transformers_4_layout_of_key_cache_and_value_cache_lists() -> None:
    leaves = flatten({"past_key_values": DynamicCache(2)})
    assert list(leaves) == [
        "past_key_values.0.key",
        "past_key_values.0.value",
        "past_key_values.1.key",
        "past_key_values.1.value",
    ]
    assert leaves["past_key_values.0.value"].data.tobytes() == _kv(0)[1].numpy().tobytes()
    broken = DynamicCache(2)
    broken.value_cache.pop()
    with pytest.raises(TypeError, match=r"'past_key_values'.*2 layers and its value_cache 1"):
        flatten({"past_key_values": broken})


def test_the_legacy_tuple_of_tuples_is_a_nested_tuple() -> None:
    legacy = tuple(_kv(layer) for layer in range(2))
    assert list(flatten({"past_key_values": legacy})) == [
        "past_key_values.0.0",
        "past_key_values.0.1",
        "past_key_values.1.0",
        "past_key_values.1.1",
    ]


class _Layer:
    def __init__(self, keys: object, values: object) -> None:
        self.keys, self.values = keys, values


class _LinearAttentionLayer:
    def __init__(self) -> None:
        self.conv_states = {0: torch.ones(2), 1: None}
        self.recurrent_states = {0: torch.zeros(3)}


class HybridCache:
    def __init__(self, *layers: object) -> None:
        self.layers = list(layers)


class QuantizedLayer(_Layer):
    pass


class MambaCache:
    def __init__(self) -> None:
        self.conv_states = torch.zeros(1)


def test_cache_layers_of_every_kind_and_clear_errors_for_unknown_ones() -> None:
    allocated = _Layer(*_kv(1))
    allocated.is_initialized = False  # type: ignore[attr-defined]
    cache = HybridCache(_Layer(None, None), _LinearAttentionLayer(), _Layer(*_kv(0)), allocated)
    assert list(flatten(cache, prefix="c")) == [
        "c.1.conv_states.0",
        "c.1.recurrent_states.0",
        "c.2.key",
        "c.2.value",
    ]
    with pytest.raises(TypeError, match=r"'c\.0' has type .*QuantizedLayer: a quantized cache"):
        flatten(HybridCache(QuantizedLayer(*_kv(0))), prefix="c")
    with pytest.raises(TypeError, match=r"'c\.0' has type object: a cache layer with neither"):
        flatten(HybridCache(object()), prefix="c")
    with pytest.raises(TypeError, match=r"'c' has type .*MambaCache: a cache of a layout"):
        flatten(MambaCache(), prefix="c")
    # The layout alone does not make a cache: the class name must say so.
    with pytest.raises(TypeError, match=r"'c' has type .*Layers: expected a torch tensor"):
        flatten(type("Layers", (), {"layers": [_Layer(*_kv(0))]})(), prefix="c")


# -- exclude ------------------------------------------------------------------------------


def test_exclude_takes_whole_components_patterns_and_unflattenable_parts() -> None:
    value = {
        "logits": torch.zeros(1),
        "past_key_values": DynamicCache(2),
        "past_key_values_extra": torch.ones(1),
        "decoder": {"attentions": (torch.ones(1),), "hidden": torch.ones(1)},
        "attentions": [torch.ones(1)],
        "labels": ["cat", "dog"],
    }
    keys = list(flatten(value, exclude=["past_key_values", "*.attentions", "labels"]))
    assert keys == ["logits", "past_key_values_extra", "decoder.hidden"]
    keys = list(flatten(value, exclude=("*.value", "labels", "decoder", "attentions")))
    assert keys == [
        "logits",
        "past_key_values.0.key",
        "past_key_values.1.key",
        "past_key_values_extra",
    ]
    # An entry inside a part another entry leaves out is redundant, not unmatched.
    assert list(
        flatten(
            value,
            exclude=[
                "past_key_values",
                "past_key_values.0.key",
                "labels",
                "*attentions",
                "decoder",
            ],
        )
    ) == [
        "logits",
        "past_key_values_extra",
    ]
    with pytest.raises(TypeError, match=r"'out\.labels\.0' has type str.*exclude='labels'"):
        flatten(value, prefix="out", exclude=["past_key_values", "decoder", "attentions"])


def test_exclude_errors_name_the_entry() -> None:
    value = {"logits": torch.zeros(1), "cache": DynamicCache(1)}
    parts = r"its parts: 'logits' \(excluded\), 'cache' \(e\.g\. 'cache\.0\.key'\)"
    with pytest.raises(ValueError, match=rf"exclude 'past_key_values', 'cach' match no .*{parts}"):
        flatten(value, prefix="0", exclude=["logits", "past_key_values", "cach"])
    with pytest.raises(ValueError, match=r"exclude '0' matches no part.*single tensor"):
        flatten(torch.ones(1), prefix="0", exclude="0")
    with pytest.raises(TypeError, match=r"exclude must be a key path or pattern.*int 3"):
        flatten(value, exclude=3)
    with pytest.raises(TypeError, match=r"a list holding NoneType None"):
        flatten(value, exclude=["logits", None])
    with pytest.raises(ValueError, match=r"empty key path"):
        flatten(value, exclude=[""])


_COMPONENT = st.sampled_from(["a", "b", "ab", "a_b", "0", "1"])


@st.composite
def _nested(draw: st.DrawFn, depth: int = 0) -> object:
    if depth >= 3 or draw(st.booleans()):
        return 1.0
    names = draw(st.lists(_COMPONENT, min_size=1, max_size=3, unique=True))
    return {name: draw(_nested(depth + 1)) for name in names}


@given(
    value=_nested(),
    entries=st.lists(
        st.lists(st.sampled_from(["a", "b", "ab", "0", "*", "?", "a*"]), min_size=1, max_size=3)
        .map(".".join)
        .filter(lambda entry: entry != "*"),
        min_size=1,
        max_size=3,
    ),
)
def test_exclude_leaves_out_exactly_the_keys_a_component_prefix_of_which_matches(
    value: object, entries: list[str]
) -> None:
    every = list(flatten(value))

    def prefixes(key: str) -> list[str]:
        parts = key.split(".")
        return [".".join(parts[:n]) for n in range(1, len(parts) + 1)]

    def hit(entry: str, path: str) -> bool:
        return fnmatch.fnmatchcase(path, entry) or (
            entry.startswith("*.") and fnmatch.fnmatchcase(path, entry[2:])
        )

    expected = [key for key in every if not any(hit(e, p) for e in entries for p in prefixes(key))]
    used = {e for e in entries for key in every if key for p in prefixes(key) if hit(e, p)}
    unused = [entry for entry in dict.fromkeys(entries) if entry not in used]
    if unused:
        with pytest.raises(ValueError, match="match") as info:
            flatten(value, exclude=entries)
        assert f"exclude {', '.join(map(repr, unused))} match" in str(info.value)
    else:
        assert list(flatten(value, exclude=entries)) == expected
