"""The cuBLAS workspace setting that deterministic cuBLAS kernels need.

cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` once, when CUDA starts, so the plugin sets it at
configure time for the whole session (only where the user left it unset) rather than per
test; a test's snapshot still records and restores the variable like any other state.
"""

from __future__ import annotations

import os

__all__ = ["CUBLAS_WORKSPACE_CONFIG", "DETERMINISTIC_WORKSPACE", "set_if_unset", "unset"]

#: The environment variable cuBLAS reads.
CUBLAS_WORKSPACE_CONFIG = "CUBLAS_WORKSPACE_CONFIG"

#: The value NVIDIA documents for reproducible results (``:16:8`` also works, slower).
DETERMINISTIC_WORKSPACE = ":4096:8"


def set_if_unset() -> bool:
    """Set the variable to :data:`DETERMINISTIC_WORKSPACE` unless it is set; whether it was
    set here (so :func:`unset` may take it away again)."""
    if CUBLAS_WORKSPACE_CONFIG in os.environ:
        return False
    os.environ[CUBLAS_WORKSPACE_CONFIG] = DETERMINISTIC_WORKSPACE
    return True


def unset() -> None:
    """Remove the variable (after :func:`set_if_unset` returned ``True``)."""
    os.environ.pop(CUBLAS_WORKSPACE_CONFIG, None)
