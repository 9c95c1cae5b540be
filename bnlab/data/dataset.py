"""The in-memory dataset every source produces, and class-balanced subsets of it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bnlab.errors import BnlabError


@dataclass(frozen=True)
class Dataset:
    """A whole labelled image dataset held as uint8 NHWC tensors on the CPU.

    ``mean``/``std`` are per-channel statistics of the *full* training set in
    [0, 1] units; subsets keep them, so a 10k-subset run normalises exactly
    like a full run.
    """

    train_x: torch.Tensor  # uint8 (N, H, W, C), contiguous
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    variant: str  # label for results, e.g. "CIFAR-10 (JPEG q75)"
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        # Invariants, checked once: a cache file that passes them is safe to use,
        # and a source that breaks them is a bug caught here, not in training.
        for split in ("train", "test"):
            x: torch.Tensor = getattr(self, f"{split}_x")
            y: torch.Tensor = getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.dim() != 4 or not x.is_contiguous():
                raise ValueError(f"{split}_x must be contiguous uint8 (N, H, W, C)")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(f"{split}_y must be int64 of shape ({x.shape[0]},)")
            if len(y) and not (int(y.min()) >= 0 and int(y.max()) < len(self.classes)):
                raise ValueError(f"{split}_y has labels outside 0..{len(self.classes) - 1}")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError("train and test images differ in shape")
        channels = self.train_x.shape[3]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std must have {channels} entries (one per channel)")
        if not all(s > 0 for s in self.std):
            raise ValueError("std must be positive")

    @classmethod
    def from_numpy(
        cls,
        train_x: np.ndarray,
        train_y: np.ndarray,
        test_x: np.ndarray,
        test_y: np.ndarray,
        *,
        classes: tuple[str, ...] | list[str],
        variant: str,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> Dataset:
        """Wrap decoded arrays (no copy when already contiguous); computes mean/std if not given."""
        if mean is None or std is None:
            mean, std = channel_stats(train_x)
        return cls(
            train_x=torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.uint8)),
            train_y=torch.from_numpy(np.ascontiguousarray(train_y, dtype=np.int64)),
            test_x=torch.from_numpy(np.ascontiguousarray(test_x, dtype=np.uint8)),
            test_y=torch.from_numpy(np.ascontiguousarray(test_y, dtype=np.int64)),
            classes=tuple(str(c) for c in classes),
            variant=variant,
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
        )


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 NHWC images, in [0, 1] units.

    A 256-bin histogram per channel makes this exact (no float32 summation error
    over 50M values) and needs no float copy of the data.
    """
    means, stds = [], []
    values = np.arange(256, dtype=np.float64) / 255.0
    flat = x.reshape(-1, x.shape[-1])
    for c in range(flat.shape[1]):
        counts = np.bincount(flat[:, c], minlength=256).astype(np.float64)
        total = counts.sum()
        mean = float(counts @ values / total)
        var = float(counts @ (values - mean) ** 2 / total)
        means.append(mean)
        stds.append(var**0.5)
    return tuple(means), tuple(stds)


def balanced_subset(
    x: torch.Tensor, y: torch.Tensor, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A class-balanced random subset of ``size`` samples, deterministic for ``seed``.

    Every class present in ``y`` gets ``size // n_classes`` samples; the
    remainder goes one each to the lowest-numbered classes. The result is in a
    seed-shuffled order (classes interleaved), the same on every call.
    """
    labels = torch.unique(y)
    n_classes = len(labels)
    if size < n_classes:
        raise BnlabError(f"subset size {size} is smaller than the number of classes ({n_classes})")
    per_class, remainder = divmod(size, n_classes)

    gen = torch.Generator().manual_seed(seed)
    # One permutation of everything, then the first k of each class in that
    # order: a uniform random choice per class, with a single RNG draw.
    perm = torch.randperm(len(y), generator=gen)
    y_perm = y[perm]
    chosen = []
    for i, label in enumerate(labels.tolist()):
        want = per_class + (1 if i < remainder else 0)
        members = perm[y_perm == label]
        if len(members) < want:
            raise BnlabError(
                f"subset size {size} needs {want} samples of class {label}, "
                f"but only {len(members)} exist"
            )
        chosen.append(members[:want])
    index = torch.cat(chosen)
    index = index[torch.randperm(len(index), generator=gen)]
    return x[index].contiguous(), y[index].contiguous()
