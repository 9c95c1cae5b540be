"""A sweep's size in training images (bnlab.sweep.budget), printed by `bnlab sweep`."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from bnlab.sweep.budget import Budget, budget, training_images
from tests.conftest import run_bnlab


def _cfg(train_size: int | None, batch: int = 128, epochs: int = 4, name: str = "cifar10_jpeg"):
    return OmegaConf.create(
        {"data": {"name": name, "train_size": train_size, "batch_size": batch},
         "train": {"epochs": epochs}}
    )  # fmt: skip


@pytest.mark.parametrize(
    ("cfg", "images"),
    [
        (_cfg(5000), 39 * 128 * 4),  # whole batches only: 5000 // 128 = 39
        (_cfg(None, epochs=5), 390 * 128 * 5),  # all of CIFAR-10's 50,000
        (_cfg(None, batch=2, epochs=1, name="fashion_mnist"), 60_000),
    ],
)
def test_a_runs_training_images_are_its_whole_schedule(cfg, images):
    assert training_images(cfg) == images


def test_a_run_shared_by_two_experiments_counts_once():
    a, b = _cfg(1280, epochs=1), _cfg(2560, epochs=1)
    got = budget([("a", a, True), ("b", b, False), ("a", a, True)])
    assert got == Budget(total=1280 + 2560, to_train=2560)
    assert got.describe() == "3,840 training images (2,560 to train)"
    assert Budget(37_840_000, 0).describe() == "37.84M training images (0 to train)"


def test_the_dry_run_prints_the_budget(tmp_path):
    proc = run_bnlab(
        "sweep", "train.seed=0,1", "preset=smoke", "data.train_size=256", "--dry-run",
        f"paths.runs={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # Two runs of 256 images (2 batches of 128) x 2 epochs (preset=smoke), none trained.
    assert "budget: 1,024 training images (1,024 to train)" in proc.stdout
