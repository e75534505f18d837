"""Cookbook: a whole LLM output checked as it comes, its key/value cache included.

A tiny Llama built from a config: nothing is downloaded. Its forward output holds a
`DynamicCache` object and `generate(..., return_dict_in_generate=True)` returns a
dataclass of tuples and a cache; `golden_tensor.check` takes both as they are.
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pytest_determinism import deterministic

PAD = 0

# --8<-- [start:setup]
# One CPU thread: a matmul's result depends on how many threads split it, and goldens
# should not depend on the runner's core count.
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


PROMPT = {
    "input_ids": torch.tensor([[5, 17, 42, 8, 23]]),
    "attention_mask": torch.ones(1, 5, dtype=torch.long),
}
# --8<-- [end:setup]


# --8<-- [start:forward]
@torch.no_grad()
def test_forward_output(golden_tensor):
    model = tiny_llama()
    out = model(**PROMPT)
    # Stored as logits, cache.0.key, cache.0.value, cache.1.key, cache.1.value
    golden_tensor.check(out, name="forward")


# --8<-- [end:forward]


# --8<-- [start:generate]
@torch.no_grad()
def test_greedy_generation(golden_tensor):
    out = tiny_llama().generate(
        **PROMPT,
        max_new_tokens=4,
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
        pad_token_id=PAD,
    )
    # sequences (exact: integers) and scores.0 ... scores.3; the cache is left out.
    golden_tensor.check(out, name="greedy", exclude="cache")


# --8<-- [end:generate]
