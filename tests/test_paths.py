"""Golden locations: the documented layout, safe unique file names, never outside the root."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_determinism.golden.paths import golden_path, golden_root, name_from_nodeid, sanitize

_SAFE = re.compile(r"[A-Za-z0-9_.-]+")


def test_default_layout_is_beside_the_test_file(tmp_path: Path) -> None:
    test_file = tmp_path / "tests" / "test_model.py"
    assert golden_path(test_file, "test_logits", tmp_path) == (
        tmp_path / "tests" / "__golden__" / "test_model" / "test_logits.safetensors"
    )
    assert golden_path(test_file, "TestEncoder.test_shapes", tmp_path).name == (
        "TestEncoder.test_shapes.safetensors"
    )
    assert golden_root(test_file, tmp_path) == tmp_path / "tests" / "__golden__"


def test_golden_dir_moves_the_root_and_mirrors_test_folders(tmp_path: Path) -> None:
    test_file = tmp_path / "tests" / "unit" / "test_model.py"
    expected = tmp_path / "goldens" / "tests" / "unit" / "test_model" / "test_logits.safetensors"
    assert golden_path(test_file, "test_logits", tmp_path, "goldens") == expected
    assert golden_path(test_file, "test_logits", tmp_path, tmp_path / "goldens") == expected
    assert golden_root(test_file, tmp_path, "goldens") == tmp_path / "goldens"
    top = golden_path(tmp_path / "test_top.py", "test_a", tmp_path, "goldens")
    assert top == tmp_path / "goldens" / "test_top" / "test_a.safetensors"


def test_a_test_file_outside_the_rootdir_stays_under_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "test_x.py"
    path = golden_path(outside, "test_a", tmp_path / "project", "goldens")
    assert path.is_relative_to(tmp_path / "project" / "goldens")
    other = golden_path(tmp_path / "other" / "test_x.py", "test_a", tmp_path / "project", "goldens")
    assert other != path


def test_parametrized_ids_get_distinct_safe_names() -> None:
    names = ["test_dtype[bf16]", "test_dtype[bf16 ]", "test_dtype[bf/16]", "test_dtype_bf16_"]
    stems = [sanitize(name) for name in names]
    assert len(set(stems)) == len(stems)
    assert stems[3] == "test_dtype_bf16_"
    assert re.fullmatch(r"test_dtype_bf16_-[0-9a-f]{12}", stems[0])
    assert all(_SAFE.fullmatch(stem) for stem in stems)


@pytest.mark.parametrize("name", ["", ".", "..", "...", "-rf", ".hidden", "CON", "nul.txt"])
def test_special_names_are_never_used_as_they_are(name: str) -> None:
    stem = sanitize(name)
    assert stem not in ("", ".", "..")
    assert not stem.startswith((".", "-"))
    assert stem != name


def test_long_names_are_shortened_with_a_hash() -> None:
    long = "test_x[" + "a" * 400 + "]"
    stem = sanitize(long)
    assert len(f"{stem}.safetensors".encode()) < 200
    assert sanitize(long[:-1] + "b]") != stem
    plain = "t" * 300
    assert len(sanitize(plain)) < 200
    assert sanitize(plain) != sanitize(plain + "t")


_pieces = st.sampled_from(
    ["a", "Z", "0", "_", ".", "-", "/", "\\", "[", "]", " ", "é", "\x00", "..", "../"]
)
_names = st.lists(_pieces, max_size=30).map("".join) | st.text(max_size=250)


@settings(max_examples=150, deadline=None)
@given(names=st.lists(_names, min_size=2, max_size=6, unique=True))
def test_sanitised_names_never_collide(names: list[str]) -> None:
    stems = [sanitize(name) for name in names]
    assert len(set(stems)) == len(stems)
    for stem in stems:
        assert _SAFE.fullmatch(stem)
        assert stem not in (".", "..")
        assert len(stem.encode()) <= 180


@settings(max_examples=100, deadline=None)
@given(
    name=_names,
    # A module name is a real file's name: no separators, no NUL.
    module=_names.filter(lambda m: m and not set(m) & {"/", "\\", "\x00"} and m not in (".", "..")),
)
def test_paths_never_escape_the_golden_root(name: str, module: str) -> None:
    rootdir = Path("/project")
    test_file = rootdir / "tests" / f"{module}.py"
    for golden_dir in (None, "goldens"):
        root = golden_root(test_file, rootdir, golden_dir)
        path = golden_path(test_file, name, rootdir, golden_dir)
        resolved = Path(os.path.normpath(path))
        assert resolved.is_relative_to(root)
        assert resolved.name.endswith(".safetensors")
        assert resolved.parent.parent != resolved.parent


def test_a_symbolic_link_pointing_out_of_the_root_is_refused(tmp_path: Path) -> None:
    test_file = tmp_path / "tests" / "test_m.py"
    root = tmp_path / "tests" / "__golden__"
    root.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "test_m").symlink_to(tmp_path / "outside")
    with pytest.raises(ValueError, match="outside the golden root"):
        golden_path(test_file, "test_a", tmp_path)


def test_name_from_nodeid() -> None:
    assert name_from_nodeid("tests/test_m.py::TestC::test_x[1-a]") == "TestC.test_x[1-a]"
    assert name_from_nodeid("tests/test_m.py::test_x") == "test_x"
