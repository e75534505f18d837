"""Regenerate the captured output of the cookbook page "My golden broke after an upgrade".

Real runs of examples/test_golden_upgrade.py, copied to a temporary folder, recorded with
``--update-golden`` and then changed the way an upgrade changes a model: a config default
(every LayerNorm's epsilon), a checkpoint (one layer's weights), the inputs (a tokenizer).
Writes docs/snippets/golden-trace-*.txt and the plot docs/images/golden-trace-origin.png.
Run from the repository root:

    .venv/bin/python docs/snippets/capture_golden_trace.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from capture import PYTEST, PYTHON, REPO, e_lines, run, write

DEMO = Path("/tmp/pd-golden-trace")
EXAMPLE = REPO / "examples" / "test_golden_upgrade.py"
GOLDEN = "tests/__golden__/test_golden_upgrade/test_hidden_states.safetensors"

CHANGES = {
    # transformers changed a config default: every LayerNorm's epsilon.
    "upgrade": (
        "        max_position_embeddings=32,\n",
        "        max_position_embeddings=32,\n        layer_norm_eps=1e-5,\n",
    ),
    # A new checkpoint: one attention projection of layer 2 fine-tuned.
    "checkpoint": (
        "    return BertModel(config).eval()\n",
        "    model = BertModel(config).eval()\n"
        "    with torch.no_grad():\n"
        "        model.encoder.layer[2].attention.self.value.weight.mul_(1.01)\n"
        "    return model\n",
    ),
    # The tokenizer now adds a token at the start.
    "inputs": (
        "    input_ids = torch.randint(0, 100, (2, 12))\n",
        "    input_ids = torch.randint(0, 100, (2, 12))\n    input_ids[:, 0] = 1\n",
    ),
}


def golden_section(output: str) -> str:
    """The plugin's golden-trace section of a failed test's report."""
    text = output.split("pytest-determinism: golden trace", 1)[1]
    lines = text.splitlines()[1:]
    end = next(i for i, line in enumerate(lines) if not line or line.startswith(("=", "golden:")))
    return "\n".join(lines[:end])


def changed(name: str) -> None:
    old, new = CHANGES[name]
    source = EXAMPLE.read_text()
    assert old in source, name
    (DEMO / "tests" / EXAMPLE.name).write_text(source.replace(old, new, 1))


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    (DEMO / "tests").mkdir(parents=True)
    (DEMO / "pytest.ini").write_text("[pytest]\n")
    shutil.copy(EXAMPLE, DEMO / "tests" / EXAMPLE.name)
    run([*PYTEST, "tests", "--update-golden"], DEMO)
    shutil.copy(DEMO / GOLDEN, DEMO / "before.safetensors")
    out = run([*PYTHON, "-m", "pytest_determinism", "show", "before.safetensors"], DEMO)
    write("golden-trace-show", next(line for line in out.splitlines() if "trace:" in line))

    changed("upgrade")
    out = run([*PYTEST, "tests"], DEMO)
    write("golden-trace-upgrade-mismatch", e_lines(out))
    write("golden-trace-upgrade", golden_section(out))
    for name in ("checkpoint", "inputs"):
        changed(name)
        write(f"golden-trace-{name}", golden_section(run([*PYTEST, "tests"], DEMO)))

    # The upgrade accepted, then the two goldens compared and drawn.
    changed("upgrade")
    run([*PYTEST, "tests", "--update-golden"], DEMO)
    picture = REPO / "docs" / "images" / "golden-trace-origin.png"
    picture.parent.mkdir(exist_ok=True)
    out = run(
        [
            *PYTHON,
            "-m",
            "pytest_determinism",
            "diff",
            "before.safetensors",
            GOLDEN,
            "--plot",
            "origin.png",
        ],
        DEMO,
    )
    shutil.copy(DEMO / "origin.png", picture)
    write(
        "golden-trace-diff",
        "$ python -m pytest_determinism diff before.safetensors \\\n"
        f"    {GOLDEN} --plot origin.png\n" + out,
    )


if __name__ == "__main__":
    main()
