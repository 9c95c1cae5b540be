"""The headline claims' grids (issue 24): what experiment=all sweeps per preset, the
budgets fixed before the runs, and the small-batch grid's lr = base x b / R."""

from __future__ import annotations

import math

import pytest

from bnlab.errors import BnlabError
from bnlab.sweep import grid
from bnlab.sweep.grid import experiment_grids, experiments, suite

HEADLINE = ["lr", "convergence", "batch_tune", "depth", "small_batch"]


def test_all_at_preset_cpu_is_the_headline_suite_in_order() -> None:
    assert suite(["experiment=all", "preset=cpu"]) == HEADLINE


def test_all_without_a_listed_preset_is_every_experiment() -> None:
    assert suite(["experiment=all", "preset=smoke"]) == experiments()
    assert suite(["experiment=all"]) == experiments()


def test_all_at_preset_gpu_names_every_claim_file_it_keeps() -> None:
    names = suite(["experiment=all", "preset=gpu"])
    assert set(HEADLINE) <= set(names) and "dropout" in names and "sequence" in names
    assert not {"lr_naive", "deep_no_norm", "depth_plain", "batch_protocol"} & set(names)


def test_a_suite_naming_no_experiment_file_is_a_clear_error(tmp_path, monkeypatch) -> None:
    (tmp_path / grid.GRID_DIR).mkdir()
    (tmp_path / grid.GRID_DIR / f"{grid.SUITES}.yaml").write_text("cpu: lr,nonesuch\n")
    monkeypatch.setattr(grid, "CONFIG_DIR", tmp_path)
    with pytest.raises(BnlabError, match="nonesuch"):
        suite(["experiment=all", "preset=cpu"])


@pytest.mark.parametrize(("preset", "reference"), [("cpu", 64), ("gpu", 128)])
def test_small_batch_lrs_are_one_base_per_norm_times_b_over_r(preset: str, reference: int) -> None:
    bases: dict[str, set[float]] = {}
    batches: dict[str, set[int]] = {}
    for product in experiment_grids("small_batch", preset):
        if "data.batch_size" not in product:  # the ghost-BN decomposition at R
            continue
        arm, batch, lr = product["arm"], int(product["data.batch_size"]), float(product["optim.lr"])
        bases.setdefault(arm, set()).add(round(lr * reference / batch, 12))
        batches.setdefault(arm, set()).add(batch)
    assert set(bases) == {"bn", "gn", "ln"}
    assert all(len(b) == 1 for b in bases.values()), bases
    assert all(b == {2, 4, 8, 16, 32} for b in batches.values())


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_lr_windows_sit_on_one_x2_lattice(preset: str) -> None:
    for product in experiment_grids("lr", preset):
        lrs = [float(v) for v in product["optim.lr"].split(",")]
        steps = [math.log2(v / 0.0125) for v in lrs]
        assert all(abs(s - round(s)) < 1e-9 for s in steps), lrs
        assert [round(s) for s in steps] == list(range(round(steps[0]), round(steps[-1]) + 1))


def test_bn_lr_window_reaches_far_above_the_others() -> None:
    tops = {}
    for product in experiment_grids("lr", "cpu"):
        for arm in product["arm"].split(","):
            tops[arm] = max(float(v) for v in product["optim.lr"].split(","))
    assert tops["bn"] >= 8 * max(v for a, v in tops.items() if a != "bn")


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_headline_claims_share_one_scale_file(preset: str) -> None:
    for name in ["lr", "convergence", "batch_tune", "depth", "small_batch", "dropout"]:
        text = (grid.CONFIG_DIR / "scale" / preset / f"{name}.yaml").read_text()
        assert f"/scale/{preset}/headline" in text, name
