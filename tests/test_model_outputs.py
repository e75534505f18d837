"""Real model outputs checked as they come: Hugging Face caches, generate(), dataclasses,
named tuples, and exclude=, through real pytest runs with tiny models built from configs."""

from __future__ import annotations

import pytest
import torch

from pytest_determinism import NondeterminismError, assert_batch_invariant, assert_deterministic
from pytest_determinism.cli import main
from pytest_determinism.golden.storage import read_golden

transformers = pytest.importorskip("transformers")
# Imported here, not only inside the inner sessions: modules first imported there are
# dropped after each run, and a second load of a library's extensions can crash.
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.modeling_outputs import CausalLMOutputWithPast  # noqa: E402

# transformers 5.x names the field `cache`; 4.x named it `past_key_values`.
CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

MODELS = """
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

IDS = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])

def llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()

def t5():
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=1,
        num_heads=2, decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config).eval()
"""


def _keys(pytester: pytest.Pytester, test: str) -> dict[str, list[str]]:
    golden = read_golden(pytester.path / "__golden__" / "test_models" / f"{test}.safetensors")
    try:
        return {name: list(golden.check_keys(name) or []) for name in golden.check_names()}
    finally:
        golden.close()


def _per_layer(prefix: str, layers: int) -> list[str]:
    return [f"{prefix}.{i}.{part}" for i in range(layers) for part in ("key", "value")]


def test_forward_generate_and_encoder_decoder_outputs_check_whole(
    pytester: pytest.Pytester, run, capsys: pytest.CaptureFixture[str]
) -> None:
    pytester.makepyfile(
        test_models=MODELS
        + """
@torch.no_grad()
def test_forward(golden_tensor):
    golden_tensor.check(llama()(input_ids=IDS), name="out")

@torch.no_grad()
def test_generate(golden_tensor):
    out = llama().generate(
        IDS, max_new_tokens=3, do_sample=False, return_dict_in_generate=True,
        output_scores=True, pad_token_id=0,
    )
    golden_tensor.check(out, name="gen")

@torch.no_grad()
def test_encoder_decoder(golden_tensor):
    golden_tensor.check(t5()(input_ids=IDS, decoder_input_ids=IDS[:, :2]), name="t5")
"""
    )
    run("--update-golden").assert_outcomes(passed=3)
    run().assert_outcomes(passed=3)
    assert _keys(pytester, "test_forward") == {
        "out": ["out.logits", *_per_layer(f"out.{CACHE}", 2)]
    }
    assert _keys(pytester, "test_generate")["gen"] == [
        "gen.sequences",
        "gen.scores.0",
        "gen.scores.1",
        "gen.scores.2",
        *_per_layer(f"gen.{CACHE}", 2),
    ]
    assert _keys(pytester, "test_encoder_decoder")["t5"] == [
        "t5.logits",
        *_per_layer(f"t5.{CACHE}.self_attention", 1),
        *_per_layer(f"t5.{CACHE}.cross_attention", 1),
        "t5.encoder_last_hidden_state",
    ]
    path = pytester.path / "__golden__" / "test_models" / "test_forward.safetensors"
    assert main(["show", str(path)]) == 0
    shown = capsys.readouterr().out
    assert f"out.{CACHE}.1.value" in shown
    assert "float32" in shown


def test_a_changed_attention_weight_is_caught_through_the_cache(
    pytester: pytest.Pytester, run
) -> None:
    body = """
@torch.no_grad()
def test_cache(golden_tensor):
    model = llama()
    {change}
    golden_tensor.check(model(input_ids=IDS), name="out", exclude="logits")
"""
    pytester.makepyfile(test_models=MODELS + body.format(change="pass"))
    run("--update-golden").assert_outcomes(passed=1)
    assert _keys(pytester, "test_cache") == {"out": _per_layer(f"out.{CACHE}", 2)}
    change = "model.model.layers[1].self_attn.k_proj.weight[0, 0] += 0.5"
    pytester.makepyfile(test_models=MODELS + body.format(change=change))
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*out.{CACHE}.1.key*differ*"])
    # Layer 0 and the values are computed before or beside the changed projection.
    result.stdout.no_fnmatch_line(f"*out.{CACHE}.0.*differ*")
    result.stdout.no_fnmatch_line(f"*out.{CACHE}.1.value*differ*")


