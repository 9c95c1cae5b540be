"""`bnlab sweep` when things go wrong: runs that cannot start, unwritable or oddly named
folders, killed sweeps (issue 28, the sweep side)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from typer.testing import CliRunner

from bnlab.cli import RESUME_HINT, app
from bnlab.data.files import repo_data_dir
from tests.conftest import BNLAB, REPO, run_bnlab
from tests.test_sweep import _alive, _children, run_dirs, summaries

TINY = ["preset=smoke", "data.train_size=256", "data.test_size=200", "train.epochs=1"]


def _one_line_error(stderr: str, needle: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnlab: error:"), stderr
    assert needle in lines[0], stderr


def _sweep(*args: str):
    """The sweep command in this process (basic launcher: the jobs run here too)."""
    return CliRunner().invoke(app, ["sweep", *args])


# ----------------------------------------------------------------- item 1: runs that cannot start


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_no_cuda_is_found_once_before_anything_launches(runs):
    proc = run_bnlab("sweep", "train.device=cuda", "train.seed=0,1", *TINY, f"paths.runs={runs}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    _one_line_error(proc.stderr, "no CUDA device")
    assert not runs.exists()


def test_a_broken_dataset_is_found_once_before_anything_launches(runs, tmp_path):
    """A truncated copy of the bundled archive (data.root points at the copy)."""
    root = tmp_path / "data"
    root.mkdir()
    archive = repo_data_dir() / "cifar10-jpeg.tar.gz"
    (root / archive.name).write_bytes(archive.read_bytes()[: 1 << 20])
    proc = run_bnlab(
        "sweep", "train.seed=0,1", *TINY, f"data.root={root}", f"paths.runs={runs}"
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    _one_line_error(proc.stderr, "cifar10-jpeg.tar.gz")
    assert not runs.exists()
    assert sorted(p.name for p in root.iterdir()) == ["cifar10-jpeg.tar.gz"]  # no cache written


def test_a_run_that_fails_before_its_folder_exists_fails_the_sweep(runs, monkeypatch):
    """Seed 1 crashes loading its data, before its run folder is created."""
    import bnlab.recipe

    seeds: list[int] = []
    real_train, real_load = bnlab.recipe.train, bnlab.recipe.load_dataset

    def train(cfg, reporter=None):
        seeds.append(cfg.train.seed)
        return real_train(cfg, reporter)

    def load_dataset(data_cfg):
        if seeds[-1] == 1:
            raise RuntimeError("simulated: the data went away")
        return real_load(data_cfg)

    monkeypatch.setattr(bnlab.recipe, "load_dataset", load_dataset)
    monkeypatch.setattr(bnlab.recipe, "train", train)
    result = _sweep("train.seed=0,1", *TINY, f"paths.runs={runs}")
    assert result.exit_code == 1, result.output
    assert "crashed: RuntimeError: simulated: the data went away" in result.stdout
    assert "2 runs (1 completed, 1 failed)" in result.stdout
    assert [s["status"] for s in summaries(runs).values()] == ["completed"]  # one folder only


def test_the_table_counts_a_launched_unfinished_run_as_failed_unless_it_was_busy(runs):
    from bnlab.store import RunStore
    from bnlab.sweep.grid import expand
    from bnlab.sweep.table import rows_for

    sweep = expand(["train.seed=0,1", *TINY, f"paths.runs={runs}"])
    busy, lost = (RunStore(runs).run_dir(job.cfg).path.name for job in sweep.jobs)
    assert [r.status for r in rows_for(sweep)] == ["new", "new"]  # nothing launched (dry run)
    launched = rows_for(sweep, {busy: "busy"})  # `lost` recorded nothing (read-only folder)
    assert [r.status for r in launched] == ["new", "failed"]  # busy: another sweep trains it


# ----------------------------------------------------------------- item 2: unwritable runs folder


class ReadOnly:
    """Make every write under `root` fail as on a read-only folder, once `on` is set.

    Tests run as root, for whom chmod does not stop writes, so the failure is faked at
    the system calls every write here goes through: os.open with a write or create
    flag (tempfile's files: the atomic writes and paths.runs' writability probe) and
    os.mkdir. They raise PermissionError (EACCES), as the kernel does; mkdir of a
    folder that exists raises FileExistsError first, as it does too.
    """

    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | getattr(os, "O_TMPFILE", 0)

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = str(root)
        self.on = False
        self.real_open, self.real_mkdir = os.open, os.mkdir
        monkeypatch.setattr(os, "open", self.open)
        monkeypatch.setattr(os, "mkdir", self.mkdir)

    def _under(self, path) -> bool:
        return self.on and os.path.abspath(os.fspath(path)).startswith(self.root)

    def open(self, path, flags, *args, **kwargs):
        if self._under(path) and flags & self.WRITE:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return self.real_open(path, flags, *args, **kwargs)

    def mkdir(self, path, *args, **kwargs):
        if self._under(path):
            if os.path.exists(path):
                raise FileExistsError(errno.EEXIST, "File exists", os.fspath(path))
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return self.real_mkdir(path, *args, **kwargs)


@pytest.mark.e2e
def test_a_runs_folder_turning_read_only_mid_sweep_fails_the_rest_with_a_line_each(
    runs, monkeypatch
):
    """The folder turns read-only (faked: ReadOnly) once the first of three runs ends."""
    import bnlab.recipe

    read_only = ReadOnly(runs, monkeypatch)
    real_train = bnlab.recipe.train

    def train(cfg, reporter=None):
        try:
            return real_train(cfg, reporter)
        finally:
            read_only.on = True

    monkeypatch.setattr(bnlab.recipe, "train", train)
    result = _sweep("train.seed=0,1,2", *TINY, f"paths.runs={runs}")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stdout.splitlines() if "not writable" in line]
    assert len(errors) == 2, result.stdout
    assert "3 runs (1 completed, 2 failed)" in result.stdout  # the table is still printed
    assert len(run_dirs(runs)) == 1


@pytest.mark.e2e
def test_a_rerun_in_a_read_only_runs_folder(runs, monkeypatch):
    """Read-only faked as above. Runs left to train: one line, exit 2, nothing created;
    all finished: the table, exit 0, nothing written."""
    read_only = ReadOnly(runs, monkeypatch)
    args = ["train.seed=0,1", *TINY, f"paths.runs={runs}"]
    assert _sweep("train.seed=0", *args[1:]).exit_code == 0  # seed 1 is left to train
    before = sorted(runs.rglob("*"))
    read_only.on = True
    result = _sweep(*args)
    assert result.exit_code == 2, result.output
    _one_line_error(result.stderr, "is not writable")
    assert sorted(runs.rglob("*")) == before

    read_only.on = False
    assert _sweep(*args).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in runs.rglob("*")}
    read_only.on = True
    result = _sweep(*args)
    assert result.exit_code == 0, result.output
    assert "2 runs (2 completed)" in result.stdout
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*")} == before


# ----------------------------------------------------------------- item 3: paths and names


@pytest.mark.e2e
def test_a_quoted_runs_path_with_spaces_and_non_ascii_sweeps(tmp_path):
    runs = tmp_path / "a b" / "ünï runs"
    result = _sweep(*TINY, "train.seed=0,1", f"paths.runs='{runs}'")
    assert result.exit_code == 0, result.output
    assert "2 runs (2 completed)" in result.stdout
    assert len(run_dirs(runs)) == 2
    [record] = (runs / ".sweeps").glob("adhoc-*/sweep.yaml")
    assert [job["overrides"][-1] for job in OmegaConf.load(record).jobs] == [
        f"paths.runs='{runs}'"
    ] * 2  # as typed: the record keeps what was asked


@pytest.mark.parametrize(
    ("name", "needle"), [("../../x", "no '/'"), ("x" * 300, "300 bytes, at most 100")]
)
def test_an_experiment_name_that_cannot_name_a_folder_is_refused(runs, tmp_path, name, needle):
    result = _sweep(*TINY, "train.seed=0,1", f"experiment_name={name}", f"paths.runs={runs}")
    assert result.exit_code == 2, result.output
    _one_line_error(result.stderr, needle)
    assert not runs.exists() and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- item 6: workers and folders


@pytest.mark.e2e
def test_sweeps_started_in_the_same_second_get_folders_of_their_own(runs, monkeypatch):
    from bnlab.sweep import launch

    # Both in the same second: the name each would take is the same.
    monkeypatch.setattr(launch, "sweep_dir", lambda r, s: r / ".sweeps" / "adhoc-20260101-000000")
    for seed in (0, 1):
        assert _sweep(*TINY, f"train.seed={seed}", f"paths.runs={runs}").exit_code == 0
    folders = sorted((runs / ".sweeps").iterdir())
    assert [f.name for f in folders] == ["adhoc-20260101-000000", "adhoc-20260101-000000-2"]
    seeds = [OmegaConf.load(f / "sweep.yaml").jobs[0].overrides for f in folders]
    assert [o[-2] for o in seeds] == ["train.seed=0", "train.seed=1"]  # none overwritten


@pytest.mark.e2e
def test_sigkill_of_a_joblib_sweep_ends_its_workers(runs):
    """kill -9 of the sweep alone: its loky workers notice their parent is gone and exit
    (bnlab.sweep.job.watch_sweep) instead of training on, then idling, orphaned."""
    args = [
        "sweep", "norm=bn,gn", "preset=smoke", "train.epochs=50", "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2", f"paths.runs={runs}",
    ]  # fmt: skip
    proc = subprocess.Popen([*BNLAB, *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    workers: set[int] = set()
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            started = runs.exists() and [d for d in run_dirs(runs) if (d / "config.yaml").exists()]
            if started and len(started) == 2:
                break
            time.sleep(0.1)
        workers = _children(proc.pid)
        assert proc.poll() is None and len(workers) >= 2, "both runs never got under way"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        orphans = [p for p in workers if _alive(p)]
    finally:  # a failing run of this test leaves nothing behind
        for pid in (p for p in workers if _alive(p)):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
    assert not orphans, "worker processes outlived the sweep"
    assert not any((d / "summary.json").exists() for d in run_dirs(runs))


# ----------------------------------------------------------------- item 9: SIGTERM at the end


@pytest.mark.e2e
def test_sigterm_after_the_runs_ended_exits_130_without_a_traceback(runs):
    """SIGTERM once both runs have ended: the launch is finishing, the table is drawn or
    joblib is stopping its workers at exit; wherever it lands, the sweep says the resume
    hint and exits 130."""
    args = [
        "sweep", "norm=bn,gn", *TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        f"paths.runs={runs}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*BNLAB, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    assert proc.stdout is not None
    ended = 0
    for line in proc.stdout:
        ended += "] completed" in line
        if ended == 2:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert ended == 2, out + err
    assert proc.returncode == 130, out + err
    assert f"bnlab: error: {RESUME_HINT}" in err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert {s["status"] for s in summaries(runs).values()} == {"completed"}


def test_a_late_sigterm_is_noted_then_exits_130_at_exit(monkeypatch, capsys):
    """The mechanism, in this process: after the launches a SIGTERM only sets a flag;
    the at-exit function that main() registers ends the process with 130 and the hint."""
    from bnlab import cli

    exits: list[int] = []
    monkeypatch.setattr(cli.os, "_exit", exits.append)
    for key, value in vars(cli._LateTerm).items():
        if not key.startswith("_"):
            monkeypatch.setattr(cli._LateTerm, key, value)
    monkeypatch.setattr(cli._LateTerm, "enabled", True)
    saved = signal.getsignal(signal.SIGTERM)
    try:
        cli._note_late_term()
        os.kill(os.getpid(), signal.SIGTERM)  # noted, nothing raised
        assert cli._LateTerm.received and exits == []
        cli._exit_if_terminated_late()
    finally:
        signal.signal(signal.SIGTERM, saved)
    assert exits == [130]
    assert capsys.readouterr().err == f"bnlab: error: {RESUME_HINT}\n"
