"""Writing golden files: atomically, byte-stable, and without holding a copy of big outputs.

Every file is assembled in a temporary file in the same folder (its name does not end in
``.safetensors``, so no tool mistakes it for a golden), flushed and fsynced, then renamed
over the old one, and the folder is fsynced: a crash at any moment leaves the old golden
or the new one, never a mix. The same checks always give the same bytes (sorted JSON keys,
a fixed layout, no timestamps).

Two layouts, both plain safetensors:

- :func:`write_golden` (every leaf in memory): widest dtypes first, then by key, the header
  padded to 8 bytes, as safetensors writes it.
- :class:`GoldenWriter` (what ``--update-golden`` uses): a leaf of :data:`STREAM_BYTES` or
  more goes to the temporary file the moment it is checked, so the test may change its
  tensors afterwards without a copy of the output being held in memory. Such leaves come
  first, in the order they were checked, behind a header padded to a whole page (the
  space is reserved before the first one is written); the other leaves follow as above.

A temporary file left by a killed run is named after the host and process that wrote it,
and removed by the next write beside it once that process is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import mmap
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pytest_determinism.errors import GoldenFileError
from pytest_determinism.golden.dtypes import DTYPES
from pytest_determinism.golden.storage import CODES, METADATA_KEY, VIEWS, GoldenFile, read_golden
from pytest_determinism.golden.values import Leaf, bits_equal

__all__ = ["STREAM_BYTES", "GoldenWriter", "write_golden"]

#: Leaves at least this large (and a whole number of 8-byte words, which keeps every
#: later leaf aligned) are written to disk when checked instead of copied.
STREAM_BYTES = 1 << 20

_PAGE = 4096
_COPY_BYTES = 1 << 22


# ---------------------------------------------------------------------------------------
# Layout


def _layout(leaves: Mapping[str, Leaf]) -> list[tuple[str, Leaf]]:
    # Widest items first, as safetensors does: with an 8-byte aligned data section every
    # tensor then starts at a multiple of its item size.
    return sorted(leaves.items(), key=lambda item: (-DTYPES[item[1].dtype].itemsize, item[0]))


@dataclass(frozen=True)
class _Entry:
    """What the header says of one leaf: ``nbytes`` is what its data holds."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def _entries(leaves: list[tuple[str, Leaf]]) -> list[_Entry]:
    return [_Entry(key, leaf.dtype, leaf.shape, leaf.nbytes) for key, leaf in leaves]


def _header(entries: list[_Entry], metadata: Mapping[str, str], align: int) -> bytes:
    """The length prefix and JSON header for ``entries`` stored in this order, padded with
    spaces (as safetensors pads) so that the data starts at a multiple of ``align``."""
    header: dict[str, Any] = {}
    views: dict[str, str] = {}
    offset = 0
    for entry in entries:
        key = entry.key
        if key == METADATA_KEY:
            raise ValueError(f"{METADATA_KEY!r} is reserved by safetensors; choose another name")
        if entry.dtype in VIEWS:
            code, extra = VIEWS[entry.dtype]
            shape = [*entry.shape, extra] if extra else list(entry.shape)
            views[key] = entry.dtype
        elif entry.dtype in CODES:
            code, shape = CODES[entry.dtype], list(entry.shape)
        else:
            raise TypeError(f"golden_tensor: dtype {entry.dtype} of {key!r} cannot be stored")
        nbytes = math.prod(entry.shape) * DTYPES[entry.dtype].itemsize
        if entry.nbytes != nbytes:
            raise ValueError(f"leaf {key!r} holds {entry.nbytes} bytes, expected {nbytes}")
        header[key] = {"data_offsets": [offset, offset + nbytes], "dtype": code, "shape": shape}
        offset += nbytes
    meta = {str(k): str(v) for k, v in metadata.items()}
    if views:
        meta["views"] = json.dumps(views, sort_keys=True, separators=(",", ":"))
    if meta:
        header[METADATA_KEY] = meta
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    body = text.encode("ascii")
    body += b" " * (-(8 + len(body)) % align)
    return len(body).to_bytes(8, "little") + body


def _bytes_of(leaf: Leaf) -> np.ndarray[Any, Any]:
    return np.ascontiguousarray(leaf.data).reshape(-1).view(np.uint8)


# ---------------------------------------------------------------------------------------
# Temporary files


def _host_tag() -> str:
    # Folders may be shared between machines: only this host's dead processes are known.
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale(path: Path) -> None:
    """Delete temporary files of ``path`` left by killed processes of this host."""
    if os.name != "posix":
        # Elsewhere signal 0 is no liveness probe; leftovers stay (they never look golden).
        return
    prefix, tag = f".{path.name}.", _host_tag()
    try:
        names = [entry.name for entry in os.scandir(path.parent)]
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        host, _, rest = name[len(prefix) : -len(".tmp")].partition("-")
        pid = rest.partition("-")[0]
        if host == tag and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(path.parent / name)


