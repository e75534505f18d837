"""Cookbook 002: a training run stopped reproducing after a mixed-precision change.

One training step of a tiny ResNet-style network (BatchNorm included) under bf16 autocast
is snapshotted: the logits, the loss, every gradient and the state after the optimizer
step. Any change to the precision, the optimizer or the environment shows up here, in a
test that takes a fraction of a second, instead of as a lower accuracy after 32 epochs.
"""

import os

import torch
import torch.nn.functional as F
from torch import nn

from pytest_determinism import deterministic

# The precision flag of the training script. Run this file with EXAMPLE_AMP_DTYPE=float16
# to see what a precision change looks like against the bf16 goldens.
AMP_DTYPE = getattr(torch, os.environ.get("EXAMPLE_AMP_DTYPE", "bfloat16"))


# --8<-- [start:model]
class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.block = Block(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.block(F.relu(self.stem(images)))
        return self.head(x.mean(dim=(2, 3)))


# --8<-- [end:model]


# --8<-- [start:step]
# eval_mode=False: BatchNorm must stay in training mode for a training step. The step draws
# no random numbers inside forward, so stochastic=False keeps the seed probe on.
# threads=1: gradients are reductions, and CPU reductions change with the thread count.
@deterministic(eval_mode=False, stochastic=False, threads=1)
def test_training_step(golden_tensor) -> None:
    model = TinyResNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images = torch.randn(8, 3, 16, 16)
    labels = torch.randint(0, 10, (8,))

    with torch.autocast("cpu", dtype=AMP_DTYPE):
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
    loss.backward()

    # Computed through bf16 matmuls: compare at bf16 tolerance even where stored as float32.
    bf16 = {"rtol": 1.6e-2, "atol": 1e-3}
    golden_tensor.check(logits, name="logits", **bf16)  # a bfloat16 tensor: dtype recorded
    golden_tensor.check(loss, name="loss", **bf16)
    golden_tensor.check({n: p.grad for n, p in model.named_parameters()}, name="grads", **bf16)

    optimizer.step()
    # Weights and BatchNorm running statistics (num_batches_tracked is an int64: exact).
    golden_tensor.check(model.state_dict(), name="after_step", **bf16)


# --8<-- [end:step]
