"""Regenerate the audit's captured output (docs/snippets/audit-*.txt) for docs/audit.md.

Writes a small file of tiny Hugging Face models built from config objects to a temporary
folder, runs ``python -m pytest_determinism audit`` on three of them as a user would, and
times the audit in one process, best of 5 (the command's own time, without importing
torch and transformers) on a tiny BERT, Llama and ConvNeXt. Run from the repository root:

    .venv/bin/python docs/snippets/capture_audit.py
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "docs" / "snippets"
DEMO = Path("/tmp/pd-audit")

MODELS = '''"""Tiny models for the audit's documentation."""

import torch
import transformers


def convnext():
    config = transformers.ConvNextConfig(
        num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32,
        drop_path_rate=0.1,
    )
    return transformers.ConvNextModel(config)  # no .eval(): built in training mode


def vit_mae():
    config = transformers.ViTMAEConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8, decoder_hidden_size=32, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=64,
    )
    return transformers.ViTMAEModel(config).eval()


def llama():
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).eval()


def bert():
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    return transformers.BertModel(config).eval()
'''


def write(name: str, text: str) -> None:
    text = text.rstrip("\n") + "\n"
    (OUT / f"{name}.txt").write_text(text)
    print(f"--- {name}.txt\n{text}")


def audit(target: str, *extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "pytest_determinism", "audit", target, *extra],
        cwd=DEMO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return f"$ python -m pytest_determinism audit {target} {' '.join(extra)}".rstrip() + (
        f"\n{done.stdout}{done.stderr}$ echo $?\n{done.returncode}"
    )


def timings() -> str:
    import warnings

    warnings.simplefilter("ignore")
    sys.path.insert(0, str(REPO))
    from pytest_determinism.cli import main

    lines = []
    os.chdir(DEMO)
    main(["audit", "models.py:llama"], out=io.StringIO())  # first call: lazy imports
    for name in ("bert", "llama", "convnext"):
        best = min(_timed(main, name) for _ in range(5))
        lines.append(f"{name:<9} {best:.2f} s   (in one process, after imports)")
    start = time.perf_counter()
    audit("models.py:llama")
    lines.append(f"{'llama':<9} {time.perf_counter() - start:.2f} s   (a fresh python -m process)")
    return "\n".join(lines)


def _timed(main: object, name: str) -> float:
    start = time.perf_counter()
    status = main(["audit", f"models.py:{name}"], out=io.StringIO())  # type: ignore[operator]
    elapsed = time.perf_counter() - start
    assert status in (0, 1), f"audit of {name} exited {status}"
    return elapsed


if __name__ == "__main__":
    DEMO.mkdir(exist_ok=True)
    (DEMO / "models.py").write_text(MODELS)
    for stale in DEMO.glob("test_*.py"):
        stale.unlink()
    write("audit-convnext", audit("models.py:convnext"))
    write("audit-vit-mae", audit("models.py:vit_mae"))
    write("audit-llama", audit("models.py:llama", "--write-test", "test_llama.py"))
    write("audit-models", MODELS)
    write("audit-starter", (DEMO / "test_llama.py").read_text())
    write("audit-timings", timings())