def test_dataclasses_named_tuples_none_fields_and_exclude_in_a_real_run(
    pytester: pytest.Pytester, run
) -> None:
    pytester.makepyfile(
        test_models="""
import collections
import dataclasses
import torch

@dataclasses.dataclass
class Prediction:
    logits: torch.Tensor
    hidden: torch.Tensor | None = None
    labels: list | None = None

Pair = collections.namedtuple("Pair", "values indices")

def test_dataclass(golden_tensor):
    out = Prediction(torch.arange(4.0), labels=["cat", "dog"])
    golden_tensor.check(out, exclude="labels")
    golden_tensor.check(Pair(torch.ones(2), None), name="pair")
    golden_tensor.check({"x": torch.zeros(1), "mask": None}, name="plain")

def test_labels_not_excluded(golden_tensor):
    golden_tensor.check(Prediction(torch.arange(4.0), labels=["cat", "dog"]))

def test_pattern_matching_nothing(golden_tensor):
    golden_tensor.check(Prediction(torch.arange(4.0)), exclude=["logits", "*.attentions"])

def test_unknown_object(golden_tensor):
    golden_tensor.check({"logits": torch.ones(1), "tokenizer": object()}, name="out")
"""
    )
    result = run("--update-golden", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines_random(
        [
            "*TypeError: golden_tensor: the value at '0.labels.0' has type str: expected a torch "
            "tensor*; convert it, or leave it out with exclude='labels'",
            "*ValueError: golden_tensor.check: exclude '[*].attentions' matches no part of the "
            "value (its parts: 'logits' (excluded))*",
            "*TypeError: golden_tensor: the value at 'out.tokenizer' has type object:*"
            "leave it out with exclude='tokenizer'",
        ]
    )
    # The traceback ends in the test: no frame from the plugin's source.
    result.stdout.no_fnmatch_line("*pytest_determinism*golden*.py:*")
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    assert _keys(pytester, "test_dataclass") == {
        "0": ["0.logits"],
        "pair": ["pair.values"],
        "plain": ["plain.x"],
    }
    run("test_models.py::test_dataclass").assert_outcomes(passed=1)


def test_excluded_parts_are_not_evidence_in_the_ci_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_models="""
import pytest
import torch

CALLS = []

@pytest.mark.deterministic
def test_excluded(golden_tensor):
    CALLS.append(1)
    golden_tensor.check({"x": torch.ones(2), "calls": len(CALLS)}, exclude="calls")

@pytest.mark.deterministic
def test_counted(golden_tensor):
    CALLS.append(1)
    golden_tensor.check({"x": torch.ones(2), "calls": len(CALLS)})
"""
    )
    pytester.runpytest("-p", "no:randomly", "--update-golden").assert_outcomes(passed=2)
    result = pytester.runpytest("-p", "no:randomly", "--determinism", "test_models.py")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*FAILED test_models.py::test_counted*"])
    result.stdout.no_fnmatch_line("*FAILED test_models.py::test_excluded*")


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def test_assert_deterministic_compares_a_whole_llama_output_cache_included() -> None:
    model = _llama()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        out = assert_deterministic(model, input_ids=ids)
    assert out[CACHE].layers[1].keys.shape == (1, 1, 4, 8)
    calls: list[int] = []

    @torch.no_grad()
    def drifting_cache() -> object:
        out = model(input_ids=ids)
        calls.append(1)
        out[CACHE].layers[1].values[0, 0, 0, 0] += len(calls)
        return out

    with pytest.raises(NondeterminismError, match=rf"{CACHE}\.1\.value"):
        assert_deterministic(drifting_cache)


def test_an_encoder_decoder_model_runs_deterministically_with_its_cache() -> None:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=64,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        decoder_start_token_id=0,
    )
    model = T5ForConditionalGeneration(config).eval()
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        out = assert_deterministic(model, input_ids=ids, decoder_input_ids=ids[:, :1])
    assert type(out[CACHE]).__name__ == "EncoderDecoderCache"


def test_assert_batch_invariant_drops_the_padding_of_a_cache_too() -> None:
    model = _llama()
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    batch = {"input_ids": ids, "attention_mask": mask}
    batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)

    @torch.no_grad()
    def whole(**inputs: torch.Tensor) -> object:
        return model(**inputs)

    assert_batch_invariant(whole, batch, exact=False)

    @torch.no_grad()
    def without_mask(input_ids, attention_mask, position_ids) -> object:
        return model(input_ids=input_ids)

    with pytest.raises(AssertionError) as info:
        assert_batch_invariant(without_mask, batch, exact=False)
    # The cache's positions are its third dimension: sample 0's first real token is at 2.
    assert f"{CACHE}.1.key:" in str(info.value)
    assert "alone / (0, 0, 2, 0) in the batch" in str(info.value)
