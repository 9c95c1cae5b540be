"""Faults met after the input was accepted (issue 28): the store, train, report, export.

Each ends the way bad input does -- one line on stderr, a non-zero exit, no traceback --
and leaves what was already written intact. The tests run as root, for whom file
permissions change nothing, so unwritable and unreadable folders are faked (each
test's docstring says how).
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from typer.testing import CliRunner

from bnlab.cli import RESUME_HINT, app
from bnlab.compose import load_config
from bnlab.errors import BnlabError
from bnlab.recipe import train
from bnlab.report.load import load_runs
from bnlab.store import RunDir, StoreWriteError, atomic_write_text, load_checkpoint_file
from tests.conftest import BNLAB, REPO
from tests.report_synth import make_run

# A run of a second or two an epoch.
TINY = ["preset=smoke", "data.train_size=64", "data.batch_size=32", "data.test_size=100"]


@pytest.fixture(autouse=True)
def _keep_sigterm() -> Iterator[None]:
    """`bnlab train` makes SIGTERM an interrupt; in-process calls must not leave that to pytest."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def bnlab(*args: str):
    """`bnlab ARGS` in this process (so a test can fake a fault); exit code and output."""
    return CliRunner().invoke(app, list(args))


def one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnlab: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def tiny_run(runs: Path, *overrides: str) -> Path:
    outcome = train(load_config([*TINY, *overrides, f"paths.runs={runs}"]))
    assert outcome.status in ("completed", "diverged")
    return outcome.run_dir


# ----------------------------------------------------------------------------- 2: store writes


def test_a_refused_store_write_is_one_line_naming_the_file(tmp_path, monkeypatch):
    """A folder that refuses new files (faked: mkstemp raises EACCES, as it does for a
    user in a read-only folder) raises StoreWriteError -- a BnlabError -- naming the file,
    and the file keeps its content."""
    target = tmp_path / "summary.json"
    atomic_write_text(target, '{"status": "completed"}')

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(StoreWriteError) as err:
        atomic_write_text(target, "{half")
    assert isinstance(err.value, BnlabError)
    assert str(err.value) == f"cannot write {target}: Permission denied"
    assert json.loads(target.read_text()) == {"status": "completed"}


def test_train_whose_run_folder_turns_read_only_mid_run(runs, monkeypatch):
    """The run folder turns read-only after epoch 1 is on disk (faked: from the write
    after epoch 1's metrics.csv on, mkstemp and link in it raise EACCES). One line naming
    the file, exit 2; epoch 1's checkpoint and metrics stay, and rerunning resumes."""
    real_mkstemp, real_link = tempfile.mkstemp, os.link
    read_only = {"now": False}

    def refused(folder: Path) -> bool:  # a run folder, once epoch 1's metrics are written
        return read_only["now"] and folder.parent == runs

    def mkstemp(*args, dir=None, prefix=None, **kwargs):
        if dir is not None and refused(Path(dir)):
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        if (prefix or "").startswith(".metrics.csv."):
            read_only["now"] = True  # this write still goes through
        return real_mkstemp(*args, dir=dir, prefix=prefix, **kwargs)

    def link(src, dst, *args, **kwargs):
        if refused(Path(dst).parent):
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "link", link)
    args = ["train", *TINY, "train.epochs=2", f"paths.runs={runs}"]
    line = one_error_line(bnlab(*args))
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    assert f"cannot write {run}/" in line and "Permission denied" in line
    assert "run the same command again to resume" in line
    first = (run / "metrics.csv").read_text()
    assert len(first.splitlines()) == 2  # the header and epoch 1
    assert load_checkpoint_file(run / "checkpoint.pt")["epoch"] == 1
    assert not (run / "summary.json").exists()
    assert not list(run.glob(".*.tmp"))

    monkeypatch.undo()  # writable again
    again = bnlab(*args)
    assert again.exit_code == 0, again.output
    assert "resumed at epoch 1" in again.stdout
    assert (run / "metrics.csv").read_text().splitlines()[:2] == first.splitlines()


def test_a_read_only_runs_folder_at_the_start_is_still_one_line(tmp_path, monkeypatch):
    """Faked as above (the probe file cannot be created): one line, exit 2, nothing made."""

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    line = one_error_line(bnlab("train", *TINY, f"paths.runs={tmp_path / 'runs'}"))
    assert "is not writable" in line
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- 9: SIGTERM


