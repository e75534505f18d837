"""``python -m pytest_determinism audit TARGET``: one model, seven checks, before a test exists.

Targets are files written into ``tmp_path`` building tiny models from config objects. The
command runs in-process through ``cli.main``; stderr (bad input) through ``capsys``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pytest_determinism.cli import main
from pytest_determinism.state.snapshot import capture

transformers = pytest.importorskip("transformers")

MODELS = """
import numpy as np
import torch
import transformers


def llama():
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).eval()


def llama_padded():
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[1, -3:] = 0
    return llama(), {"input_ids": torch.randint(0, 100, (2, 8)), "attention_mask": mask}


def convnext_training():
    config = transformers.ConvNextConfig(
        num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32,
        drop_path_rate=0.5,
    )
    return transformers.ConvNextModel(config)


def vit_mae():
    config = transformers.ViTMAEConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8, decoder_hidden_size=32, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=64,
    )
    return transformers.ViTMAEModel(config).eval()


def t5():
    config = transformers.T5Config(
        vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
        decoder_start_token_id=0,
    )
    return transformers.T5Model(config).eval()


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def conv():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())


class Put(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        out = self.lin(x).flatten()
        out.put_(torch.tensor([0]), torch.tensor([1.0]))  # PUT LINE
        return out.reshape(x.shape)


def put():
    return Put()


def no_parameters():
    return torch.nn.ReLU()


def one_sample():
    return torch.nn.Linear(4, 2), torch.randn(1, 4)


def wrong_inputs():
    return torch.nn.Linear(4, 2), torch.randn(2, 5)


def not_a_model():
    return 42


def raising():
    return _load_checkpoint()


def _load_checkpoint():
    raise FileNotFoundError("weights.bin is not there")


class Unseeded(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        noise = torch.from_numpy(np.random.default_rng().standard_normal(4)).float()
        return self.lin(x) + noise  # NOISE LINE


def unseeded():
    return Unseeded()


class Total(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return (x * self.scale).sum()


def big_sum():
    return Total(), torch.randn(2, 1 << 19)


class Squeezing(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        out = self.lin(x).squeeze()
        return out.reshape(2, 4)


def squeezing():
    return Squeezing()


def lazy_neighbour():
    import neighbour

    return neighbour.build()


SHARED = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))


def shared_in_training():
    return SHARED, torch.randn(2, 4)
"""


@pytest.fixture
def models(tmp_path: Path) -> Path:
    path = tmp_path / "models.py"
    path.write_text(MODELS, encoding="utf-8")
    return path


def _audit(*argv: str, out: io.StringIO | None = None) -> tuple[int, str]:
    stream = io.StringIO() if out is None else out
    status = main(["audit", *argv], out=stream)
    return status, stream.getvalue()


def _line(text: str, check: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"  {check} "))


def test_convnext_built_in_training_mode_names_its_drop_path(models: Path) -> None:
    status, text = _audit(f"{models}:convnext_training")
    assert status == 1
    mode = _line(text, "mode")
    assert "finding" in mode
    assert "encoder.stages.1.layers.0.drop_path (ConvNextDropPath)" in mode
    assert "model.eval()" in text
    assert "is in training mode as built" in text
    # The other checks ran in eval mode: the stochastic depth drew nothing there.
    assert "ok" in _line(text, "repeatable")
    assert "ok" in _line(text, "seed")
    assert text.endswith("audit: 1 finding (mode) (exit 1)\n")


def test_vit_mae_random_masking_is_a_seed_finding_with_op_and_line(models: Path) -> None:
    status, text = _audit(f"{models}:vit_mae")
    assert status == 1
    assert "ok" in _line(text, "repeatable")
    seed = _line(text, "seed")
    assert "finding" in seed
    assert "random_masking" in seed
    assert "aten.rand" in text
    assert "transformers/models/vit_mae/modeling_vit_mae.py:" in text
    assert "noise = torch.rand(" in text
    assert "likely cause: draw from the RNG in eval mode" in text
    # A sample alone draws other numbers than its row of the batch: not asked. Reseeded
    # runs draw alike at one thread or in bfloat16: those are.
    assert "skipped  not asked" in _line(text, "batch")
    assert _line(text, "precision").split()[1] == "info"


def test_tiny_llama_is_clean_and_precision_is_information(models: Path) -> None:
    status, text = _audit(f"{models}:llama")
    assert status == 0, text
    assert "LlamaForCausalLM, inputs input_ids int64[2, 8], attention_mask int64[2, 8]" in text
    assert "inferred from its config (LlamaConfig" in text
    for check in ("mode", "repeatable", "seed", "kernels", "batch"):
        assert _line(text, check).split()[1] == "ok", text
    precision = _line(text, "precision")
    assert precision.split()[1] == "info"
    assert "bfloat16 copy against float32: precision (" in precision
    assert "ulps of bfloat16 at magnitude" in precision or "ulp of bfloat16" in precision
    assert "), largest relative difference " in precision
    assert "the default bfloat16 tolerance (rtol=0.016 atol=1e-05)" in precision
    assert _line(text, "threads").split()[1] in ("info", "skipped")
    assert text.endswith("audit: no findings (exit 0)\n")


def test_padding_in_the_users_inputs_is_checked_alone_without_it(models: Path) -> None:
    status, text = _audit(f"{models}:llama_padded")
    batch = _line(text, "batch")
    assert "alone without its padding" in batch
    assert status == (1 if "finding" in batch else 0)
    if status:
        assert "sample 0: identical" in text
        assert "sample 1: DIFFERS" in text


def test_encoder_decoder_gets_decoder_tokens_too(models: Path) -> None:
    status, text = _audit(f"{models}:t5")
    assert "T5Model, inputs input_ids int64[2, 8], attention_mask int64[2, 8], " in text
    assert "decoder_input_ids int64[2, 8] (inferred from its config (T5Config" in text
    assert _line(text, "repeatable").split()[1] == "ok"
    assert status in (0, 1)


def test_plain_mlp_gets_inferred_inputs(models: Path) -> None:
    status, text = _audit(f"{models}:mlp")
    assert "Sequential, inputs float32[2, 16] (inferred from its first layer 0 (Linear))" in text
    assert "built in training mode, but no layer acts differently there" in _line(text, "mode")
    assert "ok" in _line(text, "repeatable")
    batch = _line(text, "batch")
    # A batch of two may round differently from one sample alone on the CPU: if so, the
    # finding says it is rounding.
    assert status == (1 if "finding" in batch else 0)
    if status:
        assert "rounding" in batch


def test_conv_first_layer_gets_images(models: Path) -> None:
    status, text = _audit(f"{models}:conv")
    assert "inputs float32[2, 3, 32, 32] (inferred from its first layer 0 (Conv2d))" in text
    assert status in (0, 1)


def test_unsupported_kernel_is_named_with_module_and_line(models: Path) -> None:
    status, text = _audit(f"{models}:put")
    assert status == 1
    assert "no deterministic implementation: put_" in _line(text, "kernels")
    line = next(n for n, src in enumerate(MODELS.splitlines(), 1) if "PUT LINE" in src)
    assert f"models.py:{line} in forward: out.put_(" in text
    assert "module: Put (Put)" in text
    assert "replace put_ with" in text


def test_randomness_outside_the_seeded_rngs_is_a_repeatable_finding(models: Path) -> None:
    status, text = _audit(f"{models}:unseeded")
    assert status == 1
    repeatable = _line(text, "repeatable")
    assert "finding  run 1 differs from run 0, reseeded alike" in repeatable
    assert "Nondeterministic: run 1 differs from run 0" in text
    assert "noise = torch.from_numpy(np.random.default_rng()" in text
    assert "skipped  not asked: runs reseeded alike already differ" in _line(text, "seed")
    for check in ("batch", "threads", "precision"):
        assert "skipped  not asked: the outputs already change" in _line(text, check)


def test_thread_count_drift_is_information_with_kind_and_ulps(models: Path) -> None:
    status, text = _audit(f"{models}:big_sum")
    threads = _line(text, "threads")
    if torch.get_num_threads() == 1:
        assert "skipped  torch uses one CPU thread here already" in threads
    else:
        assert "info" in threads
        assert "equal, bitwise" in threads or "rounding (" in threads
    # An output without the batch dimension: nothing to compare per sample.
    assert "skipped  no output has the batch dimension 0 of size 2" in _line(text, "batch")
    assert status == 0


def test_a_model_raising_during_a_check_is_a_finding_there(models: Path) -> None:
    status, text = _audit(f"{models}:squeezing")
    assert status == 1
    batch = _line(text, "batch")
    assert "finding  the model raised RuntimeError during this check" in batch
    assert "in forward\n" in text
    assert "_call_impl" not in text


def test_a_file_target_imports_its_neighbours_while_it_runs(models: Path) -> None:
    (models.parent / "neighbour.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Linear(3, 2)\n", encoding="utf-8"
    )
    entries = list(sys.path)
    _, text = _audit(f"{models}:lazy_neighbour")
    assert "Linear, inputs float32[2, 3] (inferred from its first layer Linear (Linear))" in text
    assert sys.path == entries
    sys.modules.pop("neighbour", None)


def test_one_sample_skips_the_batch_check(models: Path) -> None:
    _, text = _audit(f"{models}:one_sample")
    assert "skipped  the inputs hold one sample" in _line(text, "batch")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("no_parameters", "returned a ReLU without inputs, and they cannot be inferred"),
        ("not_a_model", "returned a int, not a torch.nn.Module or (model, inputs)"),
        ("wrong_inputs", "the model rejected its inputs (float32[2, 5]): RuntimeError: mat1"),
        ("nowhere", "has no attribute 'nowhere'"),
    ],
)
def test_bad_targets_exit_2_saying_what_to_do(
    models: Path, capsys: pytest.CaptureFixture[str], target: str, expected: str
) -> None:
    status, text = _audit(f"{models}:{target}")
    err = capsys.readouterr().err
    assert status == 2
    assert text == ""
    assert err.startswith("pytest_determinism: error: ")
    assert expected in err
    if target != "nowhere":
        assert "return (model, inputs)" in err
    assert "pytest_determinism/" not in err.replace("pytest_determinism: error", "")


def test_missing_module_and_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _audit("no_such_package.models:build")[0] == 2
    assert "cannot import 'no_such_package.models': no module named 'no_such_package'" in (
        capsys.readouterr().err
    )
    assert _audit(f"{tmp_path / 'absent.py'}:build")[0] == 2
    assert "the file does not exist" in capsys.readouterr().err
    assert _audit("just_a_name")[0] == 2
    assert "is not `package.module:callable`" in capsys.readouterr().err


def test_a_raising_callable_shows_its_own_traceback(
    models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _ = _audit(f"{models}:raising")
    err = capsys.readouterr().err
    assert status == 2
    assert f"calling {models}:raising raised FileNotFoundError: weights.bin is not there" in err
    assert "The target's traceback (its own code, not pytest-determinism's):" in err
    assert "in _load_checkpoint" in err
    assert "audit/target.py" not in err


def test_module_targets_import_by_name(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(models.parent))
    status, text = _audit("models:mlp", "--runs", "3")
    assert "3 runs reseeded with seed 0 are bitwise identical" in _line(text, "repeatable")
    assert status in (0, 1)


def test_json_file_holds_every_check(models: Path, tmp_path: Path) -> None:
    report = tmp_path / "audit.json"
    status, _ = _audit(f"{models}:vit_mae", "--json", str(report))
    document = json.loads(report.read_text(encoding="utf-8"))
    assert document["target"] == f"{models}:vit_mae"
    assert document["exit_status"] == status == 1
    names = [check["name"] for check in document["checks"]]
    assert names == ["mode", "repeatable", "seed", "kernels", "batch", "threads", "precision"]
    for check in document["checks"]:
        assert set(check) == {"name", "verdict", "summary", "details"}
        assert check["verdict"] in ("ok", "finding", "info", "skipped")
    seed = document["checks"][2]
    assert seed["verdict"] == "finding"
    assert seed["details"]["op"] == "aten.rand.default"
    assert "random_masking" in seed["details"]["line"]
    assert "Seed-dependent" in seed["details"]["explanation"]


def test_progress_lines_only_on_a_terminal(models: Path) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    _, text = _audit(f"{models}:one_sample", out=Terminal())
    assert "audit: repeatable ...\r\x1b[K  repeatable ok" in text
    _, piped = _audit(f"{models}:one_sample")
    assert "\r" not in piped
    assert "..." not in piped


def test_the_audit_leaves_the_process_as_it_found_it(models: Path) -> None:
    before = capture()
    threads = torch.get_num_threads()
    status, text = _audit(f"{models}:shared_in_training")
    assert status == 1
    assert "1 (Dropout)" in _line(text, "mode")
    assert capture() == before
    assert torch.get_num_threads() == threads
    # No global module hook of the plugin's is left attached.
    assert not torch.nn.modules.module._global_forward_pre_hooks
    assert not torch.nn.modules.module._global_forward_hooks
    # The target's own module, as the audit imported it from its file.
    module = next(m for name, m in sys.modules.items() if name.startswith("_audit_target_models"))
    assert all(sub.training for sub in module.SHARED.modules())


def test_write_test_round_trip(pytester: pytest.Pytester, models: Path) -> None:
    target = pytester.path / "build_models.py"
    target.write_text(models.read_text(encoding="utf-8"), encoding="utf-8")
    test_file = pytester.path / "test_llama_audit.py"
    status, text = _audit(f"{target}:llama", "--write-test", str(test_file))
    assert status == 0, text
    assert f"wrote {test_file}: record its golden with" in text
    source = test_file.read_text(encoding="utf-8")
    assert "@pytest.mark.deterministic(seed=0)" in source
    assert "golden_tensor.check(output)" in source
    recorded = pytester.runpytest("-p", "no:randomly", "--update-golden")
    recorded.assert_outcomes(passed=1)
    checked = pytester.runpytest("-p", "no:randomly", "--determinism")
    checked.assert_outcomes(passed=1)
    checked.stdout.fnmatch_lines(["*determinism: 1 tests x 2 runs (+1 other-seed run)*"])


def test_write_test_never_overwrites(
    models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "test_existing.py"
    existing.write_text("# mine\n", encoding="utf-8")
    status, text = _audit(f"{models}:mlp", "--write-test", str(existing))
    assert status == 2
    assert text == ""
    assert "already exists; the audit never overwrites a file" in capsys.readouterr().err
    assert existing.read_text(encoding="utf-8") == "# mine\n"


def test_starter_for_a_module_target_imports_it_by_name(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(models.parent))
    test_file = tmp_path / "test_mlp_audit.py"
    _audit("models:mlp", "--seed", "3", "--write-test", str(test_file))
    source = test_file.read_text(encoding="utf-8")
    assert "from models import mlp\n" in source
    assert "importlib" not in source
    assert "@pytest.mark.deterministic(seed=3)" in source
    assert "    model = mlp()\n    inputs = torch.randn(2, 16)\n" in source
    assert "        output = model(inputs)\n" in source


def test_the_command_line_runs_the_audit_without_progress_when_piped(
    models: Path, tmp_path: Path
) -> None:
    # A fresh interpreter: `python -m` dispatches to the audit, and piped output holds the
    # verdicts only.
    done = subprocess.run(
        [sys.executable, "-m", "pytest_determinism", "audit", f"{models}:one_sample"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "audit: no findings (exit 0)"
    assert "\r" not in done.stdout
    assert "Traceback" not in done.stderr
