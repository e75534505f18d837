"""Golden files: safetensors, read validated and memory-mapped, written atomically.

Reading never trusts the file: the header is parsed and checked here (length, JSON, every
dtype, shape and offset, full coverage of the data) before any tensor is touched, and the
data is memory-mapped, so a corrupt or hostile file can neither allocate much memory nor
run code. Nothing is ever unpickled.

Writing is atomic and byte-stable: the file is assembled in a temporary file in the same
folder (its name does not end in ``.safetensors``, so no tool mistakes it for a golden),
flushed and fsynced, then renamed over the old one, and the folder is fsynced. The same
content always gives the same bytes (sorted keys, fixed JSON layout, no timestamps), and
a file whose bytes would not change is not touched at all.

Dtypes without a safetensors code are stored through a lossless view, recorded in the
metadata under ``views``: ``complex128`` and ``complex32`` as float pairs (an extra last
dimension of 2), the float8 ``fnuz`` variants and ``float4_e2m1fn_x2`` as ``U8``.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import platform
import secrets
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from pytest_determinism.errors import GoldenFileError
from pytest_determinism.values import DTYPES, Leaf

__all__ = [
    "FORMAT",
    "GoldenFile",
    "GoldenFormatError",
    "StoredEntry",
    "environment_metadata",
    "read_golden",
    "write_golden",
]

#: Written to the metadata key ``format``; bumped if the layout ever changes.
FORMAT = "pytest-determinism/1"

#: safetensors' own limit on the JSON header.
MAX_HEADER_BYTES = 100_000_000

_METADATA = "__metadata__"

# torch dtype name -> safetensors code, for dtypes stored as themselves.
_CODES = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "uint16": "U16",
    "int32": "I32",
    "uint32": "U32",
    "int64": "I64",
    "uint64": "U64",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e8m0fnu": "F8_E8M0",
    "complex64": "C64",
}
_NAMES = {code: name for name, code in _CODES.items()}

# torch dtype name -> (safetensors code it is viewed as, extra trailing dimension).
_VIEWS = {
    "complex128": ("F64", 2),
    "complex32": ("F16", 2),
    "float8_e4m3fnuz": ("U8", 0),
    "float8_e5m2fnuz": ("U8", 0),
    "float4_e2m1fn_x2": ("U8", 0),
}

_RERECORD = "delete it and re-record it with `pytest --update-golden`"


class GoldenFormatError(GoldenFileError):
    """A golden file that cannot be read: not safetensors, truncated, or inconsistent.

    ``path`` is the file and ``problem`` what is wrong with it; the message names both and
    says how to recover.
    """

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: not a valid golden file: {problem}; {_RERECORD}")


@dataclass(frozen=True)
class StoredEntry:
    """One tensor of a golden file as its header describes it.

    ``dtype`` is torch's name of the value's dtype (after undoing a view), ``shape`` the
    value's shape, ``code`` and ``stored_shape`` what the header says, ``start`` and
    ``stop`` the byte range within the data section.
    """

    key: str
    dtype: str
    shape: tuple[int, ...]
    code: str
    stored_shape: tuple[int, ...]
    start: int
    stop: int


class GoldenFile:
    """An open, validated golden file; tensors are memory-mapped on demand.

    Use :func:`read_golden` to open one, and close it (or use it as a context manager)
    when done; leaves handed out stay readable until then.
    """

    def __init__(
        self,
        path: Path,
        metadata: dict[str, str],
        entries: dict[str, StoredEntry],
        data_offset: int,
        mapping: mmap.mmap | None,
    ) -> None:
        self.path = path
        self.metadata = metadata
        self.entries = entries
        self._data_offset = data_offset
        self._mapping = mapping

    def sorted_keys(self) -> list[str]:
        """The tensor keys, sorted."""
        return sorted(self.entries)

    def leaf(self, key: str) -> Leaf:
        """The stored value of ``key`` as a leaf whose data is a read-only memory map."""
        entry = self.entries[key]
        info = DTYPES[entry.dtype]
        count = math.prod(entry.shape)
        if count == 0 or self._mapping is None:
            data: np.ndarray[Any, Any] = np.empty(entry.shape, dtype=info.storage)
            data.flags.writeable = False
        else:
            data = np.ndarray(
                shape=entry.shape,
                dtype=info.storage,
                buffer=self._mapping,
                offset=self._data_offset + entry.start,
            )
        return Leaf(dtype=entry.dtype, shape=entry.shape, data=data, device="cpu")

    def leaves(self) -> dict[str, Leaf]:
        """Every stored value, keyed as stored."""
        return {key: self.leaf(key) for key in self.sorted_keys()}

    def close(self) -> None:
        """Release the memory map (leaves still in use keep it alive until dropped)."""
        mapping, self._mapping = self._mapping, None
        if mapping is not None:
            # Leaves still referencing the map keep it open; it closes when they go.
            with contextlib.suppress(BufferError):
                mapping.close()

    def __enter__(self) -> GoldenFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------------------
# Reading


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {key!r} appears twice")
        result[key] = value
    return result


def _int_list(value: object) -> list[int] | None:
    if not isinstance(value, list):
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value):
        return None
    return [int(n) for n in value]


def read_golden(path: Path) -> GoldenFile:
    """Open and validate a golden file.

    Raises ``FileNotFoundError`` when it does not exist and :class:`GoldenFormatError`
    for anything that is not a well-formed safetensors file this plugin can read.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise GoldenFormatError(path, "the file is empty")
        if size < 8:
            raise GoldenFormatError(path, f"the file has only {size} bytes")
        header_size = int.from_bytes(handle.read(8), "little")
        if header_size > MAX_HEADER_BYTES:
            raise GoldenFormatError(
                path, f"the header claims {header_size} bytes (not a safetensors file?)"
            )
        if header_size > size - 8:
            raise GoldenFormatError(
                path,
                f"the header claims {header_size} bytes but the file has only {size - 8} "
                "after its length (truncated, or not a safetensors file)",
            )
        raw = handle.read(header_size)
        data_offset = 8 + header_size
        data_size = size - data_offset
        metadata, entries = _parse_header(path, raw, data_size)
        mapping = None
        if data_size > 0:
            try:
                mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as exc:
                raise GoldenFormatError(path, f"it cannot be memory-mapped ({exc})") from None
            with contextlib.suppress(AttributeError, OSError):
                mapping.madvise(mmap.MADV_SEQUENTIAL)
    return GoldenFile(path, metadata, entries, data_offset, mapping)


