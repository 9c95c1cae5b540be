"""Why BN degrades at small batch: one trained BN model evaluated five ways (probe.bn_modes).

With g the number of samples BN's statistics cover in training (data.batch_size
for norm=bn, norm.virtual_batch for norm=ghost_bn):

(a) ``running_acc``: the usual test accuracy, BN with its running averages (the
    run's final full-test accuracy, passed in).
(b) ``precise_acc``: the same with *precise* BN statistics (Wu & Johnson 2021,
    fvcore's ``update_bn_stats``): weights frozen, each BN layer's mean and variance
    re-estimated as the plain average of the per-batch means and (unbiased)
    variances over ``precise_batches`` training batches of g, all layers in one pass
    in train mode; the training data as the running averages saw it (the run's
    augmentation). (a) vs (b): the error of the exponential running average over
    changing weights.
(c) ``batch_stats_acc``: every BN layer normalises each group of g test images by
    that group's own statistics (train-mode BN, running averages untouched), the
    test set shuffled into groups ``shuffles`` times (the last partial group of
    each shuffle left out); the mean over the shuffles, and each shuffle's.
    (b) vs (c): the cost of inference with noisy g-sample statistics.
(d) ``train_mode_loss``/``train_mode_acc``: one pass over the training set (no
    augmentation, shuffled into groups of g), BN in train mode at g, weights frozen:
    the training objective as the optimiser saw it, at the end of training.
(e) ``train_running_loss``/``train_running_acc``: the same images as (d), no
    augmentation, the model in eval mode with its running averages. (d) vs (e) is the
    statistics mismatch measured on the training set alone: the same images, the same
    weights, only the statistics differ (g-sample batch statistics vs the running
    averages), so neither augmentation nor the test set's difference enters it.

All five run on deep copies with the global RNG restored, so the model (weights,
running averages, step counters) and the random stream are left exactly as they
were. The grouped forward is ``bnlab.train.probes.grouped_pass``: many groups per
forward, each normalised by its own statistics.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.data import Dataset, DeviceLoader
from bnlab.train.loop import evaluate
from bnlab.train.probes import (
    StatsRecord,
    batch_stats_accuracy,
    grouped_pass,
    isolated_rng,
    statistics_size,
)
from bnlab.train.runtime import Runtime
from bnlab.train.spec import TrainSpec

# Norm kinds with batch statistics and nothing else: the recipe's train_spec sets
# spec.evals.bn_modes for these only.
BN_MODE_KINDS = ("bn", "ghost_bn")
# fvcore's update_bn_stats uses 200 batches; 100 (plenty for the statistics of a frozen
# net) halves this probe's cost, which at preset=cpu exceeded the training's.
PRECISE_BATCHES = 100
SHUFFLES = 2  # test-set shuffles for (c); each shuffle's accuracy is recorded


def _forever(loader: DeviceLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for epoch in itertools.count():
        yield from loader.epoch(epoch)


def precise_statistics(
    model: nn.Module, loader: DeviceLoader, batches: int, rt: Runtime
) -> nn.Module:
    """A copy of ``model`` whose BN running averages are precise: the average of the
    per-batch means and unbiased variances over ``batches`` batches of ``loader``
    (one group each: loader.batch_size is the statistics size), epochs cycled as needed."""
    probe = copy.deepcopy(model)
    record: StatsRecord = {}
    grouped_pass(probe, itertools.islice(_forever(loader), batches), loader.batch_size, rt, record)
    with torch.no_grad():
        for layer, (mean_sum, var_sum, groups) in record.items():
            assert isinstance(layer, nn.BatchNorm2d)
            assert layer.running_mean is not None and layer.running_var is not None
            layer.running_mean.copy_(mean_sum / groups)
            layer.running_var.copy_(var_sum / groups)
    return probe


@torch.no_grad()
def running_pass(
    probe: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    chunk: int,
    rt: Runtime,
) -> tuple[float, int, int]:
    """(summed cross-entropy, correct, images) of ``probe`` in eval mode -- BN with its
    running averages, so the grouping does not matter -- over ``batches``, concatenated
    into forwards of at least ``chunk`` images (the loader's small groups of g would
    make one launch each). ``probe`` must be a copy: it is put in eval mode."""
    probe.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in _chunks(batches, chunk):
        with rt.autocast():
            logits = probe(x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(dim=1) == y).sum())
        n += y.numel()
    return loss_sum, correct, n


def _chunks(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]], chunk: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    pending = 0
    for x, y in batches:
        xs.append(x)
        ys.append(y)
        pending += y.numel()
        if pending >= chunk:
            yield torch.cat(xs), torch.cat(ys)
            xs, ys, pending = [], [], 0
    if xs:
        yield torch.cat(xs), torch.cat(ys)


def bn_modes(
    model: nn.Module,
    data: Dataset,
    spec: TrainSpec,
    running_acc: float,
    *,
    batches: int = PRECISE_BATCHES,
    shuffles: int = SHUFFLES,
) -> dict[str, Any]:
    """The five evaluations (module docstring) for summary.json.

    For a BN or Ghost BN model (BN_MODE_KINDS): ``spec.evals.bn_modes`` says whether
    a run's norm is one. The loaders are built from ``data`` as ``spec`` says
    (``spec.evals``' batch sizes and augmentation, ``spec.seed``'s shuffles).
    """
    rt, evals = spec.runtime, spec.evals
    g = statistics_size(model, evals.train_batch_size)

    def loader(x: torch.Tensor, y: torch.Tensor, batch: int, augment: bool) -> DeviceLoader:
        # train=True: shuffled (the test set is stored class by class), last partial dropped.
        return DeviceLoader(
            x, y, batch, train=True, augment=augment, mean=data.mean, std=data.std,
            device=rt.device, seed=spec.seed, channels_last=rt.channels_last,
        )  # fmt: skip

    test = DeviceLoader(
        data.test_x, data.test_y, evals.batch_size, train=False, augment=False,
        mean=data.mean, std=data.std, device=rt.device, channels_last=rt.channels_last,
    )  # fmt: skip
    with isolated_rng(rt):
        train_groups = loader(data.train_x, data.train_y, g, evals.augment)
        precise = precise_statistics(model, train_groups, batches, rt)
        _, precise_acc = evaluate(precise, test, rt)
        test_groups = loader(data.test_x, data.test_y, g, False)
        per_shuffle = [batch_stats_accuracy(model, test_groups, rt, s) for s in range(shuffles)]
        plain = loader(data.train_x, data.train_y, g, False)
        loss_sum, correct, n = grouped_pass(copy.deepcopy(model), plain.epoch(0), g, rt)
        # (e): epoch(0) again is the same shuffle, so the same images as (d).
        run_loss, run_correct, _ = running_pass(
            copy.deepcopy(model), plain.epoch(0), evals.batch_size, rt
        )
    return {
        "g": g,
        "running_acc": running_acc,
        "precise_acc": precise_acc,
        "batch_stats_acc": sum(per_shuffle) / len(per_shuffle),
        "batch_stats_acc_shuffles": per_shuffle,
        "train_mode_loss": loss_sum / max(1, n),
        "train_mode_acc": correct / max(1, n),
        "train_running_loss": run_loss / max(1, n),
        "train_running_acc": run_correct / max(1, n),
        "precise_batches": batches,
        "shuffles": shuffles,
        "test_images_per_shuffle": test_groups.num_images(),
        "train_images": n,
    }