def test_sigterm_stops_train_like_ctrl_c(runs):
    """A real process, signalled in its second epoch: exit 130, the resume hint, and the
    first epoch's checkpoint kept."""
    args = [*TINY, "train.epochs=200", "train.threads=1", f"paths.runs={runs}"]
    proc = subprocess.Popen(
        [*BNLAB, "train", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        metrics = list(runs.glob("*/metrics.csv"))
        if metrics and len(metrics[0].read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == [f"bnlab: error: {RESUME_HINT}"]
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    assert load_checkpoint_file(run / "checkpoint.pt")["epoch"] >= 1
    assert not (run / "summary.json").exists()


# ----------------------------------------------------------------------------- 7: config bounds


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.lr=1e308", "optim.lr=1e+308 must be a number in (0, 1000]"),
        ("optim.weight_decay=inf", "optim.weight_decay=inf must be a number in [0, 1000]"),
        ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1 must be a number in [0, 1000]"),
        ("train.seed=99999999999999999999", "train.seed=99999999999999999999 must be an integer"),
        ("train.seed=-1", "train.seed=-1 must be an integer in [0, 2**63-1]"),
        ("train.epochs=1000000000000", "train.epochs=1000000000000 must be in [1, 1000000]"),
        ("optim.warmup_epochs=inf", "optim.warmup_epochs=inf must be a number in [0, 1e+06]"),
        ("optim.gamma=1e300", "reaches an lr of inf: at most 1000"),
    ],
)
def test_values_that_would_fail_later_are_refused_at_the_start(runs, override, expected):
    extra = ["optim.schedule=multistep"] if "gamma" in override else []
    line = one_error_line(bnlab("train", *TINY, *extra, override, f"paths.runs={runs}"))
    assert expected in line
    assert not runs.exists()


def test_the_limits_themselves_are_accepted():
    from bnlab.config import validate

    validate(load_config(["optim.lr=1000", "train.seed=9223372036854775807"]))
    validate(load_config(["optim.weight_decay=0", "train.epochs=1000000"]))


# ----------------------------------------------------------------------------- 5: export


@pytest.fixture(scope="module")
def completed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("runs"), "train.epochs=1")


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


def test_export_refuses_a_diverged_run_unless_forced(tmp_path):
    run = tiny_run(tmp_path / "runs", "norm=none", "optim.lr=50", "train.epochs=1")
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"
    line = one_error_line(bnlab("export", str(run)))
    assert f"{run}: not exported: the run diverged (at epoch 1)" in line
    assert "--force" in line
    assert not (run / "model.ts").exists()

    forced = bnlab("export", str(run), "--force")
    assert forced.exit_code == 0, forced.output
    (warning,) = forced.stderr.strip().splitlines()
    assert (
        warning.startswith("bnlab: warning: EXPORTING ANYWAY (--force)") and "diverged" in warning
    )
    assert (run / "model.ts").exists()


def test_export_refuses_an_unfinished_run_and_nan_weights(completed, tmp_path):
    unfinished = copy_of(completed, tmp_path)
    (unfinished / "summary.json").unlink()  # still training, or interrupted
    assert "the run has not finished" in one_error_line(bnlab("export", str(unfinished)))

    nan = copy_of(completed, tmp_path / "nan")  # says completed; its weights say otherwise
    state = load_checkpoint_file(nan / "checkpoint.pt")
    state["model"] = {k: v.float().fill_(math.nan) if v.is_floating_point() else v
                      for k, v in state["model"].items()}  # fmt: skip
    buf = io.BytesIO()
    torch.save(state, buf)
    (nan / "checkpoint.pt").write_bytes(buf.getvalue())
    line = one_error_line(bnlab("export", str(nan)))
    assert "weight tensor(s) hold NaN/inf" in line and "every output would be NaN" in line


def test_export_of_a_finished_run_without_its_checkpoint_says_so(completed, tmp_path):
    run = copy_of(completed, tmp_path)
    (run / "checkpoint.pt").unlink()
    line = one_error_line(bnlab("export", str(run)))
    assert "no checkpoint.pt, although the run completed" in line
    assert "finished an epoch" not in line


def test_export_of_a_revision_1_fixup_run_names_the_revision(tmp_path):
    cfg = load_config(["preset=smoke", "arm=fixup"])
    run = RunDir(tmp_path / "resnet20-none-0123456789ab")
    run.path.mkdir()
    plain = OmegaConf.to_container(cfg, resolve=True)
    del plain["model"]["revision"]  # stored before the key existed: revision 1
    run.config_file.write_text(OmegaConf.to_yaml(plain))
    run.write_summary({"status": "completed"})
    line = one_error_line(bnlab("export", str(run.path)))
    assert "model.revision=1" in line and "Fixup" in line


def test_export_of_a_completed_run_is_unchanged(completed, tmp_path):
    result = bnlab("export", str(completed), "--out", str(tmp_path / "m.ts"))
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert (tmp_path / "m.ts").exists()


# ----------------------------------------------------------------------------- 4, 8: report


