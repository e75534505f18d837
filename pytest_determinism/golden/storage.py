"""Golden files: the safetensors layout, read validated and memory-mapped, and metadata.

Reading never trusts the file: the header is parsed and checked here (length, JSON, every
dtype, shape and offset, full coverage of the data) before any tensor is touched, and the
data is memory-mapped, so a corrupt or hostile file can neither allocate much memory nor
run code. Nothing is ever unpickled. Writing lives in :mod:`pytest_determinism.golden.writing`.

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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from pytest_determinism.errors import GoldenFileError
from pytest_determinism.golden.dtypes import DTYPES
from pytest_determinism.golden.values import Leaf

__all__ = [
    "CHECKS_KEY",
    "CODES",
    "FORMAT",
    "METADATA_KEY",
    "VIEWS",
    "GoldenFile",
    "GoldenFormatError",
    "StoredEntry",
    "encode_checks",
    "read_golden",
]

#: Written to the metadata key ``format``; bumped if the layout ever changes.
FORMAT = "pytest-determinism/1"

#: safetensors' own limit on the JSON header.
MAX_HEADER_BYTES = 100_000_000

#: The header key safetensors reserves for the string-to-string metadata.
METADATA_KEY = "__metadata__"

#: Metadata key of the JSON map ``{check name: [its keys]}`` a golden file records.
CHECKS_KEY = "checks"

#: torch dtype name -> safetensors code, for dtypes stored as themselves.
CODES = {
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
_NAMES = {code: name for name, code in CODES.items()}

#: torch dtype name -> (safetensors code it is viewed as, extra trailing dimension).
VIEWS = {
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

    def recorded_checks(self) -> dict[str, Any] | None:
        """The map ``{check name: [its keys]}`` the file records under :data:`CHECKS_KEY`,
        or ``None`` when it records none it can be read from (a file written by something
        else)."""
        text = self.metadata.get(CHECKS_KEY)
        if text is None:
            return None
        try:
            checks = json.loads(text)
        except ValueError:
            return None
        return checks if isinstance(checks, dict) else None

    def check_names(self) -> list[str]:
        """The names of the checks recorded, sorted."""
        checks = self.recorded_checks()
        if checks is not None:
            return sorted(checks)
        # A file written by something else: every key is its own check.
        return self.sorted_keys()

    def check_keys(self, name: str) -> list[str] | None:
        """The stored keys of check ``name``, or ``None`` when it was never recorded."""
        checks = self.recorded_checks()
        if checks is not None:
            keys = checks.get(name)
            if not isinstance(keys, list):
                return None
            return [k for k in keys if isinstance(k, str) and k in self.entries]
        prefix = name + "."
        found = [k for k in sorted(self.entries) if k == name or k.startswith(prefix)]
        return found or None

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

    def leaves(self, keys: Iterable[str] | None = None) -> Mapping[str, Leaf]:
        """The stored values of ``keys`` (every key, sorted, by default), in that order, as a
        mapping that maps each one (as :meth:`leaf` does) only when it is looked up."""
        return _StoredLeaves(self, self.sorted_keys() if keys is None else list(keys))

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


def encode_checks(checks: Mapping[str, list[str]]) -> str:
    """The :data:`CHECKS_KEY` metadata value recording ``{check name: [its keys]}``."""
    return json.dumps(checks, sort_keys=True, separators=(",", ":"))


class _StoredLeaves(Mapping[str, Leaf]):
    """Some keys of an open golden file; a comparison maps one leaf at a time."""

    def __init__(self, golden: GoldenFile, keys: list[str]) -> None:
        self._golden = golden
        self._keys = keys
        self._known = set(keys)

    def __getitem__(self, key: str) -> Leaf:
        if key not in self._known:
            raise KeyError(key)
        return self._golden.leaf(key)

    def __contains__(self, key: object) -> bool:
        # Mapping's own test would look the leaf up, mapping it for nothing.
        return key in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


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
    metadata = header.pop(METADATA_KEY, {})
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
        isinstance(k, str) and isinstance(v, str) and v in VIEWS for k, v in views.items()
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
        view_code, extra = VIEWS[view]
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
