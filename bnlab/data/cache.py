"""A disk cache of decoded datasets, so the slow decode happens once per source file.

The cache is an optimisation only: any problem reading it means "rebuild", and
any problem writing it means "run without it". The file name carries a hash of
the source, so a changed source never meets a stale cache.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bnlab.data.dataset import Dataset

log = logging.getLogger(__name__)

# Bump when the stored layout changes, so old cache files are simply ignored.
FORMAT_VERSION = 1


def cache_dir(root: Path) -> Path:
    """$BNLAB_CACHE if set, else ``<root>/cache``."""
    env = os.environ.get("BNLAB_CACHE")
    return Path(env) if env else root / "cache"


def cache_path(root: Path, source: str, source_hash: str) -> Path:
    return cache_dir(root) / f"{source}-{source_hash[:16]}-v{FORMAT_VERSION}.npz"


def cached(path: Path, build: Callable[[], Dataset]) -> Dataset:
    """Load the dataset cached at ``path``, or build it and try to cache it."""
    dataset = _load(path)
    if dataset is None:
        dataset = build()
        _save(path, dataset)
    return dataset


def _load(path: Path) -> Dataset | None:
    if not path.is_file():
        return None
    try:
        # An uncompressed .npz: one sequential read, ~0.2 s for CIFAR-10; zipfile
        # checks each member's CRC, so a damaged file fails here, not in training.
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
        return Dataset.from_numpy(
            arrays["train_x"],
            arrays["train_y"],
            arrays["test_x"],
            arrays["test_y"],
            classes=[str(c) for c in arrays["classes"]],
            variant=str(arrays["variant"]),
            mean=tuple(arrays["mean"].tolist()),
            std=tuple(arrays["std"].tolist()),
        )
    except Exception as e:  # whatever is wrong with the file, rebuilding it fixes it
        log.info("ignoring unreadable dataset cache %s (%s); rebuilding it", path, e)
        return None


def _save(path: Path, dataset: Dataset) -> None:
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary name in the same folder, then rename: readers
        # (including a concurrent run) see either no file or a complete one.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                train_x=dataset.train_x.numpy(),
                train_y=dataset.train_y.numpy(),
                test_x=dataset.test_x.numpy(),
                test_y=dataset.test_y.numpy(),
                classes=np.array(dataset.classes),
                variant=np.array(dataset.variant),
                mean=np.array(dataset.mean, dtype=np.float64),
                std=np.array(dataset.std, dtype=np.float64),
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a shared cache should be readable
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        # Read-only data folder, full disk, ...: caching is optional.
        log.warning("not caching the decoded dataset at %s (%s)", path, e)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
