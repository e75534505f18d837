"""From pytest's node ids to golden files and back to commands a user can paste.

The path scheme itself (folders, name sanitising, never leaving the golden root) is
:mod:`pytest_determinism.golden.paths`; this module applies it to collected tests, names
tests the way the user's shell can reach them, and warns about golden files that only
letter case tells apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from pytest_determinism.errors import DeterminismWarning

__all__ = ["golden_file", "invocation_id", "warn_about_case_clashes"]


def golden_file(
    test_file: Path, nodeid: str, rootdir: Path, golden_dir: Path | None
) -> Path | None:
    """The golden file of the test ``nodeid`` in ``test_file``, or ``None`` when none can be
    placed inside the golden root."""
    from pytest_determinism.golden.paths import golden_path, name_from_nodeid

    try:
        return golden_path(
            test_file=test_file,
            test_name=name_from_nodeid(nodeid),
            rootdir=rootdir,
            golden_dir=golden_dir,
        )
    except ValueError:
        # Only a symlinked folder could lead outside the golden root; such a test gets no
        # golden (the fixture says why) and is left out of the unused-golden inventory.
        return None


def invocation_id(item: pytest.Item) -> str:
    """The node id relative to where pytest was started, so a printed command runs as is."""
    file_part, _, rest = item.nodeid.partition("::")
    relative = os.path.relpath(item.config.rootpath / file_part, item.config.invocation_params.dir)
    return f"{Path(relative).as_posix()}::{rest}" if rest else Path(relative).as_posix()


def warn_about_case_clashes(items: Mapping[str, pytest.Item], paths: Mapping[str, Path]) -> None:
    """Warn on each test (``items`` by node id) whose golden file (``paths`` by node id)
    differs only in letter case from another's."""
    from pytest_determinism.golden.paths import case_clashes

    for clash in case_clashes(paths):
        for nodeid in clash:
            others = ", ".join(other for other in clash if other != nodeid)
            items[nodeid].warn(
                DeterminismWarning(
                    f"the golden file of {nodeid} differs only in letter case from that of "
                    f"{others} ({paths[nodeid].name}): on macOS and Windows they are one "
                    "file and overwrite each other; rename one of the tests"
                )
            )
