"""bnlab.data: the three sources (on small fixtures), subsets, the cache and DeviceLoader."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import bnlab
from bnlab.config import DataConfig
from bnlab.data import (
    Dataset,
    DeviceLoader,
    balanced_subset,
    cifar10,
    cifar10_jpeg,
    fashion_mnist,
    load_dataset,
)
from bnlab.data.files import repo_data_dir
from bnlab.errors import BnlabError


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test caches into its own folder, never into the repository's data/cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BNLAB_CACHE", str(cache))
    return cache


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ============================================================================ official CIFAR-10

CIFAR_CLASSES = list(cifar10_jpeg.CLASSES)
PER_BATCH = 4


def _legacy_pickle(obj: object) -> bytes:
    """Protocol 2, with numpy arrays referenced the way the 2009 Python 2 files do."""
    data = pickle.dumps(obj, protocol=2)
    # numpy 2 writes numpy._core; the originals name numpy.core (GLOBAL opcodes
    # are newline-terminated text, so the swap keeps the pickle valid).
    return data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def _write_cifar_folder(root: Path) -> dict[str, np.ndarray]:
    """Official-format batches with random pixels; returns the expected NHWC arrays."""
    folder = root / cifar10.FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for name in (*cifar10.TRAIN_BATCHES, cifar10.TEST_BATCH):
        data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=PER_BATCH)]
        if name == "data_batch_1":
            # A distinctive pixel at (row 2, col 5) of the first image: R, G, B
            # live at offsets 0, 1024, 2048 of the row-major 32x32 planes.
            data[0, 2 * 32 + 5] = 201
            data[0, 1024 + 2 * 32 + 5] = 77
            data[0, 2048 + 2 * 32 + 5] = 13
        (folder / name).write_bytes(
            _legacy_pickle({"batch_label": name, "labels": labels, "data": data, "filenames": []})
        )
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.array(labels))
    meta = {"label_names": CIFAR_CLASSES, "num_cases_per_batch": PER_BATCH, "num_vis": 3072}
    (folder / cifar10.META).write_bytes(_legacy_pickle(meta))
    return {
        "train_x": np.concatenate(xs[:5]),
        "train_y": np.concatenate(ys[:5]),
        "test_x": xs[5],
        "test_y": ys[5],
    }


def _cifar_tarball(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The fixture batches packed as cifar-10-python.tar.gz in a fresh root (folder removed)."""
    build = tmp_path / "build"
    expected = _write_cifar_folder(build)
    root = tmp_path / "root"
    root.mkdir()
    tarball = root / cifar10.TARBALL
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(build / cifar10.FOLDER, arcname=cifar10.FOLDER)
    return tarball, expected


def _assert_matches(dataset: Dataset, expected: dict[str, np.ndarray]) -> None:
    for key, value in expected.items():
        np.testing.assert_array_equal(getattr(dataset, key).numpy(), value)


def test_cifar10_folder_round_trips_pixels_in_nhwc(tmp_path: Path) -> None:
    expected = _write_cifar_folder(tmp_path)
    ds = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False))
    assert ds.train_x.shape == (5 * PER_BATCH, 32, 32, 3) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (PER_BATCH, 32, 32, 3) and ds.train_y.dtype == torch.int64
    assert ds.train_x[0, 2, 5].tolist() == [201, 77, 13]  # R lands in channel 0
    _assert_matches(ds, expected)
    assert ds.classes == tuple(CIFAR_CLASSES) and ds.variant == "CIFAR-10"
    mean = expected["train_x"].reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(ds.mean, mean, rtol=1e-9)


def test_cifar10_tarball_is_md5_checked_and_extracted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball, expected = _cifar_tarball(tmp_path)
    monkeypatch.setattr(cifar10, "MD5", hashlib.md5(tarball.read_bytes()).hexdigest())
    ds = load_dataset(DataConfig(name="cifar10", root=str(tarball.parent), download=False))
    _assert_matches(ds, expected)
    assert (tarball.parent / cifar10.FOLDER / "data_batch_5").is_file()


