"""Recording big outputs: written when checked, never copied, the layout independent of history."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from killing import kill_while_writing
from safetensors import safe_open

from pytest_determinism.errors import GoldenFileError
from pytest_determinism.golden import writing
from pytest_determinism.golden.dtypes import DTYPES
from pytest_determinism.golden.golden_tensor import GoldenTensor
from pytest_determinism.golden.storage import read_golden
from pytest_determinism.golden.values import Leaf, bits_equal, flatten
from pytest_determinism.golden.writing import STREAM_BYTES, GoldenWriter

BIG = STREAM_BYTES // 4  # float32 elements in one streamed leaf


def _golden(path: Path) -> GoldenTensor:
    return GoldenTensor(
        path=path,
        root=path.parent,
        test_id="t.py::test_x",
        update=True,
        tolerances={},
        seed=0,
        defer_failures=False,
    )


def _record(path: Path, *checks: tuple[object, str]) -> bool:
    golden = _golden(path)
    for value, name in checks:
        golden.check(value, name)
    return golden.finish(test_passed=True).file_written


def _data_offset(path: Path) -> int:
    with open(path, "rb") as handle:
        return 8 + int.from_bytes(handle.read(8), "little")


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_big_output_is_on_disk_when_checked_and_later_edits_do_not_count(
    tmp_path: Path,
) -> None:
    path = tmp_path / "g.safetensors"
    out = torch.arange(BIG, dtype=torch.float32)
    golden = _golden(path)
    golden.check(out, "out")
    [temporary] = _temporaries(tmp_path)
    assert os.path.getsize(tmp_path / temporary) >= out.numel() * 4
    out.add_(1.0)  # in place, after the check: the check's value is what is recorded
    assert golden.finish(test_passed=True).file_written
    assert _temporaries(tmp_path) == []
    with read_golden(path) as stored:
        assert np.array_equal(stored.leaf("out").data, np.arange(BIG, dtype=np.float32))
    with safe_open(str(path), framework="pt") as handle:
        assert torch.equal(handle.get_tensor("out"), torch.arange(BIG, dtype=torch.float32))
    assert _data_offset(path) == 4096  # the data starts on a page


def test_big_leaves_come_first_in_check_order_then_small_ones(tmp_path: Path) -> None:
    path = tmp_path / "g.safetensors"
    value = {
        "z_big": torch.ones(BIG),
        "a_small": torch.ones(3, dtype=torch.int8),
        "m_big": torch.zeros(BIG, dtype=torch.float64),
        "b_small": torch.ones(5, dtype=torch.float64),
    }
    assert _record(path, (value, "v"))
    header = json.loads(path.read_bytes()[8 : _data_offset(path)])
    starts = {key: spec["data_offsets"][0] for key, spec in header.items() if key != "__metadata__"}
    order = sorted(starts, key=starts.__getitem__)
    assert order == ["v.z_big", "v.m_big", "v.b_small", "v.a_small"]
    with read_golden(path) as stored:
        for key, tensor in value.items():
            assert bits_equal(stored.leaf(f"v.{key}"), flatten(tensor)[""])


def test_re_recording_an_unchanged_big_output_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "g.safetensors"
    out = torch.randn(BIG, generator=torch.Generator().manual_seed(1))
    assert _record(path, (out, "out"), (torch.ones(2), "small"))
    before = path.read_bytes(), os.stat(path).st_mtime_ns
    opened: list[Path] = []
    real_open = writing._open_temporary

    def spy(target: Path):  # type: ignore[no-untyped-def]
        opened.append(target)
        return real_open(target)

    monkeypatch.setattr(writing, "_open_temporary", spy)
    golden = _golden(path)
    golden.check(out.clone(), "out")
    golden.check(torch.ones(2), "small")
    result = golden.finish(test_passed=True)
    assert (result.passed, result.updated, result.file_written) == (2, 0, False)
    assert opened == []
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before


def test_the_bytes_do_not_depend_on_what_the_old_golden_held(tmp_path: Path) -> None:
    first, second = torch.full((BIG,), 1.0), torch.full((BIG,), 2.0)
    fresh = tmp_path / "fresh" / "g.safetensors"
    assert _record(fresh, (first, "a"), (second, "b"), (3, "c"))
    # Here "a" is unchanged (its bytes come from the old file) and "b" changed after it.
    history = tmp_path / "history" / "g.safetensors"
    assert _record(history, (first, "a"), (first, "b"), (4, "c"))
    assert _record(history, (first, "a"), (second, "b"), (3, "c"))
    assert history.read_bytes() == fresh.read_bytes()
    # Only a small check changed: the unchanged big ones are copied from the old file.
    assert _record(history, (first, "a"), (second, "b"), (4, "c"))
    assert _record(history, (first, "a"), (second, "b"), (3, "c"))
    assert history.read_bytes() == fresh.read_bytes()


def test_a_header_bigger_than_a_page_moves_the_data_behind_it(tmp_path: Path) -> None:
    path = tmp_path / "g.safetensors"
    many = {f"a_rather_long_key_name_number_{i:03d}": float(i) for i in range(100)}
    assert _record(path, (torch.ones(BIG), "big"), (many, "many"))
    assert _data_offset(path) % 4096 == 0
    assert _data_offset(path) > 4096
    with read_golden(path) as stored:
        assert np.array_equal(stored.leaf("big").data, np.ones(BIG, np.float32))
        assert stored.leaf("many.a_rather_long_key_name_number_099").data.tolist() == 99.0
    with safe_open(str(path), framework="np") as handle:
        assert len(list(handle.keys())) == 101
    assert _temporaries(tmp_path) == []


def test_a_failed_test_leaves_no_temporary_file_and_no_new_folder(tmp_path: Path) -> None:
    path = tmp_path / "__golden__" / "test_m" / "g.safetensors"
    golden = _golden(path)
    golden.check(torch.ones(BIG), "out")
    assert _temporaries(path.parent)
    result = golden.finish(test_passed=False)
    assert result.not_written
    assert list(tmp_path.iterdir()) == []


def test_a_write_error_while_checking_names_the_golden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(target: Path):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writing, "_open_temporary", full)
    path = tmp_path / "g.safetensors"
    golden = _golden(path)
    message = r"cannot be written beside .*g\.safetensors.*No space"
    with pytest.raises(GoldenFileError, match=message):
        golden.check(torch.ones(BIG), "out")
    golden.check(torch.ones(2), "small")  # the test went on and passed: still nothing written
    result = golden.finish(test_passed=True)
    assert result.not_written
    assert not path.exists()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_temporary_files_of_dead_processes_on_this_host_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "g.safetensors"
    tag = writing._host_tag()
    dead = tmp_path / f".g.safetensors.{tag}-{_dead_pid()}-0badcafe.tmp"
    alive = tmp_path / f".g.safetensors.{tag}-{os.getppid()}-0badcafe.tmp"
    elsewhere = tmp_path / f".g.safetensors.ffffffff-{_dead_pid()}-0badcafe.tmp"
    other_golden = tmp_path / f".h.safetensors.{tag}-{_dead_pid()}-0badcafe.tmp"
    for stale in (dead, alive, elsewhere, other_golden):
        stale.write_bytes(b"partial")
    assert _record(path, (1.0, "x"))
    assert not dead.exists()
    assert alive.exists() and elsewhere.exists() and other_golden.exists()


_KILLED_RECORDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    from pytest_determinism.golden.golden_tensor import GoldenTensor

    folder = Path(sys.argv[1])
    values = [torch.full((1 << 21,), v) for v in (1.0, 2.0)]
    i = 0
    while True:
        for n in range(3):
            path = folder / f"g{n}.safetensors"
            golden = GoldenTensor(path=path, root=folder, test_id="t", update=True,
                                  tolerances={}, seed=0, defer_failures=False)
            golden.check(values[(i + n) % 2], "x")
            golden.check(float(i), "round")
            golden.finish(test_passed=True)
        if i == 0:
            print("ready", flush=True)
        i += 1
    """
)


