"""Golden files: validated memory-mapped reading, atomic byte-stable writing, every dtype."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from killing import kill_while_writing
from safetensors import safe_open

from pytest_determinism import __version__
from pytest_determinism.errors import GoldenFileError
from pytest_determinism.golden.dtypes import DTYPES
from pytest_determinism.golden.environment import (
    device_description,
    environment_metadata,
    torch_version,
)
from pytest_determinism.golden.storage import FORMAT, GoldenFormatError, read_golden
from pytest_determinism.golden.values import Leaf, bits_equal, flatten
from pytest_determinism.golden.writing import write_golden

_NATIVE_NUMPY = ["bool", "uint8", "int8", "int16", "uint16", "int32", "uint32", "int64"]
_NATIVE_NUMPY += ["uint64", "float16", "float32", "float64", "complex64"]


def _random_leaf(dtype: str, shape: tuple[int, ...], seed: int) -> Leaf:
    info = DTYPES[dtype]
    count = int(np.prod(shape)) if shape else 1
    raw = np.random.default_rng(seed).bytes(count * info.itemsize)
    data = np.frombuffer(raw, dtype=info.storage).reshape(shape).copy()
    return Leaf(dtype=dtype, shape=shape, data=data)


_shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    items=st.dictionaries(
        st.text(min_size=1, max_size=12).filter(lambda k: k != "__metadata__"),
        st.tuples(st.sampled_from(sorted(DTYPES)), _shapes, st.integers(0, 2**32 - 1)),
        max_size=5,
    )
)
def test_round_trip_of_every_dtype_and_shape(tmp_path: Path, items: dict) -> None:
    leaves = {key: _random_leaf(dtype, shape, seed) for key, (dtype, shape, seed) in items.items()}
    path = tmp_path / "round.safetensors"
    write_golden(path, leaves, {"seed": "1"})
    with read_golden(path) as golden:
        assert sorted(golden.entries) == sorted(leaves)
        assert golden.metadata["seed"] == "1"
        for key, leaf in leaves.items():
            stored = golden.leaf(key)
            assert bits_equal(stored, leaf), key
            assert not stored.data.flags.writeable
    with safe_open(str(path), framework="np") as handle:
        assert sorted(handle.keys()) == sorted(leaves)


def test_special_values_survive_bit_for_bit(tmp_path: Path) -> None:
    values = [0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e-45]
    leaves = {}
    for dtype in ("float16", "bfloat16", "float32", "float64", "float8_e5m2"):
        leaves[dtype] = flatten(torch.tensor(values).to(getattr(torch, dtype)))[""]
    leaves["payload"] = Leaf("float32", (1,), np.array([0x7FC00123], np.uint32).view(np.float32))
    leaves["complex128"] = flatten(torch.tensor([complex(float("nan"), -0.0)]))[""]
    path = tmp_path / "special.safetensors"
    write_golden(path, leaves, {})
    with read_golden(path) as golden:
        for key, leaf in leaves.items():
            assert bits_equal(golden.leaf(key), leaf), key


def test_files_are_readable_by_safetensors(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tensors = {name: torch.zeros(2, 3, dtype=getattr(torch, name)) for name in DTYPES}
    for tensor in tensors.values():
        tensor.view(torch.uint8).copy_(torch.randint(0, 256, tensor.view(torch.uint8).shape))
    leaves = {name: flatten(tensor)[""] for name, tensor in tensors.items()}
    path = tmp_path / "all.safetensors"
    write_golden(path, leaves, {"format": FORMAT})
    loaded = safetensors.torch.load_file(str(path))
    for name, tensor in tensors.items():
        got = loaded[name]
        if name == "complex128":
            got = torch.view_as_complex(got)
        elif name == "complex32":
            assert (got.dtype, got.shape) == (torch.float16, (2, 3, 2))
            got = got.view(torch.complex32).squeeze(-1)
        elif name in ("float8_e4m3fnuz", "float8_e5m2fnuz", "float4_e2m1fn_x2"):
            got = got.view(getattr(torch, name))
        assert got.dtype == tensor.dtype, name
        assert torch.equal(got.view(torch.uint8), tensor.view(torch.uint8)), name
    numpy_only = tmp_path / "np.safetensors"
    write_golden(numpy_only, {name: leaves[name] for name in _NATIVE_NUMPY}, {})
    arrays = safetensors.numpy.load_file(str(numpy_only))
    for name in _NATIVE_NUMPY:
        assert arrays[name].tobytes() == leaves[name].data.tobytes()


def test_files_written_by_safetensors_are_read(tmp_path: Path) -> None:
    path = tmp_path / "theirs.safetensors"
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.ones(2).bfloat16()}
    safetensors.torch.save_file(tensors, str(path))
    with read_golden(path) as golden:
        assert golden.metadata == {}
        for key, tensor in tensors.items():
            assert bits_equal(golden.leaf(key), flatten(tensor)[""])


def test_bytes_are_stable_and_independent_of_key_order(tmp_path: Path) -> None:
    a = flatten({"x": torch.randn(3), "y": torch.arange(4), "z": torch.ones(1).half()})
    reordered = dict(reversed(list(a.items())))
    first, second = tmp_path / "1.safetensors", tmp_path / "2.safetensors"
    write_golden(first, a, {"b": "2", "a": "1"})
    write_golden(second, reordered, {"a": "1", "b": "2"})
    assert first.read_bytes() == second.read_bytes()
    header_size = struct.unpack("<Q", first.read_bytes()[:8])[0]
    assert (8 + header_size) % 8 == 0


def test_an_unchanged_file_is_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "g.safetensors"
    leaves = flatten({"x": torch.randn(100)})
    assert write_golden(path, leaves, {"k": "v"})
    before = os.stat(path)
    time.sleep(0.01)
    assert not write_golden(path, leaves, {"k": "v"})
    after = os.stat(path)
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert write_golden(path, leaves, {"k": "changed"})
    changed = flatten({"x": torch.randn(100)})
    assert write_golden(path, changed, {"k": "changed"})
    with read_golden(path) as golden:
        assert bits_equal(golden.leaf("x"), changed["x"])


def test_writing_goes_through_a_temporary_file_in_the_same_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "deep" / "er" / "g.safetensors"
    seen: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_golden(path, flatten({"x": torch.ones(2)}), {})
    [(src, dst)] = seen
    assert Path(src).parent == path.parent
    assert not src.endswith(".safetensors")
    assert dst == str(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["g.safetensors"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "g.safetensors"
    write_golden(path, flatten({"x": torch.zeros(3)}), {})
    old = path.read_bytes()

    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="No space left"):
        write_golden(path, flatten({"x": torch.ones(3)}), {})
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["g.safetensors"]


def test_reserved_key_and_leaf_size_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        write_golden(tmp_path / "g.safetensors", flatten({"__metadata__": 1}), {})
    bad = Leaf("float32", (3,), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="holds 8 bytes, expected 12"):
        write_golden(tmp_path / "g.safetensors", {"x": bad}, {})


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from pytest_determinism.golden.writing import write_golden
    from pytest_determinism.golden.values import Leaf

    folder = Path(sys.argv[1])
    contents = [np.full(1 << 21, value, dtype=np.float32) for value in (1.0, 2.0)]
    i = 0
    while True:
        for n in range(3):
            data = contents[(i + n) % 2]
            write_golden(folder / f"g{n}.safetensors", {"x": Leaf("float32", data.shape, data)},
                         {"round": str(i)})
        if i == 0:
            # Every file exists from here on; the kill lands in some later write.
            print("ready", flush=True)
        i += 1
    """
)


