"""Seeding, capturing and restoring every random number generator the plugin controls.

Covered: Python's ``random``, NumPy's global ``RandomState``, torch's CPU generator, the
generator of every *initialised* CUDA device and, on macOS, MPS. torch is only touched when
it is already imported: seeding must never be the reason ``import torch`` (2-3 s) happens,
and must never initialise CUDA just to seed or read it.

Seeding gives exactly what ``random.seed(s); numpy.random.seed(s); torch.manual_seed(s)``
gives, so a user can reproduce a test outside pytest.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from typing import Any

from pytest_determinism.state.numpy_rng import (
    NumpyState,
    capture_numpy,
    restore_numpy,
    seed_numpy,
)

__all__ = ["RngState", "capture_rng", "restore_rng", "seed_everything", "torch_if_imported"]


def torch_if_imported() -> Any | None:
    """Return the ``torch`` module when it has been imported by someone else, else ``None``."""
    return sys.modules.get("torch")


def _cuda_initialised(torch: Any) -> bool:
    cuda = getattr(torch, "cuda", None)
    return bool(cuda is not None and cuda.is_initialized())


def _mps_in_use(torch: Any) -> bool:
    # Only macOS builds have an MPS device; asking elsewhere is wasted time.
    if sys.platform != "darwin":
        return False
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


@dataclass(frozen=True)
class RngState:
    """A comparable snapshot of every controlled RNG (``None`` where one was not in use)."""

    python: tuple[Any, ...]
    numpy: NumpyState
    torch_cpu: bytes | None = None
    cuda: tuple[bytes, ...] | None = None
    mps: bytes | None = None


def _tensor_bytes(tensor: Any) -> bytes:
    return bytes(tensor.numpy().tobytes())


def _bytes_tensor(torch: Any, data: bytes) -> Any:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def capture_rng() -> RngState:
    """Snapshot every controlled RNG without initialising anything new."""
    numpy_state = capture_numpy()
    torch = torch_if_imported()
    if torch is None:
        return RngState(python=random.getstate(), numpy=numpy_state)
    cuda = None
    if _cuda_initialised(torch):
        cuda = tuple(_tensor_bytes(s) for s in torch.cuda.get_rng_state_all())
    mps = _tensor_bytes(torch.mps.get_rng_state()) if _mps_in_use(torch) else None
    return RngState(
        python=random.getstate(),
        numpy=numpy_state,
        torch_cpu=_tensor_bytes(torch.get_rng_state()),
        cuda=cuda,
        mps=mps,
    )


def restore_rng(state: RngState) -> None:
    """Put every RNG back to ``state`` (a generator that appeared since is left alone)."""
    random.setstate(state.python)
    restore_numpy(state.numpy)
    torch = torch_if_imported()
    if torch is None or state.torch_cpu is None:
        return
    torch.set_rng_state(_bytes_tensor(torch, state.torch_cpu))
    if state.cuda is not None and _cuda_initialised(torch):
        torch.cuda.set_rng_state_all([_bytes_tensor(torch, s) for s in state.cuda])
    if state.mps is not None:
        torch.mps.set_rng_state(_bytes_tensor(torch, state.mps))


def seed_everything(seed: int) -> None:
    """Seed every controlled RNG with ``seed``.

    ``torch.default_generator.manual_seed`` gives the same state as ``torch.manual_seed`` at a
    fraction of the cost (the latter records a stack trace for lazy CUDA seeding on every
    call, about 1 ms at pytest's stack depth).
    """
    random.seed(seed)
    seed_numpy(seed)
    torch = torch_if_imported()
    if torch is None:
        return
    torch.default_generator.manual_seed(seed)
    if _cuda_initialised(torch):
        torch.cuda.manual_seed_all(seed)
    if _mps_in_use(torch):
        torch.mps.manual_seed(seed)
