"""The bundled CIFAR-10: all 60k images re-encoded as JPEG q75, in one SHA-256-pinned tarball.

Layout: ``cifar10-jpeg/{train,test}/<class>/<nnnn>.jpg``. Images are decoded
straight from the tarball (no extraction) once, then served from the cache.
"""

from __future__ import annotations

import io
import re
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from bnlab.data.cache import cache_path, cached
from bnlab.data.dataset import Dataset
from bnlab.data.files import file_digest, read_sha256_file, repo_data_dir
from bnlab.errors import BnlabError

TARBALL = "cifar10-jpeg.tar.gz"
# Pinned here as well as in the .sha256 file beside the tarball: losing that
# file is harmless, but results labelled VARIANT must come from exactly this data.
SHA256 = "efac85c8ed52f4ead1e1f1b670d8dcf435d551fccebdd8b6365e0a01a504f3a4"
VARIANT = "CIFAR-10 (JPEG q75)"
# CIFAR-10's label order; labels come from a folder's position here, not from sorting.
CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGE_SHAPE = (32, 32, 3)
_MEMBER = re.compile(r"^(?:\./)?cifar10-jpeg/(train|test)/([^/]+)/(\d+)\.jpg$")


def load(root: str | None) -> Dataset:
    root_dir = Path(root) if root else repo_data_dir()
    tarball = root_dir / TARBALL
    if not tarball.is_file():
        raise BnlabError(
            f"bundled CIFAR-10 not found: {tarball} does not exist "
            f"(set data.root=DIR to the folder that holds {TARBALL})"
        )
    digest = verify(tarball)
    return cached(cache_path(root_dir, "cifar10_jpeg", digest), lambda: decode(tarball))


def verify(tarball: Path) -> str:
    """Check the tarball against its .sha256 file (if present) and the pinned hash."""
    actual = file_digest(tarball, "sha256")
    sidecar = tarball.with_name(tarball.name + ".sha256")
    listed = read_sha256_file(sidecar)
    if listed is not None and listed != actual:
        raise BnlabError(
            f"{tarball} does not match {sidecar.name}: sha256 {actual}, expected {listed} "
            "(incomplete or corrupt copy?)"
        )
    if actual != SHA256:
        raise BnlabError(
            f"{tarball} is not the dataset bnlab expects: sha256 {actual}, expected {SHA256}"
        )
    return actual


def decode(tarball: Path) -> Dataset:
    """Decode every JPEG in the tarball into uint8 arrays, checking the layout as it goes."""
    found: dict[str, dict[tuple[int, int], np.ndarray]] = {"train": {}, "test": {}}
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                match = _MEMBER.match(member.name)
                if match is None:
                    raise BnlabError(
                        f"{tarball}: unexpected member {member.name!r} "
                        "(expected cifar10-jpeg/<train|test>/<class>/<n>.jpg)"
                    )
                split, name, number = match.groups()
                if name not in CLASSES:
                    raise BnlabError(f"{tarball}: unknown class folder {name!r} in {member.name}")
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                key = (CLASSES.index(name), int(number))
                found[split][key] = _decode_jpeg(data, tarball, member.name)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise BnlabError(f"{tarball} is corrupt or truncated: cannot read it ({e})") from None

    train_x, train_y = _assemble(found["train"], tarball, "train")
    test_x, test_y = _assemble(found["test"], tarball, "test")
    return Dataset.from_numpy(train_x, train_y, test_x, test_y, classes=CLASSES, variant=VARIANT)


def _decode_jpeg(data: bytes, tarball: Path, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                raise BnlabError(f"{tarball}: {name} is a {image.format} file, not a JPEG")
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise BnlabError(f"{tarball}: {name} is not a readable JPEG ({e})") from None
    if pixels.shape != IMAGE_SHAPE:
        raise BnlabError(f"{tarball}: {name} has shape {pixels.shape}, expected {IMAGE_SHAPE}")
    return pixels


def _assemble(
    images: dict[tuple[int, int], np.ndarray], tarball: Path, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """Stack one split in (label, file number) order after checking nothing is missing."""
    for label, name in enumerate(CLASSES):
        numbers = sorted(n for (lab, n) in images if lab == label)
        # Files are numbered 0000..n-1 per class: a gap means a lost image.
        if not numbers or numbers != list(range(len(numbers))):
            raise BnlabError(
                f"{tarball}: {split}/{name}/ is empty or has gaps in its numbering "
                f"({len(numbers)} images, highest number {max(numbers, default=-1)})"
            )
    keys = sorted(images)
    x = np.stack([images[k] for k in keys])
    y = np.array([label for label, _ in keys], dtype=np.int64)
    return x, y