def _open_temporary(path: Path) -> tuple[Path, io.BufferedRandom]:
    """A new, exclusively created temporary file beside ``path``, open for writing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    name = f".{path.name}.{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    temporary = path.with_name(name)
    # 0o666 (less the umask) like any file a tool writes: goldens are data, not programs.
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(temporary, flags, 0o666)
    return temporary, os.fdopen(fd, "w+b")


def _abandon(temporary: Path, handle: io.BufferedRandom) -> None:
    """Close and delete a temporary file that will not become a golden."""
    handle.close()
    with contextlib.suppress(OSError):
        os.unlink(temporary)


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


def _install(temporary: Path, handle: io.BufferedRandom, path: Path) -> None:
    """Make ``temporary`` (written through ``handle``) durable and rename it to ``path``."""
    try:
        with handle:
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_folder(path.parent)


# ---------------------------------------------------------------------------------------
# Writing from memory


def _same_bytes(path: Path, header: bytes, leaves: list[tuple[str, Leaf]]) -> bool:
    try:
        with open(path, "rb") as handle:
            size = sum(leaf.data.nbytes for _, leaf in leaves) + len(header)
            if os.fstat(handle.fileno()).st_size != size or handle.read(len(header)) != header:
                return False
            buffer = np.empty(_COPY_BYTES, dtype=np.uint8)
            for _, leaf in leaves:
                data = _bytes_of(leaf)
                for start in range(0, data.size, _COPY_BYTES):
                    part = data[start : start + _COPY_BYTES]
                    got = handle.readinto(buffer.data[: part.size])
                    if got != part.size or not np.array_equal(buffer[: part.size], part):
                        return False
    except OSError:
        return False
    return True


def write_golden(path: Path, leaves: Mapping[str, Leaf], metadata: Mapping[str, str]) -> bool:
    """Write ``leaves`` and ``metadata`` to ``path`` atomically; ``True`` if written.

    When the file already holds exactly these bytes it is left untouched (its bytes and
    modification time stay) and ``False`` is returned. Missing folders are created.
    """
    path = Path(path)
    ordered = _layout(leaves)
    header = _header(_entries(ordered), metadata, align=8)
    if _same_bytes(path, header, ordered):
        return False
    temporary, handle = _open_temporary(path)
    try:
        handle.write(header)
        for _, leaf in ordered:
            handle.write(_bytes_of(leaf).data)
    except BaseException:
        _abandon(temporary, handle)
        raise
    _install(temporary, handle, path)
    return True


# ---------------------------------------------------------------------------------------
# Writing while a test runs


class GoldenWriter:
    """A golden file being recorded, one checked leaf at a time.

    :meth:`keep` takes each leaf as it is checked. A small one is copied. A big one that
    the old golden (:meth:`baseline`) already holds bit for bit is only noted: its bytes
    are in the old file, so re-recording an unchanged output writes nothing. Any other big
    one is written to the temporary file at once, after the unchanged ones noted before
    it, so the layout never depends on what the old file held. :meth:`leaves` reads
    everything back, :meth:`commit` installs the file atomically and :meth:`discard` drops
    it. A writer that kept nothing touches no file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # Big leaves in file order: the entry, the device it was checked on, and where its
        # bytes are: a start in the temporary file's data, or the old golden's leaf.
        self._big: list[tuple[_Entry, str, int | Leaf]] = []
        self._copied: dict[str, Leaf] = {}
        self._baseline: GoldenFile | None = None
        self._baseline_read = False
        self._temporary: Path | None = None
        self._handle: io.BufferedRandom | None = None
        self._end = 0
        self._created: Path | None = None
        self._mapping: mmap.mmap | None = None

    def __repr__(self) -> str:
        return f"<GoldenWriter {self.path}: {len(self._big) + len(self._copied)} leaves>"

    def baseline(self) -> GoldenFile | None:
        """The golden file being replaced, open; ``None`` when missing or unreadable."""
        if not self._baseline_read:
            self._baseline_read = True
            with contextlib.suppress(OSError, GoldenFileError):
                self._baseline = read_golden(self.path)
        return self._baseline

    def keep(self, key: str, leaf: Leaf) -> None:
        """Keep ``leaf`` under ``key``: what is kept no longer depends on the caller's memory.

        Raises ``OSError`` when the temporary file cannot be created or written.
        """
        if key == METADATA_KEY:
            raise ValueError(f"{METADATA_KEY!r} is reserved by safetensors; choose another name")
        if leaf.nbytes < STREAM_BYTES or leaf.nbytes % 8:
            self._copied[key] = Leaf(leaf.dtype, leaf.shape, np.array(leaf.data), leaf.device)
            return
        entry = _Entry(key, leaf.dtype, leaf.shape, leaf.nbytes)
        if self._handle is None:
            old = self._old_leaf(key)
            if old is not None and bits_equal(leaf, old):
                self._big.append((entry, leaf.device, old))
                return
        self._big.append((entry, leaf.device, self._stream(leaf)))

    def _old_leaf(self, key: str) -> Leaf | None:
        baseline = self.baseline()
        if baseline is None or key not in baseline.entries:
            return None
        return baseline.leaf(key)

    def _open(self) -> io.BufferedRandom:
        if self._handle is None:
            folder = self.path.parent
            missing = [p for p in (folder, *folder.parents) if not p.exists()]
            self._created = missing[-1] if missing else None
            self._temporary, self._handle = _open_temporary(self.path)
            # The header goes in front once every key is known: one page is reserved.
            self._handle.seek(_PAGE)
            # Unchanged leaves noted so far come first, in the order they were checked.
            for index, (entry, device, where) in enumerate(self._big):
                if isinstance(where, Leaf):
                    self._big[index] = (entry, device, self._stream(where))
        return self._handle

    def _stream(self, leaf: Leaf) -> int:
        """Write ``leaf`` to the temporary file; where its bytes start in the data."""
        handle = self._open()
        start = self._end
        handle.write(_bytes_of(leaf).data)
        self._end += leaf.nbytes
        return start

    def leaves(self) -> dict[str, Leaf]:
        """Everything kept; big leaves as read-only maps of the temporary or old file."""
        kept = dict(self._copied)
        if self._handle is not None and self._mapping is None:
            self._handle.flush()
            self._mapping = mmap.mmap(self._handle.fileno(), 0, access=mmap.ACCESS_READ)
        for entry, device, where in self._big:
            if isinstance(where, Leaf):
                kept[entry.key] = Leaf(entry.dtype, entry.shape, where.data, device)
                continue
            data: np.ndarray[Any, Any] = np.ndarray(
                shape=entry.shape,
                dtype=DTYPES[entry.dtype].storage,
                buffer=self._mapping,
                offset=_PAGE + where,
            )
            kept[entry.key] = Leaf(entry.dtype, entry.shape, data, device)
        return kept

    def commit(self, metadata: Mapping[str, str]) -> bool:
        """Install the golden with ``metadata``; ``True`` if the file on disk was written.

        Call it once, after the last :meth:`keep`, and drop the leaves :meth:`leaves`
        returned first. Then :meth:`discard` what is left.
        """
        self._unmap()
        if not self._big:
            self._close_baseline()
            return write_golden(self.path, self._copied, metadata)
        self._open()
        assert self._handle is not None and self._temporary is not None
        copied = _layout(self._copied)
        entries = [entry for entry, _, _ in self._big] + _entries(copied)
        header = _header(entries, metadata, align=_PAGE)
        temporary, handle = self._temporary, self._handle
        self._temporary = self._handle = None
        try:
            if len(header) != _PAGE:
                temporary, handle = self._relocate(temporary, handle, header)
            else:
                handle.seek(0)
                handle.write(header)
            handle.seek(len(header) + self._end)
            for _, leaf in copied:
                handle.write(_bytes_of(leaf).data)
        except BaseException:
            _abandon(temporary, handle)
            raise
        # Windows cannot replace a file that is still mapped.
        self._close_baseline()
        _install(temporary, handle, self.path)
        self._created = None
        return True

    def _relocate(
        self, temporary: Path, handle: io.BufferedRandom, header: bytes
    ) -> tuple[Path, io.BufferedRandom]:
        # The header outgrew its page: copy the streamed data behind a bigger one.
        moved, target = _open_temporary(self.path)
        try:
            target.write(header)
            handle.seek(_PAGE)
            buffer = bytearray(_COPY_BYTES)
            left = self._end
            while left:
                got = handle.readinto(memoryview(buffer)[: min(left, _COPY_BYTES)])
                if not got:
                    raise OSError(f"{temporary} is shorter than what was written to it")
                target.write(memoryview(buffer)[:got])
                left -= got
        except BaseException:
            _abandon(moved, target)
            raise
        finally:
            _abandon(temporary, handle)
        return moved, target

    def discard(self) -> None:
        """Drop everything kept and the temporary file, and any folder made for it."""
        self._unmap()
        # The noted leaves map the old file: drop them before closing it.
        self._copied.clear()
        self._big.clear()
        self._close_baseline()
        handle, temporary = self._handle, self._temporary
        self._handle = self._temporary = None
        if handle is not None and temporary is not None:
            _abandon(temporary, handle)
        if self._created is not None:
            for folder in (self.path.parent, *self.path.parent.parents):
                try:
                    folder.rmdir()
                except OSError:
                    break
                if folder == self._created:
                    break
            self._created = None

    def _close_baseline(self) -> None:
        baseline, self._baseline = self._baseline, None
        self._baseline_read = False
        if baseline is not None:
            baseline.close()

    def _unmap(self) -> None:
        mapping, self._mapping = self._mapping, None
        if mapping is not None:
            # Leaves still referencing the map keep it open; it closes when they go.
            with contextlib.suppress(BufferError):
                mapping.close()
