"""pytest-determinism: catch nondeterminism and numerical regressions in ML model tests.

Importing this package is cheap: torch and hypothesis are imported only when a test needs
them, so the helpers below are resolved lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pytest_determinism.errors import (
    DeterminismWarning,
    GoldenFileError,
    NondeterminismError,
    StochasticModuleError,
)

__version__ = "0.1.0"

#: ``@deterministic`` / ``@deterministic(seed=7, eval_mode="strict")``: the marker, importable.
deterministic = pytest.mark.deterministic

__all__ = [
    "DeterminismWarning",
    "GoldenFileError",
    "NondeterminismError",
    "StochasticModuleError",
    "__version__",
    "assert_batch_invariant",
    "assert_deterministic",
    "deterministic",
]

if TYPE_CHECKING:
    from pytest_determinism.helpers import assert_batch_invariant, assert_deterministic


def __getattr__(name: str) -> Any:
    # The helpers pull in torch; resolve them on first use only.
    if name in ("assert_deterministic", "assert_batch_invariant"):
        from pytest_determinism import helpers

        return getattr(helpers, name)
    raise AttributeError(f"module 'pytest_determinism' has no attribute {name!r}")
