"""Convergence, rule version 4 (bnlab.report.dropout_rule): optimiser steps to a fixed
accuracy that every seed of both arms reaches, each arm at its own lr, at the reference
batch. Synthetic stores whose verdicts follow from their construction.

Every point has 3 seeds offset -0.4, 0, +0.4 pp in final accuracy (tests.arms_synth's
spread); the synthetic curves (tests.report_synth.make_run) rise from chance to the
final accuracy over the preset's 6 epochs, faster with a larger `speed`. Preset cpu:
10,000 training images, so at batch 64 an epoch is floor(10000 / 64) = 156 steps and
the minimum effect is 78 steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bnlab.report import build_report
from bnlab.report.core import INCONCLUSIVE, MIXED, NO_DATA, NOT_SUPPORTED, SUPPORTED
from bnlab.report.dropout_rule import TARGET_LADDER
from bnlab.report.intervals import difference, estimate
from bnlab.report.keys import RUN_ID, K
from bnlab.report.load import load_runs
from bnlab.report.points import epochs_to
from bnlab.report.sections import SECTIONS
from tests.arms_synth import ARM_CONFIG, SEEDS, SPREAD
from tests.report_synth import make_run

LADDER = (0.05, 0.1, 0.2)  # lrs; the best is the middle one unless a test says otherwise
BATCH = 64
PER_EPOCH = 10_000 // BATCH  # 156


def grid_runs(
    runs: Path,
    arm: str,
    accs: dict[float, float | None],
    *,
    seeds: tuple[int, ...] = SEEDS,
    speed: float = 0.6,
    batch: int = BATCH,
    **config: Any,
) -> None:
    """One arm over an lr ladder: lr -> final test accuracy (None: every seed diverges)."""
    norm, base = ARM_CONFIG[arm]
    for lr, acc in accs.items():
        for i, seed in enumerate(seeds):
            cfg = {**base, **config, "data.batch_size": batch, "optim.lr": lr, "train.seed": seed}
            kw: dict[str, Any] = {"status": "diverged", "diverged_epoch": 1}
            if acc is not None:
                kw = {"final": acc + SPREAD[i % len(SPREAD)]}
            make_run(runs, norm=norm, config=cfg, speed=speed, **kw)


def peak(best: float) -> dict[float, float | None]:
    """A ladder whose best lr is its middle one, 0.1."""
    return dict(zip(LADDER, (best - 0.04, best, best - 0.02), strict=True))


def decide(runs: Path):
    return SECTIONS["convergence"](load_runs(runs))


def rows_of(result) -> dict[str, Any]:
    return {v.against: v for v in result.comparisons}


BN_FAST = {"accs": peak(0.72), "speed": 0.9}
SLOW = {"accs": peak(0.64), "speed": 0.3}
LIKE_BN = {"accs": peak(0.72), "speed": 0.9}


def store(runs: Path, **arms: dict[str, Any]) -> Path:
    grid_runs(runs, "bn", BN_FAST["accs"], speed=BN_FAST["speed"])
    for arm, spec in arms.items():
        grid_runs(runs, arm, spec["accs"], speed=spec["speed"])
    return runs


# ----------------------------------------------------------------------------- verdicts


def test_supported_when_bn_reaches_the_fixed_target_in_fewer_steps(tmp_path):
    r = decide(store(tmp_path, fixup=SLOW))
    assert r.version == 4 and r.verdict == SUPPORTED
    [row] = r.comparisons
    assert (row.against, row.verdict, row.unit, row.blocked) == (
        "vs Fixup",
        SUPPORTED,
        "steps",
        False,
    )
    # Fixup's slowest seed peaks at 63.6%: the largest target of the ladder below is 60%.
    assert r.numbers["fixup_target_acc_pct"] == 60.0
    assert (r.numbers["reference_batch"], r.numbers["steps_per_epoch"]) == (64, PER_EPOCH)
    assert r.numbers["minimum_steps"] == PER_EPOCH / 2
    # The effect is the epochs to 60%, interpolated, times 156 steps: arm minus BN.
    tables = load_runs(tmp_path)
    at = tables.runs[tables.runs[K.optim.lr].eq(0.1) & tables.runs[K.data.batch_size].eq(64)]
    labels = at[K.model.init].where(at[K.norm.kind].eq("none"), "bn")
    steps = {
        a: estimate(epochs_to(at[labels.eq(a)], tables.epochs, 0.60)["epochs"] * PER_EPOCH)
        for a in ("bn", "fixup")
    }
    expected = difference(steps["fixup"], steps["bn"])
    assert row.effect == pytest.approx(expected.value)
    assert row.low == pytest.approx(expected.low) and row.low > PER_EPOCH / 2
    assert row.seeds == "3 vs 3"


def test_not_supported_when_the_arm_is_as_fast(tmp_path):
    r = decide(store(tmp_path, fixup=LIKE_BN))
    [row] = r.comparisons
    assert r.verdict == NOT_SUPPORTED and row.verdict == NOT_SUPPORTED
    assert abs(row.effect) < 1 and row.high < PER_EPOCH / 2
    assert r.numbers["fixup_target_acc_pct"] == 70.0  # both peak at 71.6% at the least


def test_mixed_when_one_arm_is_slower_and_another_as_fast(tmp_path):
    r = decide(store(tmp_path, fixup=SLOW, skipinit=LIKE_BN))
    assert r.verdict == MIXED
    rows = rows_of(r)
    assert (rows["vs Fixup"].verdict, rows["vs SkipInit"].verdict) == (SUPPORTED, NOT_SUPPORTED)


# ----------------------------------------------------------------------------- the target


def test_the_target_is_a_fixed_ladder_value_per_comparison(tmp_path):
    # SkipInit peaks at 33.6%: 30% against it, 60% against Fixup, not a fraction of
    # either arm's accuracy (version 3 took 90% of the lower one).
    r = decide(store(tmp_path, fixup=SLOW, skipinit={"accs": peak(0.34), "speed": 0.3}))
    assert (r.numbers["fixup_target_acc_pct"], r.numbers["skipinit_target_acc_pct"]) == (60, 30)
    assert {100 * t for t in r.data["reach"]["target"]} == {60.0, 30.0}
    assert all(round(t, 2) in TARGET_LADDER for t in r.data["reach"]["target"])
    assert "curve_target_acc_pct" not in r.numbers  # two targets: no single line
    assert rows_of(r)["vs SkipInit"].verdict == SUPPORTED


def test_one_target_is_drawn_on_the_per_epoch_curves(tmp_path):
    r = decide(store(tmp_path, fixup=SLOW))
    assert r.numbers["curve_target_acc_pct"] == 60.0
    assert r.figures == ["convergence_steps", "training_curves"]
    assert set(r.data["curves"][K.norm.kind]) == {"bn", "fixup"}


def _one_seed_off(runs: Path, seed2: float | None) -> None:
    """SkipInit: seeds 0 and 1 like Fixup's slow runs, seed 2 at `seed2` at every lr."""
    grid_runs(runs, "skipinit", peak(0.64), seeds=(0, 1), speed=0.3)
    grid_runs(runs, "skipinit", dict.fromkeys(LADDER, seed2), seeds=(2,), speed=0.3)


