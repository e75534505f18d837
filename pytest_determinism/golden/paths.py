"""Where a test's golden file lives.

By default beside the test file: ``<test folder>/__golden__/<module>/<test name>.safetensors``.
With the ini option ``golden_dir`` the root moves (relative to the rootdir) and below it
the layout mirrors the test paths: ``<rootdir>/<golden_dir>/<test folder relative to the
rootdir>/<module>/<test name>.safetensors``.

Test names (``TestClass.test_x[param-id]``) become file names by replacing characters
outside ``[A-Za-z0-9_.-]`` and cutting long names; whenever the name had to change, a hash
of the original is appended, so two test ids never share a file. No input can make the path
leave the golden root.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "DEFAULT_FOLDER",
    "SUFFIX",
    "case_clashes",
    "golden_path",
    "golden_root",
    "name_from_nodeid",
    "sanitize",
]

#: The folder beside each test file that holds its goldens, without ``golden_dir``.
DEFAULT_FOLDER = "__golden__"

#: File name suffix of every golden.
SUFFIX = ".safetensors"

# File names stay well under the 255-byte limit of common file systems, leaving room for
# the hash, the suffix and the temporary-file decoration used while writing.
_MAX_STEM = 160
_HASH_CHARS = 12
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"}
    | {f"COM{i}" for i in range(1, 10)}
    | {f"LPT{i}" for i in range(1, 10)}
)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]


def sanitize(name: str) -> str:
    """A file-name-safe stem for ``name``, unique per name.

    Characters outside ``[A-Za-z0-9_.-]`` become ``_``, as does a leading ``.`` or ``-``
    (an empty name becomes ``_``), and names longer than 160 characters are cut.
    If anything changed, ``-`` and 12 hex digits of the original's SHA-256 are appended.
    """
    safe = _UNSAFE.sub("_", name)
    # No hidden files, no "." or "..", nothing a shell would read as an option.
    if not safe or safe[0] in ".-":
        safe = "_" + safe[1:]
    if len(safe) > _MAX_STEM:
        safe = safe[:_MAX_STEM]
    reserved = safe.split(".", 1)[0].upper() in _WINDOWS_RESERVED
    if safe != name or not safe or reserved:
        safe = f"{safe}-{_digest(name)}"
    return safe


def golden_root(
    test_file: Path, rootdir: Path, golden_dir: str | os.PathLike[str] | None = None
) -> Path:
    """The golden root for a test file: ``__golden__`` beside it, or ``golden_dir``
    (relative to ``rootdir``, an absolute path also works) when set."""
    if golden_dir:
        return Path(os.path.abspath(Path(rootdir) / golden_dir))
    return Path(os.path.abspath(Path(test_file).parent / DEFAULT_FOLDER))


def _mirrored_folder(test_file: Path, rootdir: Path) -> Path:
    folder = Path(os.path.abspath(Path(test_file).parent))
    base = Path(os.path.abspath(rootdir))
    for candidate, anchor in ((folder, base), (folder.resolve(), base.resolve())):
        try:
            return candidate.relative_to(anchor)
        except ValueError:
            continue
    # A test file outside the rootdir (given by absolute path) still gets its own folder.
    return Path("__outside__") / sanitize(f"{folder.name}-{_digest(str(folder))}")


def golden_path(
    test_file: Path,
    test_name: str,
    rootdir: Path,
    golden_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """The golden file of the test ``test_name`` (``Class.test[id]``) in ``test_file``.

    Raises ``ValueError`` if the result would not lie inside :func:`golden_root` once
    symbolic links are resolved.
    """
    root = golden_root(test_file, rootdir, golden_dir)
    module = sanitize(Path(test_file).stem)
    folder = root / _mirrored_folder(test_file, rootdir) if golden_dir else root
    path = folder / module / f"{sanitize(test_name)}{SUFFIX}"
    if not path.resolve().is_relative_to(root.resolve()):
        raise ValueError(
            f"the golden file {path} of {test_name!r} would lie outside the golden root "
            f"{root} (a symbolic link inside it points elsewhere?)"
        )
    return path


def name_from_nodeid(nodeid: str) -> str:
    """The test name a golden is stored under, from a pytest node id:
    ``tests/test_m.py::TestC::test_x[1]`` gives ``TestC.test_x[1]``."""
    parts = nodeid.split("::")
    return ".".join(parts[1:]) if len(parts) > 1 else parts[0]


def case_clashes(paths: Mapping[str, Path]) -> list[list[str]]:
    """Groups of tests (keys, sorted) whose golden files differ only in letter case.

    On a case-insensitive file system (the default on macOS and Windows) such tests share
    one file and overwrite each other's goldens.
    """
    groups: dict[str, dict[str, list[str]]] = {}
    for test, path in paths.items():
        groups.setdefault(str(path).casefold(), {}).setdefault(str(path), []).append(test)
    return sorted(
        sorted(test for tests in spellings.values() for test in tests)
        for spellings in groups.values()
        if len(spellings) > 1
    )