def test_cifar10_tarball_with_wrong_md5_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball, _ = _cifar_tarball(tmp_path)
    monkeypatch.setattr(cifar10, "MD5", "0" * 32)
    with pytest.raises(BnlabError, match="md5") as info:
        load_dataset(DataConfig(name="cifar10", root=str(tarball.parent), download=False))
    assert str(tarball) in str(info.value)
    assert not (tarball.parent / cifar10.FOLDER).exists()  # nothing extracted


def test_cifar10_missing_without_download_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BnlabError, match="not found") as info:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False))
    assert str(tmp_path) in str(info.value)


def test_cifar10_download_failure_says_where_to_put_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(url: str, timeout: float) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(BnlabError, match="could not download") as info:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=True))
    assert cifar10.TARBALL in str(info.value) and str(tmp_path) in str(info.value)
    assert not list(tmp_path.glob("*.part"))  # no half download left behind


def test_cifar10_download_then_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tarball, expected = _cifar_tarball(tmp_path)
    payload = tarball.read_bytes()
    monkeypatch.setattr(cifar10, "MD5", hashlib.md5(payload).hexdigest())
    seen = []

    def fake_urlopen(url: str, timeout: float) -> io.BytesIO:
        seen.append((url, timeout))
        return io.BytesIO(payload)

    monkeypatch.setattr("urllib.request.urlopen", fake_urlopen)
    root = tmp_path / "fresh"
    ds = load_dataset(DataConfig(name="cifar10", root=str(root), download=True))
    _assert_matches(ds, expected)
    assert seen == [(cifar10.URL, cifar10.DOWNLOAD_TIMEOUT_S)]
    assert (root / cifar10.TARBALL).is_file()


def test_cifar10_corrupt_batch_is_an_error(tmp_path: Path) -> None:
    _write_cifar_folder(tmp_path)
    bad = tmp_path / cifar10.FOLDER / "data_batch_3"
    bad.write_bytes(b"not a pickle at all")
    with pytest.raises(BnlabError, match="data_batch_3"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False))


def test_cifar10_missing_batch_is_an_error(tmp_path: Path) -> None:
    _write_cifar_folder(tmp_path)
    (tmp_path / cifar10.FOLDER / "test_batch").unlink()
    with pytest.raises(BnlabError, match="test_batch.*missing"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False))


# ============================================================================ bundled JPEG CIFAR-10

JPEG_TRAIN, JPEG_TEST = 2, 1  # images per class in the fixture


def _colour(label: int, number: int, split: str) -> tuple[int, int, int]:
    return (20 * label + 10, 200 - 15 * label, 60 + 40 * number + (30 if split == "test" else 0))