def _parse_header(
    path: Path, raw: bytes, data_size: int
) -> tuple[dict[str, str], dict[str, StoredEntry]]:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise GoldenFormatError(path, f"its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise GoldenFormatError(path, "its header is not a JSON object")
    metadata = header.pop(_METADATA, {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise GoldenFormatError(path, "its metadata is not a mapping of strings to strings")
    views = _parse_views(path, metadata)
    entries: dict[str, StoredEntry] = {}
    for key, spec in header.items():
        entries[key] = _parse_entry(path, key, spec, views.pop(key, None), data_size)
    if views:
        raise GoldenFormatError(path, f"its metadata names views of missing keys {sorted(views)}")
    end = 0
    for entry in sorted(entries.values(), key=lambda e: (e.start, e.stop)):
        if entry.start != end:
            problem = "overlap" if entry.start < end else "leave a gap"
            raise GoldenFormatError(path, f"its tensors {problem} at byte {end} of the data")
        end = entry.stop
    if end != data_size:
        raise GoldenFormatError(
            path, f"its tensors cover {end} bytes but the data section has {data_size}"
        )
    return dict(metadata), entries


def _parse_views(path: Path, metadata: Mapping[str, str]) -> dict[str, str]:
    text = metadata.get("views")
    if text is None:
        return {}
    try:
        views = json.loads(text)
    except ValueError:
        views = None
    if not isinstance(views, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v in _VIEWS for k, v in views.items()
    ):
        raise GoldenFormatError(path, f"its metadata 'views' is not understood: {text[:200]!r}")
    return dict(views)


def _parse_entry(
    path: Path, key: str, spec: object, view: str | None, data_size: int
) -> StoredEntry:
    where = f"tensor {key!r}"
    if not isinstance(spec, dict):
        raise GoldenFormatError(path, f"{where} is not described by a JSON object")
    code = spec.get("dtype")
    shape = _int_list(spec.get("shape"))
    offsets = _int_list(spec.get("data_offsets"))
    if not isinstance(code, str):
        raise GoldenFormatError(path, f"{where} has no dtype")
    if shape is None:
        raise GoldenFormatError(path, f"{where} has no valid shape")
    if offsets is None or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise GoldenFormatError(path, f"{where} has no valid data_offsets")
    start, stop = offsets
    if stop > data_size:
        raise GoldenFormatError(
            path, f"{where} ends at byte {stop} of a {data_size}-byte data section (truncated?)"
        )
    if view is not None:
        dtype = view
        view_code, extra = _VIEWS[view]
        if code != view_code or (extra and (not shape or shape[-1] != extra)):
            raise GoldenFormatError(path, f"{where} does not match its recorded view as {view}")
        value_shape = tuple(shape[:-1]) if extra else tuple(shape)
    elif code in _NAMES:
        dtype = _NAMES[code]
        value_shape = tuple(shape)
    else:
        raise GoldenFormatError(path, f"{where} has dtype {code!r}, which this plugin cannot read")
    expected = math.prod(value_shape) * DTYPES[dtype].itemsize
    if stop - start != expected:
        raise GoldenFormatError(
            path,
            f"{where} ({code} {list(shape)}) needs {expected} bytes but its offsets span "
            f"{stop - start}",
        )
    return StoredEntry(
        key=key,
        dtype=dtype,
        shape=value_shape,
        code=code,
        stored_shape=tuple(shape),
        start=start,
        stop=stop,
    )


# ---------------------------------------------------------------------------------------
# Writing


def _layout(leaves: Mapping[str, Leaf]) -> list[tuple[str, Leaf]]:
    # Widest items first, as safetensors does: with an 8-byte aligned data section every
    # tensor then starts at a multiple of its item size.
    return sorted(leaves.items(), key=lambda item: (-DTYPES[item[1].dtype].itemsize, item[0]))


def _header(leaves: list[tuple[str, Leaf]], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, Any] = {}
    views: dict[str, str] = {}
    offset = 0
    for key, leaf in leaves:
        if key == _METADATA:
            raise ValueError(f"{_METADATA!r} is reserved by safetensors; choose another name")
        if leaf.dtype in _VIEWS:
            code, extra = _VIEWS[leaf.dtype]
            shape = [*leaf.shape, extra] if extra else list(leaf.shape)
            views[key] = leaf.dtype
        elif leaf.dtype in _CODES:
            code, shape = _CODES[leaf.dtype], list(leaf.shape)
        else:
            raise TypeError(f"golden_tensor: dtype {leaf.dtype} of {key!r} cannot be stored")
        nbytes = math.prod(leaf.shape) * DTYPES[leaf.dtype].itemsize
        if leaf.data.nbytes != nbytes:
            raise ValueError(f"leaf {key!r} holds {leaf.data.nbytes} bytes, expected {nbytes}")
        header[key] = {"data_offsets": [offset, offset + nbytes], "dtype": code, "shape": shape}
        offset += nbytes
    meta = {str(k): str(v) for k, v in metadata.items()}
    if views:
        meta["views"] = json.dumps(views, sort_keys=True, separators=(",", ":"))
    if meta:
        header[_METADATA] = meta
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    body = text.encode("ascii")
    # Pad with spaces, as safetensors does, so the data section starts 8-byte aligned.
    body += b" " * (-len(body) % 8)
    return len(body).to_bytes(8, "little") + body


def _byte_views(leaves: list[tuple[str, Leaf]]) -> Iterator[np.ndarray[Any, Any]]:
    for _, leaf in leaves:
        yield np.ascontiguousarray(leaf.data).reshape(-1).view(np.uint8)


_COMPARE_BYTES = 1 << 22


def _same_bytes(path: Path, header: bytes, leaves: list[tuple[str, Leaf]]) -> bool:
    try:
        with open(path, "rb") as handle:
            size = sum(leaf.data.nbytes for _, leaf in leaves) + len(header)
            if os.fstat(handle.fileno()).st_size != size or handle.read(len(header)) != header:
                return False
            buffer = np.empty(_COMPARE_BYTES, dtype=np.uint8)
            for data in _byte_views(leaves):
                for start in range(0, data.size, _COMPARE_BYTES):
                    part = data[start : start + _COMPARE_BYTES]
                    got = handle.readinto(buffer.data[: part.size])
                    if got != part.size or not np.array_equal(buffer[: part.size], part):
                        return False
    except OSError:
        return False
    return True


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; folders cannot be opened like this on Windows.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def write_golden(path: Path, leaves: Mapping[str, Leaf], metadata: Mapping[str, str]) -> bool:
    """Write ``leaves`` and ``metadata`` to ``path`` atomically; ``True`` if written.

    When the file already holds exactly these bytes it is left untouched (its bytes and
    modification time stay) and ``False`` is returned. A crash at any moment leaves
    either the old file or the new one, never a mix. Missing folders are created.
    """
    path = Path(path)
    ordered = _layout(leaves)
    header = _header(ordered, metadata)
    if _same_bytes(path, header, ordered):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    # 0o666 (less the umask) like any file a tool writes: goldens are data, not programs.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(temporary, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(header)
            for data in _byte_views(ordered):
                handle.write(data.data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_folder(path.parent)
    return True


# ---------------------------------------------------------------------------------------
# Metadata


def _torch_version() -> str:
    torch = sys.modules.get("torch")
    if torch is not None:
        return str(torch.__version__)
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _threads() -> str:
    torch = sys.modules.get("torch")
    if torch is not None:
        return str(torch.get_num_threads())
    affinity = getattr(os, "sched_getaffinity", None)
    return str(len(affinity(0)) if affinity else os.cpu_count() or 1)


def _device_names(devices: list[str]) -> str:
    torch = sys.modules.get("torch")
    names = []
    for device in devices:
        if device.startswith("cuda") and torch is not None and torch.cuda.is_initialized():
            with contextlib.suppress(Exception):
                names.append(f"{device}: {torch.cuda.get_device_name(device)}")
    return "; ".join(names)


def environment_metadata(
    *, test_id: str, seed: int | None, devices: list[str] | None = None
) -> dict[str, str]:
    """The metadata a golden records about where it was made (all values strings).

    Keys: ``format``, ``plugin_version``, ``python``, ``numpy``, ``torch``, ``device``
    (the devices of the checked values), ``device_name`` (GPU models, when known),
    ``platform``, ``cpu``, ``threads`` (torch's intra-op threads, or the usable cores
    without torch), ``seed`` and ``test``.
    """
    from pytest_determinism import __version__

    used = sorted(set(devices or ["cpu"]))
    return {
        "format": FORMAT,
        "plugin_version": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": _torch_version(),
        "device": ",".join(used),
        "device_name": _device_names(used),
        "platform": f"{platform.system()}-{platform.machine()}",
        "cpu": _cpu_model(),
        "threads": _threads(),
        "seed": "" if seed is None else str(seed),
        "test": test_id,
    }
