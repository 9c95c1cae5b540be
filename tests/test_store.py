import json
import os

import pytest

from bnlab.compose import load_config
from bnlab.store import RunBusy, RunDir, atomic_write_text, run_id, run_name


def test_run_id_ignores_where_and_how_but_not_science():
    base = run_id(load_config([]))
    same = [
        "paths.runs=/elsewhere",
        "train.device=cpu",
        "train.threads=1",
        "train.compile=true",
        "data.eval_batch_size=10",
        "data.root=/x",
    ]
    for override in same:
        assert run_id(load_config([override])) == base, override
    for override in ["optim.lr=0.2", "norm=none", "model.depth=32", "train.seed=1", "preset=cpu"]:
        assert run_id(load_config([override])) != base, override


def test_preset_is_just_its_values():
    explicit = load_config(["data.train_size=10000", "train.epochs=8", "optim.schedule=onecycle"])
    assert run_id(load_config(["preset=cpu"])) == run_id(explicit)


def test_run_name_is_readable():
    name = run_name(load_config(["model.residual=false", "model.depth=32", "norm=gn"]))
    assert name.startswith("resnet32plain-gn-")


def test_atomic_write_keeps_old_content_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    atomic_write_text(target, json.dumps({"status": "completed"}))

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "{half")
    assert json.loads(target.read_text()) == {"status": "completed"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temp left


def test_lock_is_exclusive(tmp_path):
    run = RunDir(tmp_path / "r")
    with run.lock(), pytest.raises(RunBusy), RunDir(tmp_path / "r").lock():
        pass
    with run.lock():  # released
        pass


def test_unreadable_checkpoint_means_start_over(tmp_path):
    run = RunDir(tmp_path)
    run.checkpoint_file.write_bytes(b"not a checkpoint")
    assert run.load_checkpoint() is None
