"""pytest-determinism: catch nondeterminism and numerical regressions in ML model tests.

Importing this package is cheap and has no side effects: torch and hypothesis are imported
only when a test needs them, and the marker alias is built on first use, so a package that
imports this one (hypothesis loads our entry point whenever it is imported) touches no
marker while the plugin is disabled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_determinism.errors import (
    DeterminismWarning,
    GoldenFileError,
    NondeterminismError,
    StochasticModuleError,
)

__version__ = "0.1.0"

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
    import pytest

    from pytest_determinism.helpers import assert_batch_invariant, assert_deterministic

    #: ``@deterministic`` / ``@deterministic(seed=7, eval_mode="strict")``: the marker.
    deterministic: pytest.MarkDecorator


def __getattr__(name: str) -> Any:
    if name == "deterministic":
        # Evaluating pytest.mark.deterministic checks it against the registered markers,
        # so it happens only when a test module asks for the alias.
        import pytest

        return pytest.mark.deterministic
    # The helpers pull in torch; resolve them on first use only.
    if name in ("assert_deterministic", "assert_batch_invariant"):
        from pytest_determinism import helpers

        return getattr(helpers, name)
    raise AttributeError(f"module 'pytest_determinism' has no attribute {name!r}")
