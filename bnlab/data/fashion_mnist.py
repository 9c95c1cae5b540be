"""Fashion-MNIST from its idx files (raw or .gz), e.g. Debian's dataset-fashion-mnist package."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from bnlab.data.dataset import Dataset
from bnlab.errors import BnlabError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
VARIANT = "Fashion-MNIST"
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_UBYTE = 0x08  # idx type code for unsigned bytes, the only one Fashion-MNIST uses


def load(root: str | None) -> Dataset:
    root_dir = Path(root) if root else DEFAULT_ROOT
    arrays = {key: read_idx(_find(root_dir, name)) for key, name in FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        where = root_dir / FILES[f"{split}_x"]
        if x.ndim != 3 or y.ndim != 1:
            raise BnlabError(
                f"{where}: expected 3-d images and 1-d labels, got {x.ndim}-d/{y.ndim}-d"
            )
        if len(x) != len(y):
            raise BnlabError(f"{where}: {len(x)} images but {len(y)} labels")
        if len(y) and int(y.max()) >= len(CLASSES):
            raise BnlabError(f"{root_dir / FILES[f'{split}_y']}: label {int(y.max())} is not 0..9")
    return Dataset.from_numpy(
        arrays["train_x"][..., None],  # (N, 28, 28) -> NHWC with one channel
        arrays["train_y"].astype(np.int64),
        arrays["test_x"][..., None],
        arrays["test_y"].astype(np.int64),
        classes=CLASSES,
        variant=VARIANT,
    )


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise BnlabError(
        f"Fashion-MNIST file {name}(.gz) not found in {root} "
        "(apt-get install dataset-fashion-mnist, or set data.root=DIR)"
    )


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file: 2 zero bytes, type code, ndim, ndim big-endian uint32 dims, data."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise BnlabError(f"cannot read {path}: {e}") from None

    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise BnlabError(f"{path} is not an idx file (bad magic number)")
    if raw[2] != _UBYTE:
        raise BnlabError(f"{path}: idx type code 0x{raw[2]:02x} is not unsigned byte (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise BnlabError(f"{path}: truncated idx header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise BnlabError(
            f"{path}: header says {'x'.join(map(str, dims))} = {expected} bytes of data, "
            f"file has {len(raw) - header}"
        )
    # Copy so the array owns writable memory (torch.from_numpy warns on read-only buffers).
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()
