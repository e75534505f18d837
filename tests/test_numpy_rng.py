"""NumPy's global RNG captured through its struct: the same value and the same draws as
NumPy's own get_state / set_state, whichever path each capture took."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_determinism.state import numpy_rng
from pytest_determinism.state.numpy_rng import capture_numpy, restore_numpy, seed_numpy

# What a test body might do to the global RNG between two captures. Odd counts of normal
# draws leave a value in the legacy Gaussian cache, which the struct does not hold.
DRAWS = st.lists(
    st.sampled_from(["uniform", "normal", "normal1", "integers", "seed", "slow_seed"]),
    max_size=6,
)


@pytest.fixture(autouse=True)
def _global_rng_put_back() -> Iterator[None]:
    saved = np.random.get_state()
    yield
    np.random.set_state(saved)


def _draw(kind: str) -> None:
    if kind == "uniform":
        np.random.rand(3)
    elif kind == "normal":
        np.random.randn(3)
    elif kind == "normal1":
        np.random.randn()
    elif kind == "integers":
        np.random.randint(0, 10, size=5)
    elif kind == "seed":
        seed_numpy(5)
    else:
        np.random.seed(6)


def _numpy_state() -> tuple[bytes, int, int, float]:
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return bytes(np.asarray(key).tobytes()), int(pos), int(has_gauss), float(gauss)


def _next_draws() -> list[float]:
    return [*np.random.randn(3), *np.random.rand(2)]


@given(before=DRAWS, after=DRAWS)
def test_a_restored_state_draws_what_the_captured_one_drew(
    before: list[str], after: list[str]
) -> None:
    seed_numpy(3)
    for kind in before:
        _draw(kind)
    reference = _numpy_state()
    state = capture_numpy()
    expected = _next_draws()
    for kind in after:
        _draw(kind)
    restore_numpy(state)
    assert _numpy_state() == reference
    assert _next_draws() == expected


@given(before=DRAWS)
def test_a_state_captures_the_same_whether_read_fast_or_slow(before: list[str]) -> None:
    seed_numpy(3)
    for kind in before:
        _draw(kind)
    fast = capture_numpy()
    with pytest.MonkeyPatch.context() as patch:
        # A NumPy without get_bit_generator takes NumPy's own API throughout.
        patch.delattr(np.random, "get_bit_generator")
        patch.setattr(numpy_rng, "_known", (None, None))
        slow = capture_numpy()
        restore_numpy(fast)
        assert _numpy_state()[2:] == (fast[1], fast[2])
    assert fast == slow


def test_the_gaussian_cache_survives_a_round_trip() -> None:
    seed_numpy(4)
    np.random.randn()  # draws a pair, keeps the second
    state = capture_numpy()
    assert state[1] == 1
    cached = np.random.randn()
    seed_numpy(4)
    restore_numpy(state)
    assert np.random.randn() == cached


def test_a_fresh_seeding_is_read_without_numpys_slow_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed_numpy(8)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("get_state called")

    monkeypatch.setattr(np.random, "get_state", refuse)
    assert capture_numpy()[1:] == (0, 0.0)


def test_an_unrecognised_layout_falls_back_to_numpys_api(monkeypatch: pytest.MonkeyPatch) -> None:
    seed_numpy(9)
    np.random.rand(2)
    expected = capture_numpy()
    monkeypatch.setattr(numpy_rng, "_known", (None, None))
    # The struct seems to hold something else: the layout check fails.
    monkeypatch.setattr(numpy_rng.ctypes, "string_at", lambda address, size: b"\0" * size)
    assert numpy_rng._address() is None
    assert capture_numpy() == expected
    np.random.rand(4)
    restore_numpy(expected)
    monkeypatch.undo()
    numpy_rng._known = (None, None)
    assert capture_numpy() == expected
