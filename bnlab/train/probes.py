"""Measurements taken after (or during) training, beside the metrics the loop records."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from bnlab.data import DeviceLoader
from bnlab.train.loop import evaluate
from bnlab.train.runtime import Runtime


@torch.no_grad()
def batch_stats_accuracy(model: nn.Module, loader: DeviceLoader, rt: Runtime) -> float:
    """Test accuracy when BN normalises with each eval batch's own statistics.

    Runs a deep copy in train mode, so the real model's running averages are
    never touched. The loader must shuffle (train=True, augment=False): the test
    set is stored class by class, and a single-class batch would give the batch
    statistics an unfair bias that random inference batches do not have.
    """
    probe = copy.deepcopy(model).train()
    correct, n = 0, 0
    for x, y in loader.epoch(0):
        with rt.autocast():
            logits = probe(x)
        correct += int((logits.argmax(dim=1) == y).sum())
        n += y.numel()
    return correct / max(1, n)


def bn_eval(
    model: nn.Module,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    sizes: list[int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    rt: Runtime,
    seed: int,
) -> dict[str, Any]:
    """Running-statistics accuracy vs batch-statistics accuracy at each eval batch size."""
    running = DeviceLoader(
        test_x, test_y, 256, train=False, augment=False, mean=mean, std=std,
        device=rt.device, channels_last=rt.channels_last,
    )  # fmt: skip
    _, running_acc = evaluate(model, running, rt)
    batch_acc = {}
    for size in sizes:
        loader = DeviceLoader(
            test_x, test_y, size, train=True, augment=False, mean=mean, std=std,
            device=rt.device, seed=seed, channels_last=rt.channels_last,
        )  # fmt: skip
        batch_acc[str(size)] = batch_stats_accuracy(model, loader, rt)
    return {"running_stats_acc": running_acc, "batch_stats_acc": batch_acc}
