"""The 30-second example from the docs' home page and getting-started guide."""

# --8<-- [start:quickstart]
import pytest
import torch
from torch import nn


@pytest.fixture
def model() -> nn.Module:
    # Built after the plugin seeded every RNG: the same weights in every run and process.
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 4)).eval()


@pytest.mark.deterministic
def test_logits(model, golden_tensor):
    x = torch.randn(2, 16)  # seeded too

    logits = model(x)

    golden_tensor.check(logits, name="logits")
    golden_tensor.check(logits.argmax(-1), name="labels")  # integers: compared exactly


# --8<-- [end:quickstart]
