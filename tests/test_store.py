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
    explicit = load_config(
        ["data.train_size=10000", "data.curve_test_size=2000", "train.epochs=6",
         "optim.schedule=onecycle"]
    )  # fmt: skip
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


# ----------------------------------------------------------------------------- checkpoints


def _state(epoch: int) -> dict:
    import torch

    return {"epoch": epoch, "model": {"w": torch.full((3,), float(epoch))}, "rows": []}


class _WritesMarker:
    """Unpickling this would create `marker` (what a crafted checkpoint could do)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoints_keep_the_last_two(tmp_path):
    run = RunDir(tmp_path)
    for epoch in (1, 2, 3):
        run.save_checkpoint(_state(epoch))
    assert run.load_checkpoint()["epoch"] == 3
    run.checkpoint_file.unlink()
    assert run.load_checkpoint()["epoch"] == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path, capsys):
    run = RunDir(tmp_path)
    run.save_checkpoint(_state(1))
    run.save_checkpoint(_state(2))
    data = run.checkpoint_file.read_bytes()
    run.checkpoint_file.write_bytes(data[:1000])  # truncated, as a full disk would leave it
    state = run.load_checkpoint()
    assert state is not None and state["epoch"] == 1
    assert float(state["model"]["w"][0]) == 1.0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnlab: warning:")
    assert str(run.checkpoint_file) in lines[0] and "checkpoint.prev.pt" in lines[0]


def test_no_loadable_checkpoint_starts_from_scratch_with_a_warning(tmp_path, capsys):
    run = RunDir(tmp_path)
    run.save_checkpoint(_state(1))
    run.save_checkpoint(_state(2))
    run.checkpoint_file.write_bytes(run.checkpoint_file.read_bytes()[:1000])
    run.previous_checkpoint_file.write_bytes(b"")
    assert run.load_checkpoint() is None
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2, lines  # one per file that does not load
    assert str(run.previous_checkpoint_file) in lines[1] and "from scratch" in lines[1]


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    import torch

    from bnlab.errors import BnlabError

    marker = tmp_path / "marker"
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    torch.save({"epoch": 1, "model": _WritesMarker(marker)}, run.checkpoint_file)
    with pytest.raises(BnlabError, match="refusing to load") as err:
        run.load_checkpoint()
    assert str(run.checkpoint_file) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_checkpoints_hold_only_tensors_and_plain_values(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(TypeError, match=r"checkpoint\['rows'\]\[0\] is a object"):
        run.save_checkpoint({"epoch": 1, "model": {}, "rows": [object()]})
    assert not run.checkpoint_file.exists()
    # What fit() writes loads back with weights_only=True, cuda_rng as None or a uint8 tensor.
    import torch

    probe_rows = [{"probe": "ics", "layer": "conv1", "value": 0.5, "step": 3}]
    state = {**_state(1), "rng": torch.get_rng_state(), "cuda_rng": None, "elapsed_s": 1.5,
             "initial_loss": None, "probe_rows": probe_rows}  # fmt: skip
    run.save_checkpoint(state)
    loaded = run.load_checkpoint()
    assert loaded["probe_rows"] == state["probe_rows"] and loaded["cuda_rng"] is None
    run.save_checkpoint({**state, "cuda_rng": torch.zeros(16, dtype=torch.uint8)})
    assert run.load_checkpoint()["cuda_rng"].dtype == torch.uint8


@pytest.mark.e2e
def test_a_truncated_checkpoint_resumes_from_the_previous_one_end_to_end(runs):
    from tests.conftest import run_bnlab

    args = ["train", "preset=smoke", "train.epochs=3", f"paths.runs={runs}"]
    first = run_bnlab(*args)
    assert first.returncode == 0, first.stderr
    [run] = [p for p in runs.iterdir() if p.is_dir()]
    finished = (run / "metrics.csv").read_text()
    # As a user found it: killed during its last epoch, its checkpoint.pt cut to 1,000 bytes.
    (run / "summary.json").unlink()
    checkpoint = run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    again = run_bnlab(*args)
    assert again.returncode == 0, again.stderr
    warnings = again.stderr.strip().splitlines()
    assert len(warnings) == 1 and str(checkpoint) in warnings[0], again.stderr
    assert "resumed at epoch 2" in again.stdout  # not from epoch 0
    assert json.loads((run / "summary.json").read_text())["resumed_from_epoch"] == 2

    def science(csv_text: str) -> list[list[str]]:  # epoch, losses, accuracies, lr: not times
        return [line.split(",")[:6] for line in csv_text.splitlines()]

    assert science((run / "metrics.csv").read_text()) == science(finished)  # epoch 3 redone


def test_atomic_write_gives_the_permissions_of_any_new_file(tmp_path):
    # mkstemp's owner-only 0600 must not leak into the runs folder.
    target = tmp_path / "summary.json"
    atomic_write_text(target, "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