def _jpeg_bytes(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(out, format="JPEG", quality=95)
    return out.getvalue()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_jpeg_tarball(root: Path, members: list[tuple[str, bytes]] | None = None) -> Path:
    """A tiny cifar10-jpeg.tar.gz (+ .sha256); classes written in a scrambled order."""
    root.mkdir(parents=True, exist_ok=True)
    if members is None:
        members = []
        order = [3, 9, 0, 5, 1, 8, 2, 7, 4, 6]  # not label order, not alphabetical
        for split, count in (("test", JPEG_TEST), ("train", JPEG_TRAIN)):
            for label in order:
                for number in reversed(range(count)):
                    name = f"cifar10-jpeg/{split}/{CIFAR_CLASSES[label]}/{number:04d}.jpg"
                    members.append((name, _jpeg_bytes(_colour(label, number, split))))
    tarball = root / cifar10_jpeg.TARBALL
    with tarfile.open(tarball, "w:gz") as tar:
        for directory in ("cifar10-jpeg", "cifar10-jpeg/train", "cifar10-jpeg/test"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members:
            _add_bytes(tar, name, data)
    (root / (tarball.name + ".sha256")).write_text(f"{_sha256(tarball)}  {tarball.name}\n")
    return tarball


@pytest.fixture
def jpeg_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fixture tarball whose hash is the one bnlab pins (monkeypatched)."""
    tarball = _write_jpeg_tarball(tmp_path / "data")
    monkeypatch.setattr(cifar10_jpeg, "SHA256", _sha256(tarball))
    return tarball.parent


def _jpeg_cfg(root: Path, **kwargs: object) -> DataConfig:
    return DataConfig(name="cifar10_jpeg", root=str(root), **kwargs)  # type: ignore[arg-type]


def test_jpeg_load_decodes_labels_by_class_list_position(jpeg_root: Path) -> None:
    ds = load_dataset(_jpeg_cfg(jpeg_root))
    assert ds.train_x.shape == (10 * JPEG_TRAIN, 32, 32, 3)
    assert ds.test_x.shape == (10 * JPEG_TEST, 32, 32, 3)
    assert ds.train_x.is_contiguous() and ds.train_x.dtype == torch.uint8
    assert ds.variant == "CIFAR-10 (JPEG q75)" and ds.classes == tuple(CIFAR_CLASSES)
    for split, count in (("train", JPEG_TRAIN), ("test", JPEG_TEST)):
        x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
        assert torch.bincount(y).tolist() == [count] * 10
        for i in range(len(y)):
            label = int(y[i])
            # Flat colours survive q95 JPEG to within a couple of levels; the
            # colour says which class (and file number) the image came from.
            colours = [_colour(label, n, split) for n in range(count)]
            got = x[i].float().mean(dim=(0, 1))
            assert any(torch.allclose(got, torch.tensor(c).float(), atol=3) for c in colours)
    mean = ds.train_x.reshape(-1, 3).double().mean(0) / 255
    std = (ds.train_x.reshape(-1, 3).double() / 255).std(0, unbiased=False)
    np.testing.assert_allclose(ds.mean, mean.numpy(), rtol=1e-9)
    np.testing.assert_allclose(ds.std, std.numpy(), rtol=1e-9)


def test_jpeg_second_load_uses_the_cache(
    jpeg_root: Path, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_dataset(_jpeg_cfg(jpeg_root))
    files = list(private_cache.iterdir())
    assert len(files) == 1 and cifar10_jpeg.SHA256[:16] in files[0].name
    assert not list(private_cache.glob("*.tmp"))

    def no_tar(*args: object, **kwargs: object) -> None:
        raise AssertionError("the tarball was opened although a cache exists")

    monkeypatch.setattr(cifar10_jpeg.tarfile, "open", no_tar)
    second = load_dataset(_jpeg_cfg(jpeg_root))
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, key), getattr(second, key))
    assert (second.classes, second.variant) == (first.classes, first.variant)
    assert (second.mean, second.std) == (first.mean, first.std)


def test_jpeg_default_cache_folder_is_under_root(
    jpeg_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BNLAB_CACHE")
    load_dataset(_jpeg_cfg(jpeg_root))
    assert len(list((jpeg_root / "cache").glob("cifar10_jpeg-*.npz"))) == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_jpeg_corrupt_cache_is_rebuilt(jpeg_root: Path, private_cache: Path, damage: str) -> None:
    first = load_dataset(_jpeg_cfg(jpeg_root))
    (cache_file,) = private_cache.iterdir()
    data = cache_file.read_bytes()
    damaged = {"garbage": b"\x00junk" * 100, "truncated": data[: len(data) // 2], "empty": b""}
    cache_file.write_bytes(damaged[damage])
    again = load_dataset(_jpeg_cfg(jpeg_root))
    assert torch.equal(again.train_x, first.train_x)
    assert cache_file.read_bytes() == data  # rewritten whole


def test_jpeg_unwritable_cache_dir_is_skipped(
    jpeg_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("BNLAB_CACHE", str(blocker / "cache"))  # cannot be created
    ds = load_dataset(_jpeg_cfg(jpeg_root))
    assert len(ds.train_y) == 10 * JPEG_TRAIN


def test_jpeg_hash_mismatch_against_sidecar_is_an_error(jpeg_root: Path) -> None:
    tarball = jpeg_root / cifar10_jpeg.TARBALL
    with open(tarball, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BnlabError, match="sha256") as info:
        load_dataset(_jpeg_cfg(jpeg_root))
    assert str(tarball) in str(info.value)


def test_jpeg_hash_mismatch_against_pinned_hash_is_an_error(
    jpeg_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (jpeg_root / "cifar10-jpeg.tar.gz.sha256").unlink()
    monkeypatch.setattr(cifar10_jpeg, "SHA256", "f" * 64)
    with pytest.raises(BnlabError, match="not the dataset bnlab expects"):
        load_dataset(_jpeg_cfg(jpeg_root))


def test_jpeg_missing_sidecar_is_not_fatal(jpeg_root: Path) -> None:
    (jpeg_root / "cifar10-jpeg.tar.gz.sha256").unlink()
    assert len(load_dataset(_jpeg_cfg(jpeg_root)).test_y) == 10 * JPEG_TEST


def test_jpeg_malformed_sidecar_is_an_error(jpeg_root: Path) -> None:
    (jpeg_root / "cifar10-jpeg.tar.gz.sha256").write_text("hello\n")
    with pytest.raises(BnlabError, match="sha256sum format"):
        load_dataset(_jpeg_cfg(jpeg_root))


def test_jpeg_missing_tarball_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BnlabError, match="not found") as info:
        load_dataset(_jpeg_cfg(tmp_path))
    assert str(tmp_path / cifar10_jpeg.TARBALL) in str(info.value)


def _accept(tarball: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a damaged tarball pass the checksum, so decoding itself meets the damage."""
    (tarball.parent / (tarball.name + ".sha256")).unlink(missing_ok=True)
    monkeypatch.setattr(cifar10_jpeg, "SHA256", _sha256(tarball))


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_jpeg_truncated_tarball_is_a_clean_error(
    jpeg_root: Path, monkeypatch: pytest.MonkeyPatch, cut: float
) -> None:
    tarball = jpeg_root / cifar10_jpeg.TARBALL
    data = tarball.read_bytes()
    tarball.write_bytes(data[: int(len(data) * cut)])
    _accept(tarball, monkeypatch)
    with pytest.raises(BnlabError, match="corrupt or truncated") as info:
        load_dataset(_jpeg_cfg(jpeg_root))
    assert str(tarball) in str(info.value) and "\n" not in str(info.value)


def test_jpeg_not_a_gzip_is_a_clean_error(jpeg_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tarball = jpeg_root / cifar10_jpeg.TARBALL
    tarball.write_bytes(b"this is not a tarball" * 50)
    _accept(tarball, monkeypatch)
    with pytest.raises(BnlabError, match=str(tarball).replace(".", r"\.")):
        load_dataset(_jpeg_cfg(jpeg_root))


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("cifar10-jpeg/train/airplane/0002.jpg", b"\xff\xd8\xff garbage", "not a readable JPEG"),
        ("cifar10-jpeg/train/unicorn/0000.jpg", None, "unknown class folder"),
        ("cifar10-jpeg/README.txt", b"hi", "unexpected member"),
        ("cifar10-jpeg/train/cat/0007.jpg", None, "gaps"),
    ],
)
def test_jpeg_bad_member_is_a_clean_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    data: bytes | None,
    message: str,
) -> None:
    members = [
        (f"cifar10-jpeg/{split}/{c}/{n:04d}.jpg", _jpeg_bytes((9, 9, 9)))
        for split in ("train", "test")
        for c in CIFAR_CLASSES
        for n in range(2)
    ]
    members.append((name, data if data is not None else _jpeg_bytes((1, 2, 3))))
    tarball = _write_jpeg_tarball(tmp_path / "bad", members)
    _accept(tarball, monkeypatch)
    with pytest.raises(BnlabError, match=message):
        load_dataset(_jpeg_cfg(tarball.parent))


