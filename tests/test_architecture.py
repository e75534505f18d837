"""The package's layers: pytest glue on top, pytest-free engines below.

golden/ (golden files and comparing values) stands on its own; state/ (global state) uses
golden's tolerance type for the table helpers read; nondeterminism/ (running a callable
several times and explaining a difference) builds on both. None of them imports pytest or
the glue above them, and loading the plugin imports no heavy library. audit/ (the
``audit`` command) composes the three engines; it is a command, not pytest glue, so it
imports neither pytest nor the glue either, and the plugin never imports it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pytest_determinism"

# What each engine layer may import from the package (besides the leaf module of errors).
ALLOWED = {
    "golden": {"golden"},
    "state": {"state", "golden"},
    "nondeterminism": {"nondeterminism", "golden", "state"},
    "audit": {"audit", "nondeterminism", "golden", "state"},
}


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _engine_modules() -> list[Path]:
    return sorted(path for layer in ALLOWED for path in (PACKAGE / layer).glob("*.py"))


@pytest.mark.parametrize("path", _engine_modules(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_engines_import_neither_pytest_nor_the_glue(path: Path) -> None:
    layer = path.parent.name
    imports = _imports(path)
    assert not {name for name in imports if name.split(".")[0] in ("pytest", "_pytest")}, (
        f"{layer}/{path.name} imports pytest"
    )
    ours = {name.split(".")[1] for name in imports if name.startswith("pytest_determinism.")}
    # ``from pytest_determinism import __version__`` names the package itself.
    wrong = ours - ALLOWED[layer] - {"errors", "__version__"}
    assert not wrong, f"{layer}/{path.name} imports pytest_determinism.{sorted(wrong)}"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_subpackage_init_files_import_nothing(layer: str) -> None:
    # A re-export there would load NumPy (and more) whenever the plugin touches the layer.
    assert _imports(PACKAGE / layer / "__init__.py") == set()


def test_every_module_of_the_package_is_in_a_known_place() -> None:
    folders = {
        path.parent.name for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts
    }
    assert folders <= {"pytest_determinism", *ALLOWED}


def test_loading_the_plugin_imports_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from importlib.metadata import entry_points\n"
        "[e.load() for e in entry_points(group='pytest11') if e.name == 'determinism']\n"
        "import pytest_determinism, pytest_determinism.hypothesis_hook\n"
        "heavy = ('torch', 'numpy', 'hypothesis', 'pytest_determinism.audit')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