def _fake_unreadable(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 000 as a normal user sees it: stat, open and listing inside `folder` fail."""
    import builtins

    def inside(path: object) -> bool:
        if isinstance(path, int):  # a file descriptor
            return False
        # String logic only: resolving would stat, i.e. call the patched functions.
        return os.path.abspath(os.fsdecode(path)).startswith(f"{folder}{os.sep}")

    def guard(real):
        def wrapper(path, *args, **kwargs):
            if inside(path):
                raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
            return real(path, *args, **kwargs)

        return wrapper

    for name in ("stat", "lstat", "open", "scandir", "listdir"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    monkeypatch.setattr(io, "open", guard(io.open))


def _lr_runs(runs: Path) -> list[Path]:
    return [make_run(runs, norm="bn", final=acc, config={"optim.lr": lr}) for lr, acc in
            ((0.1, 0.8), (0.3, 0.75), (1.0, 0.7))]  # fmt: skip


def test_report_skips_an_unreadable_run_folder_with_one_warning(runs, monkeypatch):
    """Faked chmod 000 (root reads anything): stat/open/listing inside it raise EACCES."""
    good, bad, _ = _lr_runs(runs)
    _fake_unreadable(bad, monkeypatch)
    tables = load_runs(runs)
    assert tables.warnings == [f"skipped run folder {bad.name}: cannot read it (Permission denied)"]
    assert set(tables.runs["run_name"]) == {p.name for p in runs.iterdir()} - {bad.name}


@pytest.mark.parametrize(
    ("name", "edit", "reason"),
    [
        ("summary.json", {"test_acc": 7.5}, "summary.json test_acc=7.5 is outside [0, 1]"),
        ("summary.json", {"test_acc": "0.7"}, "summary.json test_acc='0.7' is not a number"),
        ("summary.json", {"wall_s": -3}, "summary.json wall_s=-3 is outside [0, inf]"),
        ("summary.json", {"bn_modes": {"precise_acc": 2.0}}, "bn_modes.precise_acc=2.0 is out"),
        ("metrics.csv", "cut", "metrics.csv ends mid-row (cut short)"),
        ("metrics.csv", "short", "metrics.csv row 2 has 4 of 10 fields"),
        ("metrics.csv", "7.5", "metrics.csv row 1 test_acc=7.5 is outside [0, 1]"),
        ("metrics.csv", "blank", "metrics.csv row 1 test_acc=nan is blank"),
    ],
    ids=["acc-range", "acc-text", "negative", "probe-acc", "cut", "short", "row-range", "blank"],
)
def test_report_skips_a_run_with_values_the_store_never_writes(runs, name, edit, reason):
    """The run is skipped (never half counted), one warning naming it and the field."""
    _, bad, _ = _lr_runs(runs)
    path = bad / name
    if name == "summary.json":
        path.write_text(json.dumps(json.loads(path.read_text()) | edit))
    else:
        header, first, second, *rest = path.read_text().splitlines(keepends=True)
        cells = first.split(",")
        if edit == "cut":
            text = header + first + second[: len(second) // 2]
        elif edit == "short":
            text = header + first + ",".join(second.split(",")[:4]) + "\r\n"
        else:
            cells[4] = "7.5" if edit == "7.5" else ""  # test_acc
            text = header + ",".join(cells) + second + "".join(rest)
        path.write_text(text)
    tables = load_runs(runs)
    assert len(tables.warnings) == 1, tables.warnings
    assert tables.warnings[0].startswith(f"skipped run folder {bad.name}: ")
    assert reason in tables.warnings[0]
    assert bad.name not in set(tables.runs["run_name"])


def test_a_run_without_its_config_is_unfinished_for_the_sweep_and_skipped_by_the_report(runs):
    """One truth for both sides: no readable config.yaml, not finished (training it again
    resumes from its checkpoint and rewrites it) and not counted by the report."""
    run = tiny_run(runs, "train.epochs=1")
    summary = json.loads((run / "summary.json").read_text())
    (run / "config.yaml").unlink()
    assert not RunDir(run).is_finished() and RunDir(run).state() == "partial"

    with pytest.raises(BnlabError, match="1 unreadable"):
        load_runs(runs)
    _lr_runs(runs)
    tables_warnings = load_runs(runs).warnings
    assert tables_warnings == [
        f"skipped run folder {run.name}: no config.yaml beside its summary.json (deleted?): "
        "not counted; training it again (its sweep) rewrites it"
    ]

    again = train(load_config([*TINY, "train.epochs=1", f"paths.runs={runs}"]))
    assert again.status == "completed" and again.resumed_from == 1  # not trained anew
    assert RunDir(run).is_finished() and (run / "config.yaml").exists()
    assert again.summary["test_acc"] == summary["test_acc"]
