"""data.curve_test_size: per-epoch curves on a fixed class-balanced test subset, the last
epoch on the whole test set, and metrics.csv's test_images column (old files without it
still load)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from bnlab.compose import load_config
from bnlab.data import Dataset
from bnlab.data.load import curve_subset
from bnlab.errors import BnlabError
from bnlab.report.load import load_runs
from bnlab.store import run_id
from tests.conftest import run_bnlab
from tests.report_synth import make_run


def _rows(runs: Path) -> tuple[list[dict[str, str]], dict]:
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads((run / "summary.json").read_text())


def test_curves_use_the_subset_and_the_last_epoch_the_whole_test_set(tmp_path):
    runs = tmp_path / "runs"
    proc = run_bnlab("train", "preset=smoke", "train.epochs=3", "data.curve_test_size=100",
                     "train.threads=1", f"paths.runs={runs}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows, summary = _rows(runs)
    assert [r["test_images"] for r in rows] == ["100", "100", "500"]
    assert summary["test_acc"] == pytest.approx(float(rows[-1]["test_acc"]))
    assert (summary["test_images"], summary["curve_test_images"]) == (500, 100)
    # 100 images: accuracies are multiples of 1/100 on the curve, of 1/500 at the end.
    for r in rows[:2]:
        assert float(r["test_acc"]) * 100 == pytest.approx(round(float(r["test_acc"]) * 100))


def test_a_diverged_epoch_is_evaluated_on_the_whole_test_set(tmp_path):
    runs = tmp_path / "runs"
    proc = run_bnlab("train", "preset=smoke", "norm=none", "optim.lr=50",
                     "data.curve_test_size=100", f"paths.runs={runs}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows, summary = _rows(runs)
    assert summary["status"] == "diverged" and len(rows) == 1
    assert rows[0]["test_images"] == "500"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.curve_test_size=0"], "data.curve_test_size=0 must be a positive number"),
        (["preset=smoke", "data.curve_test_size=600"], "larger than data.test_size=500"),
        (["preset=smoke", "data.test_size=null", "data.curve_test_size=20000"],
         "data.curve_test_size=20000 is larger than the test set"),
        (["preset=smoke", "data.test_size=null", "data.curve_test_size=5"],
         "smaller than the number of classes"),
    ],
)  # fmt: skip
def test_bad_curve_sizes_are_one_line_and_exit_2(tmp_path, overrides, message):
    runs = tmp_path / "runs"
    proc = run_bnlab("train", *overrides, f"paths.runs={runs}")
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not runs.exists()


def test_curve_subset_is_class_balanced_and_fixed():
    gen = torch.Generator().manual_seed(0)
    test_y = torch.arange(1000) % 10
    data = Dataset(
        train_x=torch.zeros(10, 2, 2, 3, dtype=torch.uint8), train_y=torch.arange(10),
        test_x=torch.randint(0, 256, (1000, 2, 2, 3), generator=gen, dtype=torch.uint8),
        test_y=test_y, classes=tuple("abcdefghij"), variant="synthetic",
        mean=(0.5,) * 3, std=(0.25,) * 3,
    )  # fmt: skip
    cfg = load_config(["data.curve_test_size=200"]).data
    subset = curve_subset(data, cfg)
    assert subset is not None
    x, y = subset
    assert torch.bincount(y).tolist() == [20] * 10
    torch.manual_seed(7)  # the global RNG (train.seed) plays no part: the same images
    again = curve_subset(data, cfg)
    assert again is not None and torch.equal(again[0], x)
    other = curve_subset(data, load_config(["data.curve_test_size=200", "data.subset_seed=1"]).data)
    assert other is not None and not torch.equal(other[0], x)
    assert curve_subset(data, load_config([]).data) is None


def test_curve_size_is_in_the_run_id_only_when_set():
    base = load_config([])
    assert run_id(base) == run_id(load_config(["data.curve_test_size=null"]))
    assert run_id(base) != run_id(load_config(["data.curve_test_size=2000"]))
    assert load_config(["preset=cpu"]).data.curve_test_size == 2000


def test_report_reads_metrics_without_test_images(tmp_path):
    runs = tmp_path / "runs"
    old = make_run(runs)
    path = old / "metrics.csv"
    with open(path) as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in rows[0] if c != "test_images"]  # as written before the column
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    new = make_run(runs, norm="none")  # a current run: the column, filled
    metrics = new / "metrics.csv"
    text = metrics.read_text().splitlines()
    header = text[0].split(",")
    i = header.index("test_images")
    body = [",".join([*r.split(",")[:i], "2000", *r.split(",")[i + 1 :]]) for r in text[1:]]
    metrics.write_text("\n".join([text[0], *body]) + "\n")

    tables = load_runs(runs)
    assert not tables.warnings
    images = tables.epochs.groupby("run_id")["test_images"].unique()
    old_id, new_id = old.name.rsplit("-", 1)[-1], new.name.rsplit("-", 1)[-1]
    assert images[old_id].tolist() == [10_000]  # backfilled from summary.json's test_images
    assert images[new_id].tolist() == [2000]


def test_curve_subset_error_names_the_key():
    data = Dataset(
        train_x=torch.zeros(10, 2, 2, 3, dtype=torch.uint8), train_y=torch.arange(10),
        test_x=torch.zeros(10, 2, 2, 3, dtype=torch.uint8), test_y=torch.arange(10),
        classes=tuple("abcdefghij"), variant="synthetic", mean=(0.5,) * 3, std=(0.25,) * 3,
    )  # fmt: skip
    with pytest.raises(BnlabError, match="data.curve_test_size=20"):
        curve_subset(data, load_config(["data.curve_test_size=20"]).data)
