"""What the plugin cannot see: a module whose ``forward`` is called directly."""

import torch
import torch.nn.functional as F
from torch import nn

from pytest_determinism import deterministic


# --8<-- [start:forward]
class NoisyHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Functional dropout: reads self.training, and is no layer the plugin could name.
        return self.proj(F.dropout(x, p=0.5, training=self.training))


@deterministic
def test_calling_forward_directly_bypasses_the_plugin() -> None:
    head = NoisyHead()  # a new module is in training mode
    x = torch.randn(4, 8)

    head.forward(x)  # not a module call: the plugin never sees `head`
    assert head.training  # so it was not switched to eval mode: dropout was active

    head(x)  # a module call: switched to eval mode before its forward ran
    assert not head.training


# --8<-- [end:forward]
