"""Regenerate the captured terminal output the docs include (docs/snippets/*.txt).

Every snippet is the real output of a real run: of the examples under examples/, or of a
small demo project written to a temporary folder below. Run from the repository root:

    .venv/bin/python docs/snippets/capture.py

Reports quote numbers from real runs, so they change when torch, the CPU or the plugin's
wording changes; rerun this script and review the diff.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "docs" / "snippets"
DEMO = Path("/tmp/pd-demo")
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider"]
PYTHON = [sys.executable]


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    full_env.update({"COLUMNS": "100", **(env or {})})
    done = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, check=False)
    return done.stdout + done.stderr


def write(name: str, text: str) -> None:
    text = text.rstrip("\n") + "\n"
    (OUT / f"{name}.txt").write_text(text)
    print(f"--- {name}.txt\n{text}")


def failure(output: str) -> str:
    """The failing line and the E lines of the first failure, as pytest printed them."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(">"))
    end = start + 1
    # Python 3.11+ may underline the failing expression on the next line.
    while end < len(lines) and lines[end].strip(" ^") == "":
        end += 1
    while end < len(lines) and (lines[end].startswith(("E ", "E\t")) or lines[end] == "E"):
        end += 1
    # The location line pytest prints after the E block.
    tail = [lines[end + 1]] if end + 1 < len(lines) and ": " in lines[end + 1] else []
    return "\n".join([*lines[start:end], "", *tail])