def test_jpeg_wrong_image_size_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.BytesIO()
    Image.new("RGB", (28, 28)).save(out, format="JPEG")
    members = [
        (f"cifar10-jpeg/{split}/{c}/0000.jpg", out.getvalue())
        for split in ("train", "test")
        for c in CIFAR_CLASSES
    ]
    tarball = _write_jpeg_tarball(tmp_path / "small", members)
    _accept(tarball, monkeypatch)
    with pytest.raises(BnlabError, match="shape"):
        load_dataset(_jpeg_cfg(tarball.parent))


def test_default_jpeg_root_is_the_repository_data_folder() -> None:
    assert repo_data_dir() == Path(bnlab.__file__).resolve().parents[1] / "data"


def test_unknown_source_is_an_error() -> None:
    with pytest.raises(BnlabError, match="data.name"):
        load_dataset(DataConfig(name="imagenet"))


def test_load_dataset_subsets_keep_full_statistics(jpeg_root: Path) -> None:
    full = load_dataset(_jpeg_cfg(jpeg_root))
    sub = load_dataset(_jpeg_cfg(jpeg_root, train_size=10, test_size=10, subset_seed=3))
    assert torch.bincount(sub.train_y).tolist() == [1] * 10
    assert len(sub.test_y) == 10
    assert (sub.mean, sub.std) == (full.mean, full.std)
    again = load_dataset(_jpeg_cfg(jpeg_root, train_size=10, test_size=10, subset_seed=3))
    assert torch.equal(sub.train_x, again.train_x) and torch.equal(sub.train_y, again.train_y)
    with pytest.raises(BnlabError, match="data.train_size=30"):
        load_dataset(_jpeg_cfg(jpeg_root, train_size=30))


