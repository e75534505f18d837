"""NumPy's global random state, captured and put back in microseconds.

NumPy's ``get_state`` / ``set_state`` copy the 624 words of the global Mersenne Twister one
element at a time at Python level, about 50 us each, and every RNG is captured or restored
at each outermost forward call of the seed probe, around each helper check and around each
marked test.
Here the twister's state is read and written as the bytes of its C struct (``key[624]``,
then ``int pos``) at the bit generator's documented ``ctypes.state_address``; the layout is
verified against ``get_state`` once per bit generator, and anything else (another bit
generator, a NumPy without ``np.random.get_bit_generator``, a layout that does not match)
takes NumPy's own API.

The struct does not hold the legacy Gaussian cache of ``RandomState`` (``has_gauss``,
``gauss``), which only the slow API reads or writes. It is known to be empty when the
struct still holds what a recent :func:`seed_numpy` left there: seeding empties the cache,
and any draw that fills it moves the twister on. Only a state put there with
``np.random.set_state`` and a hand-made Gaussian cache escapes this, which no RNG user does.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any

import numpy as np

__all__ = ["NumpyState", "capture_numpy", "restore_numpy", "seed_numpy"]

#: The twister's struct bytes (``key`` then ``pos``), ``has_gauss`` and ``gauss``.
NumpyState = tuple[bytes, int, float]

_WORDS = 624
_STATE_BYTES = _WORDS * 4 + struct.calcsize("i")
# The struct right after seeding, for the last few seeds, least recent first: the Gaussian
# cache is empty there, and a seed always gives the same struct.
_seeded: dict[int, bytes] = {}
_SEEDED_KEPT = 8
# The bit generator last looked at, and its struct's address (None: use NumPy's API).
_known: tuple[Any, int | None] = (None, None)


def _legacy_state() -> tuple[np.ndarray[Any, Any], int, int, float]:
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return np.asarray(key), int(pos), int(has_gauss), float(gauss)


def _pack(key: np.ndarray[Any, Any], pos: int) -> bytes:
    return key.astype(np.uint32).tobytes() + struct.pack("i", pos)


def _address() -> int | None:
    """Where the global twister's struct is, when it can be read directly."""
    global _known
    get = getattr(np.random, "get_bit_generator", None)
    if get is None:
        return None
    generator = get()
    if generator is _known[0]:
        return _known[1]
    address: int | None = None
    if isinstance(generator, np.random.MT19937):
        candidate = int(generator.ctypes.state_address)
        key, pos, _, _ = _legacy_state()
        if ctypes.string_at(candidate, _STATE_BYTES) == _pack(key, pos):
            address = candidate
    _known = (generator, address)
    return address


def seed_numpy(seed: int) -> None:
    """``np.random.seed(seed)``, remembering the state it gives for :func:`capture_numpy`."""
    np.random.seed(seed)
    if seed in _seeded:
        _seeded[seed] = _seeded.pop(seed)
        return
    address = _address()
    if address is None:
        return
    _seeded[seed] = ctypes.string_at(address, _STATE_BYTES)
    if len(_seeded) > _SEEDED_KEPT:
        del _seeded[next(iter(_seeded))]


def capture_numpy() -> NumpyState:
    """The global RNG's state; the same value for the same state, whichever way it was read."""
    address = _address()
    if address is not None:
        raw = ctypes.string_at(address, _STATE_BYTES)
        if raw in _seeded.values():
            return raw, 0, 0.0
        _, _, has_gauss, gauss = _legacy_state()
        return raw, has_gauss, gauss
    key, pos, has_gauss, gauss = _legacy_state()
    return _pack(key, pos), has_gauss, gauss


def restore_numpy(state: NumpyState) -> None:
    """Put the global RNG back to ``state``."""
    raw, has_gauss, gauss = state
    address = _address()
    if address is not None and not has_gauss:
        # Seeding is the one cheap way to empty the Gaussian cache; the struct is then
        # overwritten whole.
        np.random.seed(0)
        ctypes.memmove(address, raw, _STATE_BYTES)
        return
    key = np.frombuffer(raw, dtype=np.uint32, count=_WORDS)
    (pos,) = struct.unpack_from("i", raw, _WORDS * 4)
    np.random.set_state(("MT19937", key, pos, has_gauss, gauss))
