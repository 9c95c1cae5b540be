"""Files bnlab did not write run no code: crafted checkpoints and CIFAR-10 batches.

Each crafted file would create a marker file when unpickled the unsafe way; bnlab
must refuse it with one line naming the file, exit 2, and no marker.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bnlab.compose import load_config
from bnlab.data import cifar10
from bnlab.store import run_name
from tests.conftest import run_bnlab

SMOKE = ["preset=smoke", "train.epochs=1"]


class WritesMarker:
    """Unpickling this calls open(marker, "w"): a stand-in for any code a file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _assert_refused(proc, path: Path, marker: Path, code: int = 2) -> None:
    assert not marker.exists(), "the crafted file ran code"
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnlab: error:"), proc.stderr
    assert str(path) in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def _crafted_run(runs: Path, marker: Path, args: list[str]) -> Path:
    """The run folder `bnlab train *args` resumes, holding a crafted checkpoint.pt."""
    import torch

    cfg = load_config([*args, f"paths.runs={runs}"])
    run = runs / run_name(cfg)
    run.mkdir(parents=True)
    OmegaConf.save(cfg, run / "config.yaml")
    torch.save({"epoch": 1, "step": 1, "model": WritesMarker(marker)}, run / "checkpoint.pt")
    return run


def test_export_refuses_a_checkpoint_that_would_run_code(tmp_path, runs):
    marker = tmp_path / "marker"
    run = _crafted_run(runs, marker, SMOKE)
    proc = run_bnlab("export", str(run))
    _assert_refused(proc, run / "checkpoint.pt", marker)
    assert not list(run.glob("*.ts"))


def test_train_refuses_to_resume_from_a_checkpoint_that_would_run_code(tmp_path, runs):
    marker = tmp_path / "marker"
    run = _crafted_run(runs, marker, SMOKE)
    proc = run_bnlab("train", *SMOKE, f"paths.runs={runs}")
    _assert_refused(proc, run / "checkpoint.pt", marker)


def test_train_never_runs_a_crafted_checkpoint(tmp_path, runs):
    # What holds today, whatever the exit code: refused, one line naming the file, no code run.
    marker = tmp_path / "marker"
    run = _crafted_run(runs, marker, SMOKE)
    proc = run_bnlab("train", *SMOKE, f"paths.runs={runs}")
    assert not marker.exists(), "the crafted checkpoint ran code"
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(run / "checkpoint.pt") in lines[0], proc.stderr
    assert "refusing to load" in lines[0]


def test_a_crafted_cifar_batch_is_refused_before_it_runs_code(tmp_path, runs):
    root = tmp_path / "cifar"
    folder = root / cifar10.FOLDER
    folder.mkdir(parents=True)
    marker = tmp_path / "marker"
    for name in (*cifar10.TRAIN_BATCHES, cifar10.TEST_BATCH, cifar10.META):
        (folder / name).write_bytes(b"")
    crafted = folder / cifar10.TRAIN_BATCHES[0]  # the first file read
    # As the official batches are: a protocol-2 pickle of a dict, here with a payload.
    crafted.write_bytes(pickle.dumps({"data": WritesMarker(marker), "labels": []}, protocol=2))
    proc = run_bnlab("train", "data=cifar10", f"data.root={root}", *SMOKE, f"paths.runs={runs}")
    _assert_refused(proc, crafted, marker)
    assert not runs.exists()


def test_the_cifar_unpickler_admits_only_what_arrays_need(tmp_path):
    import numpy as np

    from bnlab.errors import BnlabError

    path = tmp_path / "batch"
    batch = {"data": np.arange(6, dtype=np.uint8).reshape(2, 3), "labels": [1, 2], "raw": b"\x00"}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    loaded = cifar10._unpickle(path)
    assert isinstance(loaded, dict) and loaded["labels"] == [1, 2] and loaded["raw"] == b"\x00"
    assert np.array_equal(loaded["data"], batch["data"])
    for evil in (eval, getattr, np.load):  # each a callable a pickle could name
        path.write_bytes(pickle.dumps({"f": evil}, protocol=2))
        with pytest.raises(BnlabError, match="which a batch never needs"):
            cifar10._unpickle(path)
