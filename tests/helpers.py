"""Small models shared by tests."""

import torch
from torch import nn


def small_cnn(n_cls: int = 10) -> nn.Module:
    """A 16 × 16-input CNN, cheap enough for AutoAttack's 5,000-query Square in a unit test."""
    torch.manual_seed(123)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, n_cls),
    ).eval()
