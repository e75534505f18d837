"""``--write-test``: a starter test module for the audited model.

The test is marked ``deterministic`` with the audit's seed, builds the model through the
same callable (imported by module name, or from its file by path relative to the test),
makes the same inputs (the callable's own, or the expression they were inferred from),
runs the forward pass under ``torch.no_grad()`` and checks its whole output with
``golden_tensor``. For a model the audit found nothing in, it passes
``pytest --update-golden`` and then ``pytest --determinism``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pytest_determinism.audit.target import Target

__all__ = ["starter_source"]


def _import_lines(target: Target, test_path: Path) -> list[str]:
    if target.module is not None:
        return [f"from {target.module} import {target.name}"]
    assert target.path is not None
    resolved = target.path.resolve()
    try:
        relative = os.path.relpath(resolved, test_path.resolve().parent)
        where = f"Path(__file__).parent / {Path(relative).as_posix()!r}"
    except ValueError:  # another drive on Windows
        where = f"Path({str(resolved)!r})"
    return [
        f"_TARGET = {where}",
        "# The target imports its neighbours as a script run from its folder would.",
        "sys.path.insert(0, str(_TARGET.parent))",
        f"_SPEC = importlib.util.spec_from_file_location({'_audited_' + resolved.stem!r}, _TARGET)",
        "_MODULE = importlib.util.module_from_spec(_SPEC)",
        "_SPEC.loader.exec_module(_MODULE)",
        f"{target.name} = _MODULE.{target.name}",
    ]


def starter_source(target: Target, seed: int, test_path: Path) -> str:
    """The source of a starter test for ``target``, to be written at ``test_path``."""
    if target.inputs_code is None:
        build = [f"    model, inputs = {target.name}()"]
    else:
        build = [f"    model = {target.name}()", f"    inputs = {target.inputs_code}"]
    if isinstance(target.inputs, Mapping):
        call = "model(**inputs)"
    elif isinstance(target.inputs, tuple | list):
        call = "model(*inputs)"
    else:
        call = "model(inputs)"
    lines = [
        f'"""Starter test written by `python -m pytest_determinism audit {target.spec}`.',
        "",
        f"Record its golden with `pytest {test_path.as_posix()} --update-golden`, then check",
        f"it with `pytest {test_path.as_posix()} --determinism` (in CI).",
        '"""',
        "",
        *(
            []
            if target.module is not None
            else ["import importlib.util", "import sys", "from pathlib import Path", ""]
        ),
        "import pytest",
        "import torch",
        "",
        *_import_lines(target, test_path),
        "",
        "",
        f"@pytest.mark.deterministic(seed={seed})",
        f"def test_{target.name}_output(golden_tensor):",
        "    # Seeded before the body: the model and its inputs are the same at every run.",
        *build,
        "    with torch.no_grad():",
        f"        output = {call}",
        "    golden_tensor.check(output)",
        "",
    ]
    return "\n".join(lines)