def test_killing_a_writer_never_leaves_a_broken_golden(tmp_path: Path) -> None:
    for attempt in range(5):
        kill_while_writing(_WRITER, tmp_path, attempt)
        goldens = sorted(tmp_path.glob("*.safetensors"))
        assert len(goldens) == 3
        for path in goldens:
            with read_golden(path) as golden:
                values = np.unique(golden.leaf("x").data)
                assert values.tolist() in ([1.0], [2.0]), path
            with safe_open(str(path), framework="np") as handle:
                assert handle.get_tensor("x").shape == (1 << 21,)


def _valid(tmp_path: Path) -> Path:
    path = tmp_path / "valid.safetensors"
    write_golden(path, flatten({"a": torch.arange(4.0), "b": torch.ones(2, dtype=torch.int64)}), {})
    return path


def _with_header(
    tmp_path: Path, header: object, data: bytes = b"", raw: bytes | None = None
) -> Path:
    body = raw if raw is not None else json.dumps(header).encode()
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


_F32_4 = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}


@pytest.mark.parametrize(
    ("header", "data", "raw", "problem"),
    [
        (None, b"", b"", "its header is not valid JSON"),
        (None, b"", b"\xff\xfe", "not valid JSON"),
        ([1, 2], b"", None, "not a JSON object"),
        ({"__metadata__": {"a": 1}}, b"", None, "metadata is not a mapping of strings"),
        ({"x": "nope"}, b"", None, "tensor 'x' is not described by a JSON object"),
        ({"x": {**_F32_4, "dtype": "F128"}}, bytes(16), None, "dtype 'F128'"),
        ({"x": {**_F32_4, "dtype": 3}}, bytes(16), None, "has no dtype"),
        ({"x": {**_F32_4, "shape": [-4]}}, bytes(16), None, "no valid shape"),
        ({"x": {**_F32_4, "shape": [True]}}, bytes(16), None, "no valid shape"),
        ({"x": {**_F32_4, "data_offsets": [16, 0]}}, bytes(16), None, "no valid data_offsets"),
        ({"x": {**_F32_4, "data_offsets": [0, 32]}}, bytes(16), None, "ends at byte 32"),
        ({"x": {**_F32_4, "shape": [5]}}, bytes(16), None, "needs 20 bytes"),
        ({"x": _F32_4}, bytes(20), None, "cover 16 bytes but the data section has 20"),
        (
            {"x": _F32_4, "y": {**_F32_4, "data_offsets": [8, 24]}},
            bytes(24),
            None,
            "overlap",
        ),
        ({"x": {**_F32_4, "data_offsets": [4, 20]}}, bytes(20), None, "leave a gap"),
        (
            {"__metadata__": {"views": '{"x": "complex128"}'}, "x": _F32_4},
            bytes(16),
            None,
            "recorded view as complex128",
        ),
        ({"__metadata__": {"views": "[]"}, "x": _F32_4}, bytes(16), None, "'views' is not"),
        (
            {"__metadata__": {"views": '{"y": "complex128"}'}, "x": _F32_4},
            bytes(16),
            None,
            "views of missing keys",
        ),
    ],
)
def test_malformed_headers_are_refused_by_name(
    tmp_path: Path, header: object, data: bytes, raw: bytes | None, problem: str
) -> None:
    path = _with_header(tmp_path, header, data, raw)
    with pytest.raises(GoldenFormatError, match=problem) as info:
        read_golden(path)
    assert info.value.path == path
    assert str(path) in str(info.value)
    assert "pytest --update-golden" in str(info.value)
    assert isinstance(info.value, GoldenFileError)
    assert isinstance(info.value, AssertionError)


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    raw = b'{"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "x": {}}'
    with pytest.raises(GoldenFormatError, match="appears twice"):
        read_golden(_with_header(tmp_path, None, b"\0", raw))