def test_killing_a_recording_run_never_leaves_a_broken_golden(tmp_path: Path) -> None:
    for attempt in range(5):
        kill_while_writing(_KILLED_RECORDER, tmp_path, attempt)
        goldens = sorted(tmp_path.glob("*.safetensors"))
        assert len(goldens) == 3
        for path in goldens:
            with read_golden(path) as golden:
                assert np.unique(golden.leaf("x").data).tolist() in ([1.0], [2.0]), path
        # At most the killed write's temporary file is left, and the next write removes it.
        assert len(_temporaries(tmp_path)) <= 1
        for path in goldens:
            _record(path, (torch.full((1 << 21,), 1.0), "x"), (-1.0, "round"))
        assert _temporaries(tmp_path) == []


_keys = st.text(st.sampled_from("abcxyz_."), min_size=1, max_size=6)
_specs = st.tuples(
    st.sampled_from(sorted(DTYPES)),
    st.lists(st.integers(0, 5), max_size=2).map(tuple),
    st.integers(0, 3),  # 0: unchanged from the old file, else a seed for new content
)


def _leaf(dtype: str, shape: tuple[int, ...], seed: int) -> Leaf:
    info = DTYPES[dtype]
    count = int(np.prod(shape)) if shape else 1
    raw = np.random.default_rng(seed).bytes(count * info.itemsize)
    return Leaf(dtype, shape, np.frombuffer(raw, dtype=info.storage).reshape(shape).copy())


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    old=st.dictionaries(_keys, _specs, max_size=4),
    new=st.dictionaries(_keys, _specs, max_size=4),
    threshold=st.sampled_from([8, 16, 64]),
)
def test_recording_round_trips_and_is_history_independent(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    old: dict,
    new: dict,
    threshold: int,
) -> None:
    # A low threshold streams small leaves, so every layout path runs on tiny data.
    monkeypatch.setattr(writing, "STREAM_BYTES", threshold)
    folder = tmp_path_factory.mktemp("rec")
    metadata = {"k": "v"}

    def leaves(specs: dict, base: dict[str, Leaf]) -> dict[str, Leaf]:
        out = {}
        for key, (dtype, shape, seed) in specs.items():
            same = seed == 0 and key in base
            out[key] = base[key] if same else _leaf(dtype, shape, seed + 7)
        return out

    before = leaves(old, {})
    after = leaves(new, before)

    def record(path: Path, values: dict[str, Leaf]) -> None:
        writer = GoldenWriter(path)
        for key, leaf in values.items():
            writer.keep(key, leaf)
        writer.commit(metadata)
        writer.discard()

    with_history, fresh = folder / "h.safetensors", folder / "f.safetensors"
    record(with_history, before)
    record(with_history, after)
    record(fresh, after)
    assert with_history.read_bytes() == fresh.read_bytes()
    with read_golden(fresh) as stored:
        assert sorted(stored.entries) == sorted(after)
        for key, leaf in after.items():
            assert bits_equal(stored.leaf(key), leaf), key
    assert _temporaries(folder) == []