# ============================================================================ Fashion-MNIST


def _idx(array: np.ndarray, magic_type: int = 0x08) -> bytes:
    header = bytes([0, 0, magic_type, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fashion(root: Path, *, gz: bool, n_train: int = 12, n_test: int = 5) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for key, name in fashion_mnist.FILES.items():
        data = _idx(arrays[key])
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_files(tmp_path: Path, gz: bool) -> None:
    arrays = _write_fashion(tmp_path, gz=gz)
    ds = load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)))
    assert ds.train_x.shape == (12, 28, 28, 1) and ds.test_x.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(ds.train_x[..., 0].numpy(), arrays["train_x"])
    np.testing.assert_array_equal(ds.test_y.numpy(), arrays["test_y"])
    assert ds.train_y.dtype == torch.int64
    assert ds.variant == "Fashion-MNIST" and ds.classes[0] == "T-shirt/top"
    assert len(ds.mean) == len(ds.std) == 1


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"\x12\x34\x08\x03", "bad magic"),
        (b"\x00\x00\x0d\x03", "type code"),
    ],
)
def test_fashion_mnist_bad_header_is_an_error(tmp_path: Path, header: bytes, message: str) -> None:
    _write_fashion(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(header + path.read_bytes()[4:])
    with pytest.raises(BnlabError, match=message) as info:
        load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)))
    assert str(path) in str(info.value)


def test_fashion_mnist_short_data_is_an_error(tmp_path: Path) -> None:
    _write_fashion(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-10]))
    with pytest.raises(BnlabError, match="header says"):
        load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)))


def test_fashion_mnist_corrupt_gzip_is_an_error(tmp_path: Path) -> None:
    _write_fashion(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(BnlabError, match="cannot read"):
        load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)))


def test_fashion_mnist_label_count_mismatch_is_an_error(tmp_path: Path) -> None:
    _write_fashion(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(np.zeros(3, np.uint8)))
    with pytest.raises(BnlabError, match="12 images but 3 labels"):
        load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)))


def test_fashion_mnist_missing_files_suggest_the_package(tmp_path: Path) -> None:
    with pytest.raises(BnlabError, match="apt-get install dataset-fashion-mnist") as info:
        load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)))
    assert str(tmp_path) in str(info.value)


# ============================================================================ balanced_subset


