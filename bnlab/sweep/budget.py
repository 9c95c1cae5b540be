"""A sweep's size in training images: images x epochs summed over its runs.

Wall time depends on the machine (speeds vary 3x between this project's CPUs), so a
suite's size is fixed and compared in training images, the same on every machine:
`bnlab sweep ... --dry-run` prints it. A run's count is what its full schedule would
train (whole batches of its training set, every epoch); a run that diverges stops
early and trains fewer. A run shared by several experiments counts once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Training images of each dataset bnlab reads (data.train_size=null: all of them).
FULL_TRAIN_IMAGES = {"cifar10": 50_000, "cifar10_jpeg": 50_000, "fashion_mnist": 60_000}


def training_images(cfg: Any) -> int:
    """Images run `cfg` trains on over its whole schedule (whole batches, every epoch)."""
    data = cfg.data
    size = data.train_size if data.train_size is not None else FULL_TRAIN_IMAGES[data.name]
    return (int(size) // int(data.batch_size)) * int(data.batch_size) * int(cfg.train.epochs)


@dataclass(frozen=True)
class Budget:
    total: int  # every distinct run's training images
    to_train: int  # those of the runs not finished yet (an unfinished run: all of them)

    def describe(self) -> str:
        return f"{_millions(self.total)} training images ({_millions(self.to_train)} to train)"


def budget(runs: Iterable[tuple[str, Any, bool]]) -> Budget:
    """The budget of (run name, config, finished) triples; a name seen twice counts once."""
    seen: dict[str, tuple[int, bool]] = {}
    for name, cfg, finished in runs:
        seen.setdefault(name, (training_images(cfg), finished))
    return Budget(sum(n for n, _ in seen.values()), sum(n for n, done in seen.values() if not done))


def _millions(images: int) -> str:
    return f"{images / 1e6:.2f}M" if images >= 10_000 else f"{images:,}"
