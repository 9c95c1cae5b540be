"""Bad input: one line on stderr, exit 2, no traceback, nothing written."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.conftest import run_bnlab


def _assert_clean_error(proc, needle: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("bnlab: error:")
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.depth=21", "model.depth=21"),
        ("optim.lr=abc", "optim.lr=abc"),
        ("data.batch_size=0", "data.batch_size=0"),
        ("nosuchkey=1", "nosuchkey"),
        ("norm=nonsense", "nonsense"),
        ("train.epochs=-1", "train.epochs=-1"),
        ("+norm.foo=1", "norm.foo"),
        ("norm.groups=4", "norm.groups"),  # bn has no groups
        ("train.device=gpu", "train.device"),
    ],
)
def test_bad_config_is_one_line_exit_2_and_writes_nothing(runs, override, needle):
    proc = run_bnlab("train", override, f"paths.runs={runs}")
    _assert_clean_error(proc, needle)
    assert not runs.exists()


def test_unwritable_runs_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = run_bnlab("train", "preset=smoke", f"paths.runs={blocker}/runs")
    _assert_clean_error(proc, "paths.runs")
    assert blocker.read_text() == "not a folder"


def test_missing_dataset(runs, tmp_path):
    proc = run_bnlab(
        "train", "preset=smoke", f"data.root={tmp_path / 'nowhere'}", f"paths.runs={runs}"
    )
    _assert_clean_error(proc, "nowhere")
    assert not runs.exists()


def test_corrupt_dataset(runs, tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "cifar10-jpeg.tar.gz").write_bytes(gzip.compress(b"this is not a tar archive"))
    proc = run_bnlab("train", "preset=smoke", f"data.root={root}", f"paths.runs={runs}")
    _assert_clean_error(proc, "cifar10-jpeg.tar.gz")
    assert not runs.exists()


def test_bad_input_never_damages_existing_results(runs):
    finished = runs / "resnet20-bn-000000000000"
    finished.mkdir(parents=True)
    (finished / "summary.json").write_text(json.dumps({"status": "completed"}))
    before = {p: p.read_bytes() for p in runs.rglob("*") if p.is_file()}
    for bad in ("model.depth=21", "norm=nonsense", "data.batch_size=0"):
        _assert_clean_error(run_bnlab("train", bad, f"paths.runs={runs}"), bad.split("=")[1])
    after = {p: p.read_bytes() for p in runs.rglob("*") if p.is_file()}
    assert after == before


def test_help_lists_groups_and_keys():
    proc = run_bnlab("train", "--help")
    assert proc.returncode == 0
    for text in (
        "norm",
        "batch_renorm, bn, bn_noisy, ghost_bn, gn, in, ln, none",
        "preset",
        "model.depth = 20",
        "optim.lr",
        "norm.groups",
    ):
        assert text in proc.stdout, text


def test_paths_relative_to_a_missing_parent_are_fine(tmp_path: Path):
    # Not an error: the runs folder (and its parents) are created on first use.
    proc = run_bnlab("train", "model.depth=21", f"paths.runs={tmp_path}/a/b/c")
    _assert_clean_error(proc, "6n+2")


# ----------------------------------------------------------------------------- bnlab report


def test_report_on_an_empty_or_missing_runs_folder_is_exit_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (empty, tmp_path / "missing"):
        proc = run_bnlab("report", "--runs", str(folder), "--out", str(tmp_path / "out"))
        _assert_clean_error(proc, str(folder.name))
    assert not (tmp_path / "out").exists()


def test_report_from_the_cli_writes_the_report_and_warns_about_broken_runs(tmp_path):
    from tests.report_synth import make_run

    runs = tmp_path / "runs"
    for norm, lr, acc in (("bn", 0.1, 0.8), ("bn", 1.0, 0.78), ("none", 0.1, 0.75)):
        make_run(runs, norm=norm, final=acc, config={"optim.lr": lr})
    make_run(runs, norm="none", status="diverged", config={"optim.lr": 1.0})
    broken = make_run(runs, norm="gn", final=0.7)
    (broken / "summary.json").write_text("{not json")

    out = tmp_path / "report"
    proc = run_bnlab("report", "--runs", str(runs), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "lr" in proc.stdout and "SUPPORTED" in proc.stdout
    assert broken.name in proc.stderr and "warning" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (out / "report.md").exists() and (out / "report.html").exists()
    assert list((out / "figures").glob("*.png"))

    bad = run_bnlab("report", "--runs", str(runs), "--out", str(out), "--experiment", "nope")
    _assert_clean_error(bad, "nope")


def test_export_of_a_folder_that_is_not_a_run_is_exit_2(tmp_path):
    proc = run_bnlab("export", str(tmp_path / "nowhere"), "--fold-bn")
    _assert_clean_error(proc, "nowhere")


def test_a_grid_not_tuned_yet_is_refused_before_any_run_and_shown_in_a_dry_run(runs):
    # preset=gpu's small-batch bases are written from the tuning runs (two steps).
    proc = run_bnlab(
        "sweep", "experiment=batch_tune,small_batch", "preset=gpu", f"paths.runs={runs}"
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    *progress, error = proc.stderr.strip().splitlines()  # "composing experiment=..." lines
    assert all(line.startswith("composing experiment=") for line in progress)
    assert error.startswith("bnlab: error: small_batch cannot run yet: its base lrs are not tuned")
    assert error.endswith("meanwhile sweep the others: experiment=batch_tune")
    assert not runs.exists()
    proc = run_bnlab(
        "sweep", "experiment=small_batch", "preset=gpu", f"paths.runs={runs}", "--dry-run"
    )
    assert proc.returncode == 0, proc.stderr
    assert "not ready to run: small_batch: its base lrs are not tuned yet" in proc.stdout
