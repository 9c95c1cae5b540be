"""Images as sequences of rows: what the sequence models (recurrent, transformer) read.

The data path is the conv nets': uint8 (N, H, W, C) images, the same loaders and
caches, batches of (B, C, H, W). A sequence model reads such a batch as H time steps
(tokens) of W x C features -- each row's pixels left to right, each pixel's channels
in order: 28 steps of 28 for Fashion-MNIST, 32 steps of 96 for CIFAR-10 (the
"sequential" row-by-row variants; pixel-by-pixel would be 784 steps, too long for a
2-core CPU).
"""

from __future__ import annotations

import torch


def image_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images -> (B, H, W * C) sequences of rows.

    A view (no copy) when ``x`` is channels_last, the training default.
    """
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h, w * c)


def row_features(in_channels: int, image_size: tuple[int, int]) -> tuple[int, int]:
    """(steps, features per step) of images of ``in_channels`` x ``image_size`` (H, W)."""
    height, width = image_size
    return height, width * in_channels
