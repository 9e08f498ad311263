"""A small segmentation task and model for the segmentation example, benchmark and tests.

The digit-stroke task: each 8x8 scan of scikit-learn's digits (bundled, nothing downloaded) is
upsampled to 16x16; pixels of the stroke (intensity above one half) are labelled ``digit + 1``
and the rest background (0), so there are 11 classes. The digits ``rare`` (5-9 by default)
keep only ``rare_keep`` of their scans, which makes their stroke pixels rare: with the
defaults background holds about 60% of the pixels, each common digit about 7% and each rare
digit under 1%. Inputs get Gaussian pixel noise.

:class:`TinyFCN` is a fully-convolutional model: dilated 3x3 convolutions (receptive field 31
pixels, the whole image) and a final 1x1 convolution, returning logits ``[B, 11, H, W]``;
``features(x)`` gives the ``[B, 32, H, W]`` embedding the 1x1 convolution reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 11
SIZE = 16


@dataclass(frozen=True)
class StrokeSplit:
    """Images ``[N, 1, 16, 16]`` float32 and masks ``[N, 16, 16]`` int64 for three parts:
    ``train`` (fit), ``val`` (where advice is read) and ``test`` (where it is judged)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    rare_classes: tuple[int, ...]


def digit_strokes(
    *,
    seed: int = 0,
    rare_keep: float = 0.1,
    rare: tuple[int, ...] = (5, 6, 7, 8, 9),
    noise: float = 0.3,
) -> StrokeSplit:
    """The digit-stroke segmentation task, split 50/25/25 by a seeded permutation."""
    if not 0 < rare_keep <= 1:
        raise ValueError(f"rare_keep must lie in (0, 1], got {rare_keep!r}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32) / 16.0
    target = torch.as_tensor(digits.target, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(len(target), generator=gen) < rare_keep
    keep |= ~torch.isin(target, torch.as_tensor(rare))
    images, target = images[keep], target[keep]
    up = F.interpolate(images[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    masks = torch.where(up[:, 0] > 0.5, target[:, None, None] + 1, 0)
    x = up + noise * torch.randn(up.shape, generator=gen)
    order = torch.randperm(len(target), generator=gen)
    a, b = len(order) // 2, (3 * len(order)) // 4
    parts = order[:a], order[a:b], order[b:]
    return StrokeSplit(
        *(t for idx in parts for t in (x[idx], masks[idx])),
        rare_classes=tuple(d + 1 for d in rare),
    )


class TinyFCN(nn.Module):
    """Dilated 3x3 convolutions, then a 1x1 convolution to ``classes`` logits per pixel."""

    def __init__(self, classes: int = NUM_CLASSES, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, width, 3, padding=2, dilation=2),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=4, dilation=4),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=8, dilation=8),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(width, classes, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def train_fcn(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    criterion: Criterion,
    *,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> nn.Module:
    """Seeded Adam; ``criterion(logits [B, C, H, W], masks [B, H, W])``."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            opt.zero_grad()
            criterion(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return model


def pixel_criterion(loss: nn.Module) -> Criterion:
    """A per-row classification loss (logits [N, C], targets [N]) applied to every pixel."""

    def criterion(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        c = logits.shape[1]
        return loss(logits.permute(0, 2, 3, 1).reshape(-1, c), masks.reshape(-1))

    return criterion


def class_frequencies(masks: torch.Tensor, classes: int = NUM_CLASSES) -> np.ndarray:
    """Pixel fraction of each class."""
    counts = torch.bincount(masks.reshape(-1), minlength=classes).double()
    return (counts / counts.sum()).numpy()
