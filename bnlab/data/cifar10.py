"""The official CIFAR-10 (python version): pickled batches, from a folder, tarball or download.

``data.root=DIR`` looks for ``DIR/cifar-10-batches-py/``, then for
``DIR/cifar-10-python.tar.gz`` (md5-checked, extracted into DIR), and
otherwise downloads the tarball into DIR when ``data.download`` is true.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from bnlab.data.cache import cache_path, cached
from bnlab.data.dataset import Dataset
from bnlab.data.files import file_digest, repo_data_dir
from bnlab.errors import BnlabError, first_line

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TARBALL = "cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
VARIANT = "CIFAR-10"
DOWNLOAD_TIMEOUT_S = 60


def default_root() -> Path:
    return repo_data_dir() / "cifar10"


def load(root: str | None, *, download: bool) -> Dataset:
    root_dir = Path(root) if root else default_root()
    folder = locate(root_dir, download=download)
    return cached(cache_path(root_dir, "cifar10", _fingerprint(folder)), lambda: read(folder))


def locate(root: Path, *, download: bool) -> Path:
    """The batches folder under ``root``, extracting or downloading the tarball if needed."""
    folder = root / FOLDER
    if folder.is_dir():
        return folder
    tarball = root / TARBALL
    if not tarball.is_file():
        if not download:
            raise BnlabError(
                f"CIFAR-10 not found: neither {folder} nor {tarball} exists "
                "(put one there, set data.root=DIR, or allow data.download=true)"
            )
        _download(tarball)
    _check_md5(tarball)
    _extract(tarball, root)
    if not folder.is_dir():
        raise BnlabError(f"{tarball} does not contain the folder {FOLDER}/")
    return folder


def _check_md5(tarball: Path) -> None:
    actual = file_digest(tarball, "md5")
    if actual != MD5:
        raise BnlabError(
            f"{tarball} has md5 {actual}, expected {MD5} (incomplete download or another file?)"
        )


def _extract(tarball: Path, root: Path) -> None:
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            # The "data" filter refuses absolute paths, links out of root, device
            # files, ...; Pythons before 3.10.12 lack it, and the md5 check above
            # already pins the archive to the known official one.
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, filter="data")
            else:
                tar.extractall(root)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise BnlabError(f"cannot extract {tarball} into {root}: {e}") from None


def _download(tarball: Path) -> None:
    """Fetch the official tarball to ``tarball`` (atomically: no half file is left behind)."""
    tmp: str | None = None
    try:
        tarball.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=tarball.parent, prefix=TARBALL + ".", suffix=".part")
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(URL, timeout=DOWNLOAD_TIMEOUT_S) as response,
        ):
            shutil.copyfileobj(response, out, 1 << 20)
        os.replace(tmp, tarball)
        tmp = None
    except Exception as e:  # URLError, timeouts, HTTP errors, a read-only DIR: all "no file"
        raise BnlabError(
            f"could not download CIFAR-10 from {URL} ({e}); "
            f"download it yourself and put {TARBALL} in {tarball.parent}"
        ) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _fingerprint(folder: Path) -> str:
    """A cheap identity for the batch files (name, size, mtime) to key the cache.

    Hashing the 180 MB of pickles would cost more than reading them; a changed
    or re-extracted file changes its mtime and so just triggers a rebuild.
    """
    h = hashlib.sha256()
    for name in (*TRAIN_BATCHES, TEST_BATCH, META):
        path = folder / name
        try:
            st = path.stat()
        except OSError:
            raise BnlabError(f"CIFAR-10 batch file {path} is missing") from None
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def read(folder: Path) -> Dataset:
    """Decode the batches exactly as torchvision's CIFAR10 does."""
    train = [_read_batch(folder / name) for name in TRAIN_BATCHES]
    test_x, test_y = _read_batch(folder / TEST_BATCH)
    meta = _unpickle(folder / META)
    classes = meta.get("label_names") if isinstance(meta, dict) else None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise BnlabError(f"{folder / META} has no list of 'label_names'")
    train_y = np.concatenate([y for _, y in train])
    for path, y in ((folder / TRAIN_BATCHES[0], train_y), (folder / TEST_BATCH, test_y)):
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < len(classes):
            raise BnlabError(f"{path}: labels outside 0..{len(classes) - 1}")
    return Dataset.from_numpy(
        np.concatenate([x for x, _ in train]),
        train_y,
        test_x,
        test_y,
        classes=classes,
        variant=VARIANT,
    )


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings, bytes, numbers and numpy arrays, and nothing else.

    A pickle names the functions it calls to rebuild objects (find_class): a
    numpy array needs the four numpy names below; bytes in a Python 3 protocol-2
    pickle need _codecs.encode (here a latin1-only stand-in). Anything else
    (os.system, builtins.eval, ...) is refused before it is called, so a crafted
    file under data.root cannot run code.
    """

    @staticmethod
    def _allowed() -> dict[tuple[str, str], object]:
        try:
            from numpy._core.multiarray import _reconstruct  # numpy >= 2
        except ImportError:  # numpy 1.x
            from numpy.core.multiarray import _reconstruct
        # The 2009 batches name numpy.core (numpy 1.x); numpy 2 pickles name numpy._core.
        return {
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_bytes,
        }

    def find_class(self, module: str, name: str) -> object:
        allowed = self._allowed().get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a batch never needs")
        return allowed


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3 protocol-2 pickles call to rebuild bytes: _codecs.encode(text, "latin1")."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"it asks for _codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _unpickle(path: Path) -> object:
    # The batches are Python 2 pickles: latin1 turns their byte strings back
    # into the original bytes (numpy's array data) and str keys. The files under
    # data.root are not ours, so only what a batch needs may be unpickled.
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="latin1").load()
    except FileNotFoundError:
        raise BnlabError(f"CIFAR-10 batch file {path} is missing") from None
    except Exception as e:  # UnpicklingError, EOFError, ... : whatever it is, it is not a batch
        raise BnlabError(f"{path} is not a readable CIFAR-10 batch ({first_line(e)})") from None


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise BnlabError(f"{path} is not a CIFAR-10 batch (no 'data'/'labels')")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise BnlabError(f"{path}: 'data' is not a uint8 matrix")
    if data.shape[1] != 3 * 32 * 32 or len(labels) != data.shape[0]:
        raise BnlabError(f"{path}: 'data' is {data.shape}, expected (N, 3072) with N labels")
    # Rows are 1024 R, then 1024 G, then 1024 B values: CHW per image -> NHWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64)