def _unbalanced(n_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Class k has 10 + k samples; x[i] holds i so pairs can be traced."""
    y = torch.cat([torch.full((10 + k,), k) for k in range(n_classes)])
    x = torch.arange(len(y))
    return x, y


def test_balanced_subset_counts_and_pairs() -> None:
    x, y = _unbalanced()
    sx, sy = balanced_subset(x, y, 25, seed=0)
    # 25 = 10 * 2 + 5: the first five classes get one extra each.
    assert torch.bincount(sy, minlength=10).tolist() == [3] * 5 + [2] * 5
    assert torch.equal(y[sx], sy)  # every label still belongs to its sample
    assert len(set(sx.tolist())) == 25  # no sample twice
    assert not torch.equal(sy, torch.sort(sy).values)  # classes interleaved, not blocked


def test_balanced_subset_is_deterministic_per_seed() -> None:
    x, y = _unbalanced()
    a = balanced_subset(x, y, 40, seed=7)
    b = balanced_subset(x, y, 40, seed=7)
    c = balanced_subset(x, y, 40, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert set(a[0].tolist()) != set(c[0].tolist())  # different members, not just order


def test_balanced_subset_takes_everything_when_exact() -> None:
    x, y = _unbalanced()
    keep = y < 2  # classes 0 and 1: 10 and 11 samples
    sx, sy = balanced_subset(x[keep], y[keep], 20, seed=0)
    assert torch.bincount(sy).tolist() == [10, 10]


def test_balanced_subset_errors() -> None:
    x, y = _unbalanced()
    with pytest.raises(BnlabError, match="only 10 exist"):
        balanced_subset(x, y, 101, seed=0)  # class 0 would need 11
    with pytest.raises(BnlabError, match="smaller than the number of classes"):
        balanced_subset(x, y, 9, seed=0)


# ============================================================================ DeviceLoader


def _indexed_images(n: int, h: int = 32, w: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose pixels say (row+1, col+1, sample): zero means padding; label = sample."""
    rows = torch.arange(1, h + 1).view(1, h, 1).expand(n, h, w)
    cols = torch.arange(1, w + 1).view(1, 1, w).expand(n, h, w)
    ids = torch.arange(n).view(n, 1, 1).expand(n, h, w)
    return torch.stack([rows, cols, ids], dim=-1).to(torch.uint8).contiguous(), torch.arange(n)


IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)}  # output == pixel value


def _collect(loader: DeviceLoader, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader.epoch(epoch))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def test_loader_lengths_drop_last_only_in_training() -> None:
    x, y = _indexed_images(10)
    train = DeviceLoader(x, y, 4, train=True, augment=False, **IDENTITY)
    evaluate = DeviceLoader(x, y, 4, train=False, augment=False, **IDENTITY)
    assert (len(train), train.num_images()) == (2, 8)
    assert (len(evaluate), evaluate.num_images()) == (3, 10)
    assert [len(b[1]) for b in train.epoch(0)] == [4, 4]
    assert [len(b[1]) for b in evaluate.epoch(0)] == [4, 4, 2]


def test_loader_eval_yields_everything_once_in_order() -> None:
    x, y = _indexed_images(10)
    loader = DeviceLoader(x, y, 3, train=False, augment=True, **IDENTITY)  # augment ignored
    images, labels = _collect(loader, 5)
    assert torch.equal(labels, y)
    assert torch.equal(images, x.permute(0, 3, 1, 2).float())


def test_loader_train_epoch_is_a_permutation() -> None:
    x, y = _indexed_images(50)
    loader = DeviceLoader(x, y, 8, train=True, augment=False, **IDENTITY)
    images, labels = _collect(loader, 0)
    assert len(labels) == 48 and len(set(labels.tolist())) == 48
    assert not torch.equal(labels, torch.arange(48))  # shuffled
    assert torch.equal(images[:, 2, 0, 0].long(), labels)  # each image travels with its label
    assert torch.equal(images, x[labels].permute(0, 3, 1, 2).float())


def test_loader_epochs_are_reproducible_across_instances() -> None:
    x, y = _indexed_images(40)

    def make(seed: int) -> DeviceLoader:
        return DeviceLoader(x, y, 8, train=True, augment=True, seed=seed, **IDENTITY)

    a, b = make(1), make(1)
    first = _collect(a, 3)
    _collect(b, 0)  # a resumed process may have run other epochs, or none
    again = _collect(b, 3)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], _collect(a, 4)[1])
    assert not torch.equal(first[1], _collect(make(2), 3)[1])