@pytest.mark.parametrize(
    ("seed2", "why"),
    [
        (0.15, "a seed's run peaks at 14.6%"),  # finished (-0.4 pp), below the lowest target
        (0.11, "1 of 3 measured run(s) diverged or stuck"),  # stuck at chance
        (None, "1 of 3 measured run(s) diverged or stuck"),  # diverged
    ],
)
def test_not_measured_when_a_seed_never_reaches_the_lowest_target(tmp_path, seed2, why):
    store(tmp_path, fixup=SLOW)
    _one_seed_off(tmp_path, seed2)
    r = decide(tmp_path)
    row = rows_of(r)["vs SkipInit"]
    # The arm trains (mean 46% at lr 0.1), but no target is reached by every seed.
    assert row.verdict == INCONCLUSIVE and row.effect is None and why in row.why
    assert "SkipInit" in row.why and "not measured" in row.why
    assert r.verdict == SUPPORTED  # the headline: the measured comparison (vs Fixup)
    failed = r.evidence[
        r.evidence["against"].eq("vs SkipInit") & r.evidence["arm"].str.contains("SkipInit")
    ]
    expected = {0.15: ("0/3", "0/3"), 0.11: ("0/3", "1/3"), None: ("1/3", "0/3")}[seed2]
    assert tuple(failed[["diverged", "stuck"]].iloc[0]) == expected


def test_not_measured_when_an_arm_does_not_train(tmp_path):
    store(tmp_path, fixup=SLOW)
    grid_runs(tmp_path, "none", dict.fromkeys(LADDER, 0.18), speed=0.3)
    r = decide(tmp_path)
    row = rows_of(r)["vs naive He init"]
    assert row.verdict == INCONCLUSIVE and row.effect is None
    assert "does not train (best mean 18.0% < 25%)" in row.why
    assert r.verdict == SUPPORTED


# ----------------------------------------------------------------------------- which runs


def test_steps_per_epoch_drop_the_last_partial_batch(tmp_path):
    # 10,000 images at batch 128: 78 full batches (78.125), as the training loader yields.
    grid_runs(tmp_path, "bn", BN_FAST["accs"], speed=0.9, batch=128)
    grid_runs(tmp_path, "fixup", SLOW["accs"], speed=0.3, batch=128)
    r = decide(tmp_path)
    assert (r.numbers["reference_batch"], r.numbers["steps_per_epoch"]) == (128, 78)
    assert r.numbers["minimum_steps"] == 39


