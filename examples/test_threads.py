"""Cookbook 006: a golden that depends on the CPU thread count.

A float32 sum over millions of elements is split across threads, and each split rounds
differently: the same tensor sums to a few ulps apart at 1, 2 or 16 threads. The module
pins one thread, so the golden is the same on a 16-core workstation, a 4-core CI runner
and in a pytest-xdist worker.
"""

import torch

from pytest_determinism import deterministic

# --8<-- [start:pin]
# Every test in this module runs with torch.set_num_threads(1), restored afterwards.
pytestmark = deterministic(threads=1)
# --8<-- [end:pin]


# --8<-- [start:golden]
def test_feature_checksum(golden_tensor) -> None:
    # A batch of 16 activation maps from a ResNet stage: 4.2 million float32 values.
    features = torch.randn(16, 256, 32, 32)

    assert torch.get_num_threads() == 1  # the pin, whatever the machine's core count
    golden_tensor.check(features.sum(), name="checksum")
    golden_tensor.check(features.mean(dim=(0, 2, 3)), name="channel_means")


# --8<-- [end:golden]
