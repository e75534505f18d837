"""Warning and error types users may filter, catch or assert on."""

from __future__ import annotations

__all__ = [
    "DeterminismWarning",
    "GoldenFileError",
    "NondeterminismError",
    "StochasticModuleError",
]


class DeterminismWarning(UserWarning):
    """Something that makes results depend on chance or on the machine: a module left in
    training mode with stochastic layers, ``PYTHONHASHSEED`` unset under ``--determinism``,
    golden files that differ only in letter case, and the like."""


class NondeterminismError(AssertionError):
    """Two runs that should have been identical were not; the message is the full report."""


class GoldenFileError(AssertionError):
    """A golden file is missing, unreadable or not a valid safetensors file."""


class StochasticModuleError(AssertionError):
    """Under ``eval_mode="strict"``: a module was called in training mode with stochastic
    layers active."""
