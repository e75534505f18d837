"""The object the ``determinism`` fixture gives a test."""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    from pytest_determinism.state.evalmode import EvalModeGuard

__all__ = ["Determinism", "WorkerInitFn"]

M = TypeVar("M")


@dataclass(frozen=True)
class WorkerInitFn:
    """A ``worker_init_fn`` for ``torch.utils.data.DataLoader`` seeding each worker.

    Worker ``k`` gets ``random``, NumPy's global RNG and torch's RNG seeded with
    ``seed + k``: derived from the test's seed alone, not from the parent process's RNG,
    so the data is the same whatever the parent drew before. A plain dataclass so it
    pickles for the ``spawn`` start method.
    """

    seed: int

    def __call__(self, worker_id: int) -> None:
        """Seed the worker ``worker_id``."""
        worker_seed = (self.seed + worker_id) % 2**32
        random.seed(worker_seed)
        np.random.seed(worker_seed)
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.manual_seed(worker_seed)


class Determinism:
    """What a test gets from the ``determinism`` fixture: its seed and seeded tools."""

    def __init__(self, seed: int, guard: EvalModeGuard) -> None:
        self._seed = seed
        self._guard = guard
        self._worker_init_fn = WorkerInitFn(seed)

    @property
    def seed(self) -> int:
        """The seed in force for this test."""
        return self._seed

    def generator(self, device: Any = "cpu") -> Any:
        """A new ``torch.Generator`` on ``device`` seeded with the test's seed."""
        import torch

        gen = torch.Generator(device=device)
        gen.manual_seed(self._seed)
        return gen

    def rng(self) -> np.random.Generator:
        """A new ``numpy.random.Generator`` seeded with the test's seed."""
        return np.random.default_rng(self._seed)

    @property
    def worker_init_fn(self) -> WorkerInitFn:
        """Pass as ``DataLoader(..., worker_init_fn=determinism.worker_init_fn)``."""
        return self._worker_init_fn

    def eval(self, module: M) -> M:
        """Put ``module`` in eval mode for this test only, and return it."""
        self._guard.switch_to_eval(module)
        return module

    def __repr__(self) -> str:
        return f"<Determinism seed={self._seed}>"
