"""Cookbook 003: a model answers one request at a time, but differently inside a batch.

A tiny Llama (rotary position embeddings, grouped-query attention) built from a config.
Prompts of different lengths are left-padded into one batch, as for greedy decoding.
"""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pytest_determinism import assert_batch_invariant, deterministic

PAD = 0


# --8<-- [start:setup]
# Every test in this module is deterministic, on one CPU thread: a matmul's result depends
# on how many threads split it, and goldens should not depend on the runner's core count.
pytestmark = deterministic(threads=1)


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
        pad_token_id=PAD,
    )
    return LlamaForCausalLM(config).eval()


def left_padded(prompts: list[list[int]]) -> dict[str, torch.Tensor]:
    length = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), length), PAD)
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, length - len(prompt) :] = 1
    # Positions count real tokens only, so a padded prompt starts at position 0.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}


PROMPTS = [[5, 17, 42, 8, 23], [11, 7, 30], [9, 60, 2, 14]]


# --8<-- [end:setup]


# --8<-- [start:caught]
def test_mask_not_passed_is_caught() -> None:
    model = tiny_llama()
    batch = left_padded(PROMPTS)

    def logits(input_ids, attention_mask, position_ids):
        return model(input_ids=input_ids).logits  # the bug: the mask never reaches the model

    with pytest.raises(AssertionError) as report:
        assert_batch_invariant(logits, batch, exact=False)

    # Prompt 0 is the longest: no padding, no difference. Prompts 1 and 2 attended to theirs.
    assert "sample 0: identical" in str(report.value)
    assert "sample 1: DIFFERS" in str(report.value)
    assert "sample 2: DIFFERS" in str(report.value)


# --8<-- [end:caught]


# --8<-- [start:fixed]
def test_alone_equals_in_batch(golden_tensor) -> None:
    model = tiny_llama()
    batch = left_padded(PROMPTS)

    def logits(input_ids, attention_mask, position_ids):
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return out.logits

    # Each prompt alone, without its padding, against its real positions in the batch.
    # exact=False: a batch of 3 takes other CPU kernels than a batch of 1 (~1e-6 apart).
    assert_batch_invariant(logits, batch, exact=False)
    golden_tensor.check(logits(**batch), name="logits")


# --8<-- [end:fixed]


# --8<-- [start:greedy]
def test_greedy_decoding_alone_equals_in_batch(golden_tensor) -> None:
    model = tiny_llama()
    batch = left_padded(PROMPTS)
    greedy = {"do_sample": False, "max_new_tokens": 6, "pad_token_id": PAD}

    with torch.no_grad():
        batched = model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **greedy
        )
        for row, prompt in enumerate(PROMPTS):
            alone = model.generate(input_ids=torch.tensor([prompt]), **greedy)
            assert batched[row, -6:].tolist() == alone[0, -6:].tolist(), f"prompt {row}"

    golden_tensor.check(batched, name="tokens")  # int64: compared exactly


# --8<-- [end:greedy]
