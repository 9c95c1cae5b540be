"""The dropout claim, rule version 1 (bnlab.report.dropout_rule): without augmentation, at
the reference batch, dropout's gain for a no-BN arm minus its gain for BN, each (arm,
dropout) point at its own lr. Synthetic stores whose verdicts follow from their
construction.

Every point has 3 seeds offset -0.4, 0, +0.4 pp (SD 0.4 pp) unless a test narrows the
spread: the four-point effect's 95% interval is then about +-1.1 pp, so a 1 pp minimum
needs a clear effect to be SUPPORTED, and "equal gains" needs the narrower spread
(+-0.2 pp: about +-0.5 pp) to be NOT SUPPORTED.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bnlab.report import build_report
from bnlab.report.core import INCONCLUSIVE, MIXED, NO_DATA, NOT_SUPPORTED, SUPPORTED
from bnlab.report.dropout_rule import own_lr
from bnlab.report.keys import K
from bnlab.report.load import load_runs
from bnlab.report.sections import SECTIONS
from tests.arms_synth import ARM_CONFIG, SEEDS, SPREAD
from tests.report_synth import make_run

LADDER = (0.05, 0.1, 0.2)
NARROW = (-0.002, 0.0, 0.002)
P = 0.3
NO_AUG = {"data.augment": False, "data.batch_size": 64}


def grid_runs(
    runs: Path,
    arm: str,
    accs: dict[float, float | None],
    *,
    dropout: float = 0.0,
    seeds: tuple[int, ...] = SEEDS,
    spread: tuple[float, ...] = SPREAD,
    **config: Any,
) -> None:
    """One (arm, dropout) point over an lr ladder: lr -> final test accuracy (None:
    every seed diverges), without augmentation at batch 64 unless `config` says else."""
    norm, base = ARM_CONFIG[arm]
    for lr, acc in accs.items():
        for i, seed in enumerate(seeds):
            cfg = {**base, **NO_AUG, **config, "model.dropout": dropout}
            cfg |= {"optim.lr": lr, "train.seed": seed}
            kw: dict[str, Any] = {"status": "diverged", "diverged_epoch": 1}
            if acc is not None:
                kw = {"final": acc + spread[i % len(spread)]}
            make_run(runs, norm=norm, config=cfg, **kw)


def peak(best: float) -> dict[float, float | None]:
    """A ladder whose best lr is its middle one, 0.1."""
    return dict(zip(LADDER, (best - 0.04, best, best - 0.02), strict=True))


def arm_pair(runs: Path, arm: str, without: float, with_p: float, **kw: Any) -> None:
    """`arm` without dropout and with dropout P, each best at lr 0.1."""
    grid_runs(runs, arm, peak(without), **kw)
    grid_runs(runs, arm, peak(with_p), dropout=P, **kw)


def decide(runs: Path):
    return SECTIONS["dropout"](load_runs(runs))


def rows_of(result) -> dict[str, Any]:
    return {v.against: v for v in result.comparisons}


# ----------------------------------------------------------------------------- verdicts


def test_supported_when_dropout_helps_the_no_bn_arm_more(tmp_path):
    arm_pair(tmp_path, "bn", 0.70, 0.705)  # gain +0.5 pp
    arm_pair(tmp_path, "fixup", 0.60, 0.64)  # gain +4 pp
    r = decide(tmp_path)
    assert r.version == 1 and r.verdict == SUPPORTED
    [row] = r.comparisons
    assert (row.against, row.unit, row.seeds) == ("vs Fixup", "pp", "3 vs 3 vs 3 vs 3")
    assert row.effect == pytest.approx(3.5) and row.low > 1.0
    assert (r.numbers["bn_gain_pp"], r.numbers["fixup_gain_pp"]) == (0.5, 4.0)
    assert (r.numbers["dropout_p"], r.numbers["reference_batch"]) == (P, 64)


def test_not_supported_when_the_gains_are_equal(tmp_path):
    for arm, base in (("bn", 0.70), ("fixup", 0.60)):
        arm_pair(tmp_path, arm, base, base + 0.01, spread=NARROW)
    r = decide(tmp_path)
    [row] = r.comparisons
    assert r.verdict == NOT_SUPPORTED and row.verdict == NOT_SUPPORTED
    assert row.effect == pytest.approx(0.0, abs=1e-9) and row.high < 1.0


def test_inconclusive_when_the_seeds_cannot_tell(tmp_path):
    # Equal gains with the wider spread: the interval reaches past the 1 pp minimum.
    for arm, base in (("bn", 0.70), ("fixup", 0.60)):
        arm_pair(tmp_path, arm, base, base + 0.01)
    [row] = decide(tmp_path).comparisons
    assert row.verdict == INCONCLUSIVE and row.why == "interval too wide to decide"
    assert not row.blocked


def test_mixed_when_dropout_helps_one_arm_more_and_another_less(tmp_path):
    arm_pair(tmp_path, "bn", 0.70, 0.705)
    arm_pair(tmp_path, "fixup", 0.60, 0.64)  # +4 pp
    arm_pair(tmp_path, "skipinit", 0.60, 0.58)  # -2 pp: dropout hurts it
    r = decide(tmp_path)
    rows = rows_of(r)
    assert (rows["vs Fixup"].verdict, rows["vs SkipInit"].verdict) == (SUPPORTED, NOT_SUPPORTED)
    assert r.verdict == MIXED


# ----------------------------------------------------------------------------- not measured


def test_not_measured_when_an_arm_does_not_train(tmp_path):
    arm_pair(tmp_path, "bn", 0.70, 0.705)
    arm_pair(tmp_path, "fixup", 0.60, 0.64)
    arm_pair(tmp_path, "none", 0.18, 0.22)  # never reaches 25% without dropout
    r = decide(tmp_path)
    row = rows_of(r)["vs naive He init"]
    assert row.verdict == INCONCLUSIVE and row.effect is None
    assert "dropout 0 does not train (best mean 18.0% < 25%)" in row.why
    assert r.verdict == SUPPORTED  # the measured comparison decides the headline


def test_failing_to_train_with_dropout_counts_as_its_cost(tmp_path):
    arm_pair(tmp_path, "bn", 0.70, 0.705)
    grid_runs(tmp_path, "fixup", peak(0.60))
    # With dropout Fixup is stuck at chance or diverges at every lr (best 0.1: inside).
    grid_runs(tmp_path, "fixup", {0.05: 0.10, 0.1: 0.11, 0.2: None}, dropout=P)
    r = decide(tmp_path)
    [row] = r.comparisons
    assert row.verdict == NOT_SUPPORTED and row.effect < -40
    fixup_p = r.evidence[
        r.evidence["arm"].str.startswith("Fixup") & r.evidence["dropout"].eq("0.3")
    ]
    assert (fixup_p["diverged"].iloc[0], fixup_p["stuck"].iloc[0]) == ("0/3", "3/3")


def test_a_missing_point_asks_for_it(tmp_path):
    grid_runs(tmp_path, "bn", peak(0.70))  # BN without dropout only
    arm_pair(tmp_path, "fixup", 0.60, 0.64)
    [row] = decide(tmp_path).comparisons
    assert row.verdict == INCONCLUSIVE and row.effect is None
    assert row.why == "needs bn and fixup, each without dropout and with dropout 0.3"


def test_fewer_than_three_seeds_never_decide(tmp_path):
    arm_pair(tmp_path, "bn", 0.70, 0.705, seeds=(0, 1))
    arm_pair(tmp_path, "fixup", 0.60, 0.64, seeds=(0, 1))
    r = decide(tmp_path)
    [row] = r.comparisons
    assert row.verdict == INCONCLUSIVE and row.why.startswith("exploratory")
    assert r.verdict == INCONCLUSIVE


# ----------------------------------------------------------------------------- lr and edges


def _part(accs: dict[float, tuple[float, ...]]) -> pd.DataFrame:
    rows = [
        {K.optim.lr: lr, K.train.seed: seed, "acc": acc, "run_id": f"{lr}-{seed}"}
        for lr, values in accs.items()
        for seed, acc in enumerate(values)
    ]
    return pd.DataFrame(rows)


def test_own_lr_measures_each_seed_at_the_lr_the_other_seeds_chose():
    # lr 0.1 is best on the mean of all seeds (0.80 > 0.783), but only because seed 0 was
    # lucky at 0.2 (0.95): without seed 0, seeds 1 and 2 each see 0.2 as best (0.825).
    p = own_lr(_part({0.1: (0.80, 0.80, 0.80), 0.2: (0.95, 0.70, 0.70)}), "fixup", "Fixup")
    assert p.best_lr == 0.1 and p.lr_used == "0.1, 0.2, 0.2"
    assert p.acc.mean == pytest.approx((0.80 + 0.70 + 0.70) / 3)
    assert p.edge == "best lr at the bottom of its ladder (0.1)"
    # Ties go to the smaller lr; one lr is an edge too.
    tie = own_lr(_part({0.05: (0.7,) * 3, 0.1: (0.8,) * 3, 0.2: (0.8,) * 3}), "bn", "BN")
    assert (tie.best_lr, tie.edge) == (0.1, "")
    only = own_lr(_part({0.1: (0.8,) * 3}), "bn", "BN")
    assert only.edge == "best lr is the only lr tried (0.1)"


def test_each_arm_and_dropout_value_at_its_own_lr(tmp_path):
    arm_pair(tmp_path, "bn", 0.70, 0.705)
    grid_runs(tmp_path, "fixup", peak(0.60))
    grid_runs(tmp_path, "fixup", {0.05: 0.60, 0.1: 0.62, 0.2: 0.64, 0.4: 0.63}, dropout=P)
    r = decide(tmp_path)
    assert (r.numbers["fixup_dropout_0_best_lr"], r.numbers["fixup_dropout_0.3_best_lr"]) == (
        0.1,
        0.2,
    )
    fixup = r.evidence[r.evidence["arm"].str.startswith("Fixup")]
    assert fixup["lr used"].tolist() == ["0.1", "0.2"]
    assert fixup["test acc % [95% CI]"].tolist()[1].startswith("64.0")
    assert rows_of(r)["vs Fixup"].effect == pytest.approx(3.5)


def test_the_no_bn_arm_best_at_an_edge_without_dropout_blocks_supported(tmp_path):
    # Fixup without dropout best at the largest lr: tuned further it might gain, and its
    # gain from dropout shrink -- SUPPORTED cannot stand.
    arm_pair(tmp_path, "bn", 0.70, 0.705)
    grid_runs(tmp_path, "fixup", {0.05: 0.56, 0.1: 0.58, 0.2: 0.60})
    grid_runs(tmp_path, "fixup", peak(0.64), dropout=P)
    r = decide(tmp_path)
    [row] = r.comparisons
    assert row.verdict == INCONCLUSIVE and row.blocked and row.effect == pytest.approx(3.5)
    assert "dropout 0: best lr at the top of its ladder (0.2): extend it" in row.why
    assert r.verdict == INCONCLUSIVE


def test_an_edge_that_could_only_strengthen_supported_does_not_block(tmp_path):
    # Fixup with dropout best at the largest lr: tuned further, its gain only grows.
    arm_pair(tmp_path, "bn", 0.70, 0.705)
    grid_runs(tmp_path, "fixup", peak(0.60))
    grid_runs(tmp_path, "fixup", {0.05: 0.60, 0.1: 0.62, 0.2: 0.64}, dropout=P)
    [row] = decide(tmp_path).comparisons
    assert row.verdict == SUPPORTED and not row.blocked


# ----------------------------------------------------------------------------- which runs


def test_runs_with_augmentation_are_ignored(tmp_path):
    arm_pair(tmp_path, "bn", 0.70, 0.705)
    arm_pair(tmp_path, "fixup", 0.60, 0.64)
    before = rows_of(decide(tmp_path))["vs Fixup"]
    # With augmentation dropout would hurt Fixup badly and help BN: not this claim's runs.
    aug = {"data.augment": True}
    arm_pair(tmp_path, "bn", 0.70, 0.75, **aug)
    arm_pair(tmp_path, "fixup", 0.70, 0.50, **aug)
    r = decide(tmp_path)
    after = rows_of(r)["vs Fixup"]
    assert (after.verdict, after.effect) == (before.verdict, pytest.approx(before.effect))
    assert "ignored 18 run(s) with dropout and augmentation" in r.notes


def test_the_largest_dropout_and_the_reference_batch(tmp_path):
    arm_pair(tmp_path, "bn", 0.70, 0.705)
    arm_pair(tmp_path, "fixup", 0.60, 0.64)
    grid_runs(tmp_path, "fixup", peak(0.50), dropout=0.1)  # a smaller p: left out
    arm_pair(tmp_path, "fixup", 0.50, 0.70, **{"data.batch_size": 32})  # a smaller batch
    r = decide(tmp_path)
    assert rows_of(r)["vs Fixup"].effect == pytest.approx(3.5)
    assert any("dropout other than 0 and 0.3" in n for n in r.notes)
    assert any("below the reference batch 64" in n for n in r.notes)


def test_no_dropout_run_is_no_data(tmp_path):
    grid_runs(tmp_path, "bn", peak(0.70))
    grid_runs(tmp_path, "fixup", peak(0.60))
    r = decide(tmp_path)
    assert r.verdict == NO_DATA and r.figures == []
    assert "no run with model.dropout above 0 without augmentation yet" in r.notes


def test_no_bn_run_is_no_data(tmp_path):
    arm_pair(tmp_path, "fixup", 0.60, 0.64)
    assert decide(tmp_path).verdict == NO_DATA


# ----------------------------------------------------------------------------- the report


def test_the_section_renders_with_its_figure(tmp_path):
    runs = tmp_path / "runs"
    arm_pair(runs, "bn", 0.70, 0.705)
    arm_pair(runs, "fixup", 0.60, 0.64)
    arm_pair(runs, "none", 0.18, 0.22)
    out = build_report(runs, tmp_path / "report", experiment="dropout")
    [claim] = out.claims
    assert claim.verdict == SUPPORTED
    assert {"dropout_gain.png", "dropout_gain.svg"} <= {p.name for p in out.figures}
    text = out.report_md.read_text()
    assert "## 1. Dropout: SUPPORTED" in text and "**Rule (v1).**" in text
    assert list(claim.data["gains"]["arm"]) == ["bn", "fixup", "none"]
    assert claim.evidence.columns.tolist() == [
        "arm",
        "dropout",
        "lrs tried",
        "lr used",
        "test acc % [95% CI]",
        "diverged",
        "stuck",
        "gain pp [95% CI]",
    ]
    gains = dict(zip(claim.evidence["arm"], claim.evidence["gain pp [95% CI]"], strict=False))
    assert gains["BN"].startswith("+0.5 [")
    assert K.model.dropout in load_runs(runs).runs