def e_lines(output: str) -> str:
    """Only the E lines of the first failure (the exception message)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("E "))
    end = start
    while end < len(lines) and lines[end].startswith("E "):
        end += 1
    return "\n".join(lines[start:end])


def section(output: str, begin: str, end: str) -> str:
    text = output.split(begin, 1)[1]
    return begin + text.split(end, 1)[0]


def summary(output: str) -> str:
    """The plugin's summary lines and pytest's final line."""
    keep = [
        line
        for line in output.splitlines()
        if (
            line.startswith(("golden:", "determinism:", "  unused", "  deleted", "  nondet", "  ("))
            and "CUBLAS" not in line
        )
        or re.match(r"=+ .*(passed|failed).* =+$", line)
    ]
    return "\n".join(keep)


def demo_file(path: str, source: str) -> None:
    target = DEMO / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(textwrap.dedent(source).lstrip())


def examples() -> None:
    ex = REPO / "examples"
    out = run([*PYTEST, "examples", "--determinism"], REPO, {"PYTHONHASHSEED": "0"})
    write("header", next(line for line in out.splitlines() if "CUBLAS" in line))
    write("summary", summary(out))

    out = run(
        [*PYTEST, "examples/test_mixed_precision_step.py"], REPO, {"EXAMPLE_AMP_DTYPE": "float16"}
    )
    write("dtype-drift-step", failure(out))
    out = run(
        [*PYTEST, "examples/test_mixed_precision_step.py", "--determinism"],
        REPO,
        {"EXAMPLE_AMP_DTYPE": "float16", "PYTHONHASHSEED": "0"},
    )
    write("precision-step", section(out, "golden mismatch in check 'grads'", "\n  to accept"))
    out = run(
        [*PYTEST, "examples/test_bf16_drift.py", "-k", "logits"],
        REPO,
        {"EXAMPLE_MODEL_DTYPE": "float32"},
    )
    write("dtype-drift", failure(out))
    out = run(
        [*PYTEST, "examples/test_bf16_drift.py", "-k", "float32_logits"],
        REPO,
        {"EXAMPLE_CAST_DTYPE": "bfloat16"},
    )
    write("precision-cast", failure(out))

    golden = "examples/__golden__/test_quickstart/test_logits.safetensors"
    write("cli-show", run([*PYTHON, "-m", "pytest_determinism", "show", golden], REPO))
    golden = "examples/__golden__/test_mixed_precision_step/test_training_step.safetensors"
    write("cli-show-step", run([*PYTHON, "-m", "pytest_determinism", "show", golden], REPO))
    assert ex.is_dir()


QUICKSTART = (REPO / "examples" / "test_quickstart.py").read_text()
QUICKSTART = "\n".join(line for line in QUICKSTART.splitlines() if "--8<--" not in line)


def demo() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    demo_file("pytest.ini", "[pytest]\n")
    demo_file("tests/test_classifier.py", QUICKSTART)

    # A golden that was never recorded.
    write("missing-golden", e_lines(run([*PYTEST, "tests"], DEMO)))

    # Record, then change the model (ReLU -> GELU) and run with another thread count.
    run([*PYTEST, "tests", "--update-golden"], DEMO)
    golden = DEMO / "tests/__golden__/test_classifier/test_logits.safetensors"
    shutil.copy(golden, DEMO / "before.safetensors")
    source = DEMO / "tests/test_classifier.py"
    source.write_text(source.read_text().replace("nn.ReLU()", "nn.GELU()"))
    out = run([*PYTEST, "tests"], DEMO, {"OMP_NUM_THREADS": "1"})
    write("golden-failure", failure(out))

    # The same change, as a diff of two golden files.
    run([*PYTEST, "tests", "--update-golden"], DEMO)
    after = str(golden.relative_to(DEMO))
    out = run([*PYTHON, "-m", "pytest_determinism", "diff", "before.safetensors", after], DEMO)
    status = run(
        [
            "bash",
            "-c",
            f"{sys.executable} -m pytest_determinism diff before.safetensors {after} "
            "> /dev/null; echo $?",
        ],
        DEMO,
    )
    write("cli-diff", out + f"$ echo $?\n{status.strip()}")

    # A renamed test leaves its golden unused.
    source.write_text(source.read_text().replace("def test_logits", "def test_class_logits"))
    run([*PYTEST, "tests", "-k", "class_logits", "--update-golden"], DEMO)
    write("unused", summary(run([*PYTEST, "tests", "-v"], DEMO)))
    write("unused-deleted", summary(run([*PYTEST, "tests", "--update-golden"], DEMO)))

    # Train mode: the warning, strict mode, and the CI mode on a test without the helper.
    sys.path.insert(0, str(REPO / "examples"))
    demo_file(
        "tests/test_inference.py",
        """
        import torch

        from pytest_determinism import deterministic
        from test_train_mode import build_classifier, classify


        @deterministic
        def test_probs(golden_tensor):
            model = build_classifier()  # still in training mode
            golden_tensor.check(classify(model, torch.randn(8, 3, 32, 32)), name="probs")


        @deterministic(eval_mode="strict")
        def test_probs_strict(golden_tensor):
            model = build_classifier()
            golden_tensor.check(classify(model, torch.randn(8, 3, 32, 32)), name="probs")


        @deterministic(eval_mode=False, stochastic=False)
        def test_probs_in_ci(golden_tensor):
            model = build_classifier()
            golden_tensor.check(classify(model, torch.randn(8, 3, 32, 32)), name="probs")
        """,
    )
    # The checkout being documented first, so a worktree's plugin is the one that runs.
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "examples")])}
    run([*PYTEST, "tests/test_inference.py", "--update-golden"], DEMO, env)
    out = run([*PYTEST, "tests/test_inference.py::test_probs"], DEMO, env)
    write("train-mode-warning", section(out, "tests/test_inference.py::test_probs", "\n\n"))
    out = run([*PYTEST, "tests/test_inference.py::test_probs_strict"], DEMO, env)
    strict = out.split(" test_probs_strict _", 1)[1].split("\n", 1)[1].split("\n=====", 1)[0]
    write("train-mode-strict", strict.strip())
    out = run([*PYTEST, "tests/test_inference.py::test_probs_in_ci", "--determinism"], DEMO, env)
    report = out.split(" test_probs_in_ci _", 1)[1].split("\n", 1)[1].split("\n=====", 1)[0]
    write("train-mode-ci", report + "\n...\n" + summary(out))
    run(
        [
            *PYTEST,
            "tests/test_inference.py::test_probs_in_ci",
            "--determinism",
            "--determinism-report",
            "report.json",
        ],
        DEMO,
        env,
    )
    entry = json.loads((DEMO / "report.json").read_text())["tests"][0]
    write("report-entry", json.dumps(entry, indent=2))

    # The helpers' reports, printed by the tests that catch them.
    demo_file(
        "tests/test_reports.py",
        """
        import numpy as np
        import pytest
        import torch

        import test_batch_padding as bp
        import test_train_mode as tm
        import test_unseeded_rngs as ur
        from pytest_determinism import (
            NondeterminismError,
            assert_batch_invariant,
            assert_deterministic,
            deterministic,
        )


        @deterministic(eval_mode=False)
        def test_train():
            model = tm.build_classifier()
            images = torch.randn(8, 3, 32, 32)
            with pytest.raises(NondeterminismError) as report:
                assert_deterministic(tm.classify, model, images)
            print("=====train\\n" + str(report.value) + "\\n=====")


        @deterministic
        def test_unseeded():
            model = ur.TinyDetector().eval()
            image = torch.rand(1, 3, 32, 32)
            with pytest.raises(NondeterminismError) as report:
                assert_deterministic(
                    lambda image: ur.detect(model, image, np.random.default_rng()), image
                )
            print("=====unseeded\\n" + str(report.value) + "\\n=====")


        @deterministic(threads=1)
        def test_batch():
            model = bp.tiny_llama()
            batch = bp.left_padded(bp.PROMPTS)

            def no_mask(input_ids, attention_mask, position_ids):
                return model(input_ids=input_ids).logits

            def with_mask(input_ids, attention_mask, position_ids):
                return model(
                    input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
                ).logits

            with pytest.raises(AssertionError) as report:
                assert_batch_invariant(no_mask, batch, exact=False)
            print("=====batch\\n" + str(report.value) + "\\n=====")
            with pytest.raises(AssertionError) as report:
                assert_batch_invariant(with_mask, batch)
            print("=====bitwise\\n" + str(report.value) + "\\n=====")
        """,
    )
    out = run([*PYTEST, "tests/test_reports.py", "-s", "-q"], DEMO, env)
    for name, target in [
        ("train", "train-mode-report"),
        ("unseeded", "unseeded-report"),
        ("batch", "batch-report"),
        ("bitwise", "batch-bitwise"),
    ]:
        write(target, out.split(f"====={name}\n", 1)[1].split("\n=====", 1)[0])


THREADS_DEMO = """
import pytest
import torch