def test_only_the_reference_batch_and_runs_without_dropout_count(tmp_path):
    store(tmp_path, fixup=SLOW)
    before = rows_of(decide(tmp_path))["vs Fixup"]
    # Fixup as fast as BN at a smaller batch, and with dropout: neither may count.
    grid_runs(tmp_path, "fixup", BN_FAST["accs"], speed=0.9, batch=32)
    grid_runs(tmp_path, "fixup", BN_FAST["accs"], speed=0.9, **{"model.dropout": 0.3})
    r = decide(tmp_path)
    after = rows_of(r)["vs Fixup"]
    assert (after.verdict, after.effect) == (before.verdict, pytest.approx(before.effect))
    assert r.numbers["reference_batch"] == 64
    assert any("below the reference batch 64" in n for n in r.notes)


def test_each_arm_at_the_lr_the_other_seeds_chose(tmp_path):
    # Fixup's best mean is at 0.05, BN's at 0.1: each is measured at its own.
    store(tmp_path)
    grid_runs(tmp_path, "fixup", {0.025: 0.60, 0.05: 0.64, 0.1: 0.62}, speed=0.3)
    r = decide(tmp_path)
    assert (r.numbers["bn_best_lr"], r.numbers["fixup_best_lr"]) == (0.1, 0.05)
    used = dict(zip(r.evidence["arm"], r.evidence["lr used"], strict=True))
    assert used == {"BN": "0.1", "Fixup (no norm)": "0.05"}


# ----------------------------------------------------------------------------- blocking


def test_an_arm_best_at_the_top_of_its_ladder_blocks_supported(tmp_path):
    store(tmp_path)
    grid_runs(tmp_path, "fixup", {0.05: 0.60, 0.1: 0.62, 0.2: 0.64}, speed=0.3)
    r = decide(tmp_path)
    [row] = r.comparisons
    # A better-tuned Fixup might converge faster: SUPPORTED cannot stand.
    assert row.verdict == INCONCLUSIVE and row.blocked and row.effect > PER_EPOCH
    assert "best lr at the top of its ladder (0.2): extend it" in row.why
    assert r.verdict == INCONCLUSIVE


def test_bn_at_an_edge_does_not_block_supported(tmp_path):
    # BN better tuned would only be faster still.
    grid_runs(tmp_path, "bn", {0.05: 0.68, 0.1: 0.70, 0.2: 0.72}, speed=0.9)
    grid_runs(tmp_path, "fixup", SLOW["accs"], speed=0.3)
    [row] = decide(tmp_path).comparisons
    assert row.verdict == SUPPORTED and not row.blocked


def test_fewer_than_three_seeds_never_decide(tmp_path):
    grid_runs(tmp_path, "bn", BN_FAST["accs"], speed=0.9, seeds=(0, 1))
    grid_runs(tmp_path, "fixup", SLOW["accs"], speed=0.3, seeds=(0, 1))
    r = decide(tmp_path)
    [row] = r.comparisons
    assert row.verdict == INCONCLUSIVE and row.why.startswith("exploratory")
    assert r.verdict == INCONCLUSIVE


def test_no_bn_run_is_no_data(tmp_path):
    grid_runs(tmp_path, "fixup", SLOW["accs"], speed=0.3)
    r = decide(tmp_path)
    assert r.verdict == NO_DATA and r.figures == []


def test_version_3_is_still_decided_beside(tmp_path):
    r = decide(store(tmp_path, fixup=SLOW))
    assert 3 in [version for version, _, _ in r.superseded]


# ----------------------------------------------------------------------------- the report


def test_the_section_renders_with_its_figures(tmp_path):
    runs = store(tmp_path / "runs", fixup=SLOW)
    grid_runs(runs, "none", dict.fromkeys(LADDER, 0.18), speed=0.3)  # does not train
    _one_seed_off(runs, None)  # a measured SkipInit run diverged: the figure's strip
    out = build_report(runs, tmp_path / "report", experiment="convergence")
    [claim] = out.claims
    assert claim.verdict == SUPPORTED
    names = {p.name for p in out.figures}
    assert {"convergence_steps.png", "training_curves.png"} <= names
    text = out.report_md.read_text()
    assert "**Rule (v4).**" in text and "**Earlier rule v3**" in text
    assert "steps to target [95% CI]" in text
    assert set(claim.data["curves"][RUN_ID]) <= set(load_runs(runs).runs[RUN_ID])
    assert claim.data["failed"]["outcome"].tolist() == ["diverged"]


def test_the_figure_renders_with_bn_alone(tmp_path):
    # No no-BN arm: no comparison, no target to mark -- the figure is still drawn (the
    # committed GPU runs were like this and once raised KeyError: 'target').
    runs = tmp_path / "runs"
    grid_runs(runs, "bn", BN_FAST["accs"], speed=BN_FAST["speed"])
    out = build_report(runs, tmp_path / "report", experiment="convergence")
    assert "convergence_steps.png" in {p.name for p in out.figures}
