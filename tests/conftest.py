"""Shared helpers for the project's own tests."""

from __future__ import annotations

import hypothesis  # noqa: F401
import numpy  # noqa: F401
import pytest
import torch
import torch._inductor.config  # noqa: F401

# The imports above are not unused: in-process pytester runs drop every module first
# imported inside the inner session, and loading torch's or NumPy's C extension a second
# time in one process crashes it. Importing them here keeps them loaded for good.
# (torch.use_deterministic_algorithms imports inductor's config, so that one too.)

# Inner pytester sessions don't read this project's ini; keep their test order fixed
# unless a test asks for pytest-randomly on purpose.
NO_RANDOMLY = ("-p", "no:randomly")


@pytest.fixture
def run(pytester: pytest.Pytester):
    """Run pytest in-process on the pytester folder, without pytest-randomly."""

    def _run(*args: str) -> pytest.RunResult:
        return pytester.runpytest(*NO_RANDOMLY, *args)

    return _run