@pytest.mark.deterministic
def test_total(golden_tensor):
    x = torch.randn(8_000_000)
    golden_tensor.check(x.sum(), name="total")
"""


def threads() -> None:
    # Recorded on a machine with two threads, checked on one with one: a cancelling sum.
    shutil.rmtree(DEMO, ignore_errors=True)
    demo_file("pytest.ini", "[pytest]\n")
    demo_file("tests/test_sum.py", THREADS_DEMO)
    run([*PYTEST, "tests", "--update-golden", "--determinism-threads", "2"], DEMO)
    out = run([*PYTEST, "tests", "--determinism-threads", "1"], DEMO)
    write("threads-rounding", e_lines(out))


def llm_output() -> None:
    """A changed attention weight, caught in the whole output of the LLM example."""
    folder = DEMO / "llm"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "pytest.ini").write_text("[pytest]\n")
    source = (REPO / "examples" / "test_llm_output.py").read_text()
    (folder / "test_llm_output.py").write_text(source)
    run([*PYTEST, "test_llm_output.py", "--update-golden"], folder)
    weight = "model.model.layers[1].self_attn.k_proj.weight"
    changed = f"    model = tiny_llama()\n    {weight}[0, 0] += 0.05\n"
    (folder / "test_llm_output.py").write_text(
        source.replace("    model = tiny_llama()\n", changed, 1)
    )
    out = run([*PYTEST, "test_llm_output.py", "-k", "forward"], folder)
    write("llm-cache-mismatch", failure(out))


if __name__ == "__main__":
    examples()
    demo()
    threads()
    llm_output()
