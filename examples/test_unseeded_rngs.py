"""Cookbook 001: the same image gives a different number of detections on every run.

Randomness came from places nobody seeded: a NumPy generator created without a seed in
the test-time augmentation, and DataLoader workers whose augmentation draws depend on how
many random numbers the rest of the program consumed first.
"""

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pytest_determinism import NondeterminismError, assert_deterministic, deterministic


# --8<-- [start:detector]
class TinyDetector(nn.Module):
    """RetinaNet-shaped toy: a conv backbone, a class head and a box head per anchor."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.cls_head = nn.Conv2d(16, num_classes, 1)
        self.box_head = nn.Conv2d(16, 4, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(images)
        scores = self.cls_head(features).sigmoid().flatten(2).transpose(1, 2)
        boxes = self.box_head(features).flatten(2).transpose(1, 2)
        return scores, boxes


def detect(model: nn.Module, image: torch.Tensor, rng: np.random.Generator) -> dict:
    """Test-time augmentation (a random brightness), then keep the confident anchors."""
    brightness = float(rng.uniform(0.8, 1.2))
    with torch.no_grad():
        scores, boxes = model(image * brightness)
    best, labels = scores[0].max(-1)
    keep = best > 0.515
    return {"boxes": boxes[0][keep], "labels": labels[keep], "scores": best[keep]}


# --8<-- [end:detector]


# --8<-- [start:caught]
@deterministic
def test_unseeded_generator_is_caught() -> None:
    model = TinyDetector().eval()
    image = torch.rand(1, 3, 32, 32)

    def detect_unseeded(image: torch.Tensor) -> dict:
        return detect(model, image, np.random.default_rng())  # the bug: no seed

    with pytest.raises(NondeterminismError) as report:
        assert_deterministic(detect_unseeded, image)

    # Seeding random, NumPy and torch cannot help a generator that never reads them: the
    # first module that saw a difference got different inputs, so the cause lies before it.
    assert "inputs: differ" in str(report.value)
    assert "unseeded generator" in str(report.value)


# --8<-- [end:caught]


# --8<-- [start:fixed]
def test_seeded_generator(determinism, golden_tensor) -> None:
    # Requesting the `determinism` fixture marks the test with the defaults.
    model = TinyDetector().eval()
    image = torch.rand(1, 3, 32, 32)

    detections = detect(model, image, determinism.rng())  # a generator seeded from the test

    golden_tensor.check(detections, name="detections")


# --8<-- [end:fixed]


# --8<-- [start:dataset]
class AugmentedImages(Dataset):
    """Eight tiny images, augmented with Python's, NumPy's and torch's global RNGs."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        image = torch.full((3, 8, 8), float(index))
        if random.random() < 0.5:
            image = image.flip(-1)
        noise = np.random.normal(0.0, 0.1, size=(3, 8, 8)).astype(np.float32)
        return (image + torch.from_numpy(noise)) * (1 + 0.1 * torch.rand(()))


def load_all(loader: DataLoader) -> torch.Tensor:
    return torch.cat(list(loader))


# --8<-- [end:dataset]


# --8<-- [start:loader-bug]
@deterministic
def test_loader_depends_on_what_ran_before() -> None:
    def make_loader() -> DataLoader:
        return DataLoader(AugmentedImages(), batch_size=4, shuffle=True, num_workers=2)

    first = load_all(make_loader())
    torch.randn(1000)  # e.g. the model grew a layer: more draws from the global RNG
    second = load_all(make_loader())

    # Shuffling and worker seeds were drawn from the global RNG, so the data moved.
    assert not torch.equal(first, second)


# --8<-- [end:loader-bug]


# --8<-- [start:loader-fixed]
def test_loader_seeded_from_the_test(determinism, golden_tensor) -> None:
    def make_loader() -> DataLoader:
        return DataLoader(
            AugmentedImages(),
            batch_size=4,
            shuffle=True,
            num_workers=2,
            generator=determinism.generator(),  # the shuffle order
            worker_init_fn=determinism.worker_init_fn,  # random, NumPy, torch per worker
        )

    first = load_all(make_loader())
    torch.randn(1000)
    second = load_all(make_loader())

    assert torch.equal(first, second)
    golden_tensor.check(first, name="batches")


# --8<-- [end:loader-fixed]