def test_loader_normalisation() -> None:
    x = torch.randint(
        0, 256, (6, 4, 5, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    y = torch.zeros(6, dtype=torch.int64)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    loader = DeviceLoader(x, y, 4, train=False, augment=False, mean=mean, std=std)
    images, labels = _collect(loader, 0)
    expected = (x.permute(0, 3, 1, 2).double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / (
        torch.tensor(std).view(1, 3, 1, 1)
    )
    assert images.dtype == torch.float32 and images.shape == (6, 3, 4, 5)
    assert labels.dtype == torch.int64
    torch.testing.assert_close(images.double(), expected, atol=1e-5, rtol=1e-5)


def test_loader_crop_and_flip_are_crops_of_the_zero_padded_image() -> None:
    n, pad = 64, 4
    x, y = _indexed_images(n)
    loader = DeviceLoader(x, y, 32, train=True, augment=True, seed=0, **IDENTITY)
    padded = F.pad(x.permute(0, 3, 1, 2), (pad, pad, pad, pad)).float()  # (N, C, 40, 40)
    flips, offsets = set(), set()
    for epoch in range(2):
        images, labels = _collect(loader, epoch)
        for image, label in zip(images, labels, strict=True):
            source = padded[label]
            found = None
            for dy in range(2 * pad + 1):
                for dx in range(2 * pad + 1):
                    crop = source[:, dy : dy + 32, dx : dx + 32]
                    for flip in (False, True):
                        if torch.equal(image, crop.flip(-1) if flip else crop):
                            found = (dy, dx, flip)
            assert found is not None, "output is not a (flipped) crop of the padded image"
            offsets.add(found[:2])
            flips.add(found[2])
    assert flips == {False, True}
    assert len(offsets) > 20  # many of the 81 offsets occur


def test_loader_channels_last_and_contiguous_layouts() -> None:
    x, y = _indexed_images(8)
    kwargs = {"train": True, "augment": True, "seed": 3, **IDENTITY}
    plain = next(iter(DeviceLoader(x, y, 4, **kwargs).epoch(0)))[0]
    cl = next(iter(DeviceLoader(x, y, 4, channels_last=True, **kwargs).epoch(0)))[0]
    assert plain.is_contiguous()
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    assert torch.equal(plain, cl)


def test_loader_single_channel_images() -> None:
    x = torch.randint(0, 256, (10, 28, 28, 1), dtype=torch.uint8)
    loader = DeviceLoader(x, torch.arange(10), 5, train=True, augment=True, mean=(0.3,), std=(0.3,))
    images, _ = _collect(loader, 0)
    assert images.shape == (10, 1, 28, 28)


def test_loader_rejects_bad_inputs() -> None:
    x, y = _indexed_images(4)
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(x.float(), y, 2, train=True, augment=False, **IDENTITY)
    with pytest.raises(ValueError, match="mean/std"):
        DeviceLoader(x, y, 2, train=True, augment=False, mean=(0.5,), std=(0.5,))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_cuda_matches_cpu() -> None:
    x, y = _indexed_images(40)
    kwargs = {"train": True, "augment": True, "seed": 5, **IDENTITY}
    cpu = _collect(DeviceLoader(x, y, 8, **kwargs), 2)
    cuda = _collect(DeviceLoader(x, y, 8, device="cuda", **kwargs), 2)
    assert cuda[0].device.type == "cuda"
    assert torch.equal(cpu[0], cuda[0].cpu()) and torch.equal(cpu[1], cuda[1].cpu())


# ============================================================================ the real data (slow)


@pytest.mark.slow
def test_real_bundled_dataset(private_cache: Path) -> None:
    ds = load_dataset(DataConfig(name="cifar10_jpeg"))  # decodes into the private cache
    assert ds.train_x.shape == (50000, 32, 32, 3) and ds.test_x.shape == (10000, 32, 32, 3)
    assert torch.bincount(ds.train_y).tolist() == [5000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    assert ds.classes == tuple(CIFAR_CLASSES)
    np.testing.assert_allclose(ds.mean, (0.491, 0.482, 0.447), atol=0.005)
    start = time.perf_counter()
    cached = load_dataset(DataConfig(name="cifar10_jpeg"))
    assert time.perf_counter() - start < 2.0  # ~0.2 s; generous for loaded machines
    assert torch.equal(cached.train_x, ds.train_x)


@pytest.mark.slow
@pytest.mark.skipif(not fashion_mnist.DEFAULT_ROOT.is_dir(), reason="dataset-fashion-mnist absent")
def test_real_fashion_mnist() -> None:
    ds = load_dataset(DataConfig(name="fashion_mnist"))
    assert ds.train_x.shape == (60000, 28, 28, 1) and ds.test_x.shape == (10000, 28, 28, 1)
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10
