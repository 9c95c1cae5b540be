"""``load_dataset``: pick the source named by the config, then take the configured subsets."""

from __future__ import annotations

import torch

from bnlab.config import DATASETS, DataConfig
from bnlab.data import cifar10, cifar10_jpeg, fashion_mnist
from bnlab.data.dataset import Dataset, balanced_subset
from bnlab.errors import BnlabError


def load_full(cfg: DataConfig) -> Dataset:
    """The whole dataset of ``cfg.name`` (verified, decoded or read from the cache)."""
    if cfg.name == "cifar10_jpeg":
        return cifar10_jpeg.load(cfg.root)
    if cfg.name == "cifar10":
        return cifar10.load(cfg.root, download=cfg.download)
    if cfg.name == "fashion_mnist":
        return fashion_mnist.load(cfg.root)
    raise BnlabError(f"data.name={cfg.name!r} is not one of: {', '.join(DATASETS)}")


def load_dataset(cfg: DataConfig) -> Dataset:
    """The dataset of ``cfg``, cut to class-balanced ``train_size``/``test_size`` subsets.

    mean/std stay those of the full training set, so a subset run normalises
    its inputs exactly like a full run.
    """
    full = load_full(cfg)
    train_x, train_y = full.train_x, full.train_y
    test_x, test_y = full.test_x, full.test_y
    if cfg.train_size is not None:
        train_x, train_y = _subset("data.train_size", train_x, train_y, cfg.train_size, cfg)
    if cfg.test_size is not None:
        test_x, test_y = _subset("data.test_size", test_x, test_y, cfg.test_size, cfg)
    return Dataset(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        classes=full.classes,
        variant=full.variant,
        mean=full.mean,
        std=full.std,
    )


def curve_subset(data: Dataset, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The test images of the per-epoch curves (``data.curve_test_size``), or None for all.

    Class-balanced and drawn with ``data.subset_seed`` alone, so every epoch and
    every seed of a grid sees the same images.
    """
    size = cfg.curve_test_size
    if size is None:
        return None
    if size > data.test_x.shape[0]:
        raise BnlabError(
            f"data.curve_test_size={size} is larger than the test set "
            f"({data.test_x.shape[0]} images in {cfg.name})"
        )
    return _subset("data.curve_test_size", data.test_x, data.test_y, size, cfg)


def _subset(
    key: str, x: torch.Tensor, y: torch.Tensor, size: int, cfg: DataConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return balanced_subset(x, y, size, cfg.subset_seed)
    except BnlabError as e:
        raise BnlabError(f"{key}={size}: {e} in {cfg.name}") from None
