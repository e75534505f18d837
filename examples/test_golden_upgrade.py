"""Cookbook: my golden broke after an upgrade. Where in the model did it start?

A tiny BERT (built from a config object, seeded by the marker) checked against its golden.
Recorded with ``pytest --update-golden``, the golden also holds the module trace of the
test's body: every module call with a digest of its parameters and a sketch of its output.
When a later check fails (after an upgrade of torch or transformers, a new checkpoint, a
refactor), the body runs once more, traced, and the failure says which module call the
difference started at, and whether the weights, the inputs or the computation changed.
"""

import pytest
import torch
from transformers import BertConfig, BertModel


# --8<-- [start:model]
def tiny_bert() -> BertModel:
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return BertModel(config).eval()


@pytest.mark.deterministic(threads=1)
def test_hidden_states(golden_tensor) -> None:
    model = tiny_bert()
    input_ids = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        out = model(input_ids=input_ids)
    golden_tensor.check(out.last_hidden_state, name="hidden")


# --8<-- [end:model]
