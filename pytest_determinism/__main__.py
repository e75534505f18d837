"""``python -m pytest_determinism``: see :mod:`pytest_determinism.cli`."""

from __future__ import annotations

from pytest_determinism.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
