"""A few full-batch SGD steps on one batch: the tests' "does it learn at all" check."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sgd_losses(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float
) -> list[float]:
    """The loss before each of `steps` SGD steps (momentum 0.9) on the batch (x, y)."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
