"""scripts/tune_small_batch.py: step 2 of the small-batch grid writes the rule's own
tuned base lrs into the grid, and refuses while the tuning is unfinished."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml

from tests.arms_synth import arm_runs
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import tune_small_batch  # noqa: E402

# At the reference batch 64: BN best at 0.2, GN at 0.1, LN at 0.05 (each inside its window).
TUNING = {
    "bn": {0.1: 0.60, 0.2: 0.66, 0.4: 0.62},
    "gn": {0.05: 0.50, 0.1: 0.55, 0.2: 0.52},
    "ln": {0.025: 0.40, 0.05: 0.47, 0.1: 0.45},
}


def tuning_store(runs: Path, seeds: tuple[int, ...] = (0, 1, 2), batch: int = 64) -> Path:
    for arm, accs in TUNING.items():
        for lr, acc in accs.items():
            arm_runs(runs, arm, acc, seeds, **{"optim.lr": lr, "data.batch_size": batch})
    return runs


def grid_copy(tmp_path: Path) -> Path:
    grid = tmp_path / "small_batch.yaml"
    shutil.copy(REPO / "conf" / "grid" / "small_batch.yaml", grid)
    return grid


def test_writes_each_norms_tuned_base_times_b_over_r(tmp_path, capsys):
    runs, grid = tuning_store(tmp_path / "runs"), grid_copy(tmp_path)
    gpu_before = yaml.safe_load(grid.read_text())["union"]
    args = ["--runs", str(runs), "--preset", "cpu", "--write", "--grid", str(grid)]
    assert tune_small_batch.main(args) == 0
    tree = yaml.safe_load(grid.read_text())
    cpu = {(p["arm"], p.get("data.batch_size")): float(p["optim.lr"]) for p in tree["cpu"]["union"]}
    assert cpu["bn", "2"] == 0.2 * 2 / 64 and cpu["gn", "32"] == 0.1 * 32 / 64
    assert cpu["ln", "8"] == 0.05 * 8 / 64
    assert cpu["bn,ghost_bn32,ghost_bn8,ghost_bn2", None] == 0.2  # the decomposition at BN's lr
    assert tree["union"] == gpu_before  # the other preset's section is kept
    assert "tuned bases bn 0.2, gn 0.1, ln 0.05" in grid.read_text()
    assert "bn: base lr 0.2" in capsys.readouterr().out


def test_refuses_while_a_tuning_lr_has_fewer_than_three_seeds(tmp_path, capsys):
    runs = tuning_store(tmp_path / "runs", seeds=(0, 1))
    grid = grid_copy(tmp_path)
    before = grid.read_text()
    args = ["--runs", str(runs), "--preset", "cpu", "--write", "--grid", str(grid)]
    assert tune_small_batch.main(args) == 2
    assert "fewer than 3 finished seeds" in capsys.readouterr().err
    assert grid.read_text() == before


def test_refuses_runs_of_the_other_presets_reference_batch(tmp_path, capsys):
    runs = tuning_store(tmp_path / "runs")
    assert tune_small_batch.main(["--runs", str(runs), "--preset", "gpu"]) == 2
    assert "reference batch is 64, not preset=gpu's 128" in capsys.readouterr().err


def test_written_lrs_are_the_ones_the_rule_accepts():
    # The rule keeps a small-batch run only when its lr is base x b/R within LR_RTOL;
    # LN's base 0.00625 at b = 2, R = 64 is 0.0001953125, which 6 digits round out of it.
    from bnlab.report.small_batch import LR_RTOL

    for base in (0.00625, 0.0125, 0.025, 0.3, 1 / 3):
        for b in tune_small_batch.SMALL:
            want = base * b / 64
            assert abs(float(tune_small_batch.lr_text(want)) - want) <= LR_RTOL * want
    assert abs(float(f"{0.0001953125:g}") - 0.0001953125) > LR_RTOL * 0.0001953125


def test_the_untuned_mark_stays_until_that_presets_bases_are_written(tmp_path):
    grid = grid_copy(tmp_path)
    assert "untuned" in yaml.safe_load(grid.read_text())  # preset=gpu: not tuned yet
    runs = tuning_store(tmp_path / "cpu_runs")
    assert (
        tune_small_batch.main(
            ["--runs", str(runs), "--preset", "cpu", "--write", "--grid", str(grid)]
        )
        == 0
    )
    tree = yaml.safe_load(grid.read_text())
    assert "untuned" in tree and "untuned" not in tree["cpu"]  # the other preset still waits
    runs = tuning_store(tmp_path / "gpu_runs", batch=128)
    assert (
        tune_small_batch.main(
            ["--runs", str(runs), "--preset", "gpu", "--write", "--grid", str(grid)]
        )
        == 0
    )
    tree = yaml.safe_load(grid.read_text())
    assert "untuned" not in tree
    gpu = {(p["arm"], p.get("data.batch_size")): float(p["optim.lr"]) for p in tree["union"]}
    assert gpu["gn", "2"] == 0.1 * 2 / 128 and gpu["bn,ghost_bn32,ghost_bn8,ghost_bn2", None] == 0.2
