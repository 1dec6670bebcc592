"""A small BatchNorm conv net and seeded batches, shared by the training-loop and integration tests."""

import torch
from torch import nn


def small_bn_net(seed: int = 0) -> nn.Sequential:
    """Two convs under BatchNorm (scale-invariant: layers '0' and '4', the second with a bias), a classifier."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def seeded_batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of 16 random 8×8 images with labels in 0..4."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 5, (16,), generator=gen)) for _ in range(n)]