def test_short_truncated_and_foreign_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(GoldenFormatError, match="the file is empty"):
        read_golden(empty)
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"abc")
    with pytest.raises(GoldenFormatError, match="only 3 bytes"):
        read_golden(short)
    valid = _valid(tmp_path).read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    for cut in (9, len(valid) - 40, len(valid) - 1):
        truncated.write_bytes(valid[:cut])
        with pytest.raises(GoldenFormatError):
            read_golden(truncated)
    absurd = tmp_path / "absurd.safetensors"
    absurd.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    with pytest.raises(GoldenFormatError, match="claims 1152921504606846976 bytes"):
        read_golden(absurd)
    pickled = tmp_path / "pickle.safetensors"
    torch.save({"x": torch.ones(3)}, pickled)
    with pytest.raises(GoldenFormatError):
        read_golden(pickled)
    npz = tmp_path / "arrays.safetensors"
    with open(npz, "wb") as handle:
        np.savez(handle, x=np.ones(3))
    with pytest.raises(GoldenFormatError):
        read_golden(npz)
    with pytest.raises(FileNotFoundError):
        read_golden(tmp_path / "missing.safetensors")


def test_a_file_of_only_empty_tensors(tmp_path: Path) -> None:
    path = tmp_path / "empty-tensors.safetensors"
    write_golden(path, flatten({"e": torch.zeros(0, 2), "f": np.zeros((3, 0))}), {})
    with read_golden(path) as golden:
        assert golden.leaf("e").shape == (0, 2)
        assert golden.leaf("f").data.size == 0


def test_environment_metadata_is_all_strings() -> None:
    metadata = environment_metadata(test_id="t.py::test", seed=3, devices=["cpu", "cpu"])
    assert all(isinstance(v, str) for v in metadata.values())
    assert metadata["format"] == FORMAT
    assert metadata["plugin_version"] == __version__
    assert metadata["torch"] == torch.__version__
    assert metadata["numpy"] == np.__version__
    assert metadata["device"] == "cpu"
    assert metadata["seed"] == "3"
    assert metadata["test"] == "t.py::test"
    assert metadata["threads"] == str(torch.get_num_threads())
    assert {"python", "platform", "cpu"} <= set(metadata)
    assert environment_metadata(test_id="x", seed=None)["seed"] == ""


def test_torch_version_and_device_description() -> None:
    assert torch_version() == torch.__version__
    threads = torch.get_num_threads()
    if not torch.cuda.is_initialized():
        assert device_description(torch) == f"cpu ({threads} thread{'s' if threads != 1 else ''})"


def test_the_environment_module_imports_neither_numpy_nor_torch() -> None:
    # The plugin imports it when it starts, before any test needs either.
    code = (
        "import sys\n"
        "from pytest_determinism.golden.environment import torch_version\n"
        "version = torch_version()\n"
        "print(sorted(m for m in ('numpy', 'torch') if m in sys.modules), version is not None)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[] True"
