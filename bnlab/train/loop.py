"""The hot loop: one epoch of SGD, and evaluation. Nothing here knows files or the CLI.

Kept direct on purpose (in the spirit of airbench): batches are already on the
device, the schedule (a pure function of the step) sets the optimizer's lr before
each step, and the only host syncs are the divergence checks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.data import DeviceLoader
from bnlab.train.runtime import Runtime
from bnlab.train.schedule import set_lr


class Reporter(Protocol):
    """Progress sink, supplied by the caller (the CLI draws bars; tests stay silent)."""

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self) -> None: ...
    def epoch_end(self, row: dict[str, float]) -> None: ...


class SilentReporter:
    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self) -> None:
        pass

    def epoch_end(self, row: dict[str, float]) -> None:
        pass


@dataclass
class DivergenceGuard:
    """Divergence is a result, not a crash: NaN/inf loss, or loss > factor x its initial value.

    The initial value is the loss of the very first training step (about ln 10
    for a fresh 10-class net); it is checkpointed so a resumed run uses it too.
    """

    factor: float
    initial_loss: float | None = None

    def diverged(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        if self.initial_loss is None:
            self.initial_loss = loss
            return False
        return loss > self.factor * self.initial_loss


@dataclass
class EpochStats:
    train_loss: float
    train_acc: float
    lr: float
    images: int
    seconds: float
    diverged: bool
    steps: int


def train_epoch(
    model: nn.Module,
    loader: DeviceLoader,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    lr_at: Callable[[int], float],
    first_step: int,
    rt: Runtime,
    guard: DivergenceGuard,
    reporter: Reporter,
    before_step: Callable[[int, torch.Tensor, torch.Tensor, float], None] | None = None,
) -> EpochStats:
    """One pass over the training loader; stops early on a non-finite loss.

    `lr_at(step)` is the schedule (``TrainSpec.lr_at``): before each step every param
    group's lr is set to it x the group's lr_scale (``set_lr``). `before_step(step, x,
    y, lr)` (probes) sees each batch before its update; it must not change the model,
    the optimizer or the RNG.
    """
    model.train()
    # Per-step host syncs are free on CPU; on a GPU check every few steps only.
    check_every = 1 if rt.device.type == "cpu" else 25
    loss_sum = torch.zeros((), device=rt.device)
    correct = torch.zeros((), device=rt.device, dtype=torch.long)
    images, step, lr, diverged = 0, first_step, 0.0, False
    start = time.perf_counter()
    for i, (x, y) in enumerate(loader.epoch(epoch)):
        lr = lr_at(step)
        set_lr(optimizer, lr)
        if before_step is not None:
            before_step(step, x, y, lr)
        with rt.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        loss_sum += loss.detach() * y.numel()
        correct += (logits.argmax(dim=1) == y).sum()
        images += y.numel()
        reporter.step()
        if (i % check_every == 0 or guard.initial_loss is None) and guard.diverged(loss.item()):
            diverged = True
            break
    mean_loss = loss_sum.item() / max(1, images)
    diverged = diverged or guard.diverged(mean_loss)
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    return EpochStats(
        train_loss=mean_loss,
        train_acc=correct.item() / max(1, images),
        lr=lr,
        images=images,
        seconds=time.perf_counter() - start,
        diverged=diverged,
        steps=step - first_step,
    )


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, rt: Runtime) -> tuple[float, float]:
    """Mean loss and accuracy; BN uses its running statistics (eval mode)."""
    model.eval()
    loss_sum = torch.zeros((), device=rt.device)
    correct = torch.zeros((), device=rt.device, dtype=torch.long)
    n = 0
    for x, y in loader.epoch(0):
        with rt.autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
        n += y.numel()
    return loss_sum.item() / max(1, n), correct.item() / max(1, n)
