"""The batch_why section, rule version 2 (bnlab.report.mechanisms): the ghost-BN
decomposition with seeds paired and its train-set measure in eval conditions, on
synthetic stores whose per-seed differences are known.

Every arm is run at lr 0.025, 0.05 and 0.1 (best: 0.05, inside the ladder; every
evaluation 5 pp lower at the others) at batch 64, seeds 0, 1, 2. Seed s moves every
value of both arms by SHIFT[s] (-3, 0, +3 pp): unpaired, a 3-seed interval would be
about +-7 pp; paired, that shift cancels. Ghost BN's values also carry JITTER[s] (-0.2,
0, +0.2 pp; its sign and size differ between the evaluations), so each paired difference
has an interval of about +-0.5 to +-1 pp around the constructed value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bnlab.report import build_report
from bnlab.report.core import INCONCLUSIVE, MIXED, NO_DATA, NOT_SUPPORTED, SUPPORTED
from bnlab.report.load import load_runs
from bnlab.report.mechanisms import PREDATES, batch_why_section_v1
from bnlab.report.sections import SECTIONS
from tests.report_synth import make_run

LRS = (0.025, 0.05, 0.1)
BEST = 0.05
OFF_BEST = 0.05  # every evaluation 5 pp lower away from the best lr
SHIFT = (-0.03, 0.0, 0.03)
JITTER = (-0.002, 0.0, 0.002)
JITTER_SIGNS = (1.0, -0.5, 0.5, 1.0, -0.5)  # per evaluation (a) to (e)
SEEDS = (0, 1, 2)
# (a) running, (b) precise, (c) test groups, (d) train mode, (e) train running
BN_MODES = (0.72, 0.72, 0.71, 0.82, 0.815)
# ghost g=4, every part SUPPORTED: gap 10 pp = noise 2 + mismatch 5.5 + rest 2.5;
# precise statistics recover 6 pp.
GHOST_DECOMPOSED = (0.62, 0.68, 0.50, 0.80, 0.74)
# ghost g=16, a 10 pp gap of which neither the training noise nor the statistics explain
# any part (all of it is the rest: eval-mode generalisation), precise recovers nothing.
GHOST_UNEXPLAINED = (0.62, 0.62, 0.60, 0.82, 0.815)
GHOST_NO_GAP = (0.72, 0.72, 0.70, 0.82, 0.815)  # ghost g=32 loses nothing


def modes_of(
    values: tuple[float, ...], shift: float, jitter: float, running: bool
) -> dict[str, Any]:
    # The jitter enters each evaluation with its own sign, so every part has a spread.
    a, b, c, d, e = (v + shift + w * jitter for v, w in zip(values, JITTER_SIGNS, strict=True))
    out: dict[str, Any] = {
        "g": 0,
        "running_acc": a,
        "precise_acc": b,
        "batch_stats_acc": c,
        "batch_stats_acc_shuffles": [c, c],
        "train_mode_loss": 1.0,
        "train_mode_acc": d,
        "train_images": 4992,
    }
    if running:  # runs trained before (e) existed lack both fields
        out |= {"train_running_loss": 1.1, "train_running_acc": e}
    return out


def arm_runs(
    runs: Path,
    g: int | None,
    values: tuple[float, ...],
    *,
    lrs: tuple[float, ...] = LRS,
    best: float = BEST,
    seeds: tuple[int, ...] = SEEDS,
    running: bool = True,
    batch: int = 64,
    diverged: set[tuple[float, int]] = frozenset(),  # type: ignore[assignment]
) -> None:
    """One arm (bn when `g` is None, else ghost_bn/g) over its lr ladder and seeds."""
    ghost = g is not None
    for lr in lrs:
        for seed in seeds:
            shift = SHIFT[seed] - (0.0 if lr == best else OFF_BEST)
            modes = modes_of(values, shift, JITTER[seed] if ghost else 0.0, running)
            config: dict[str, Any] = {
                "data.batch_size": batch,
                "optim.lr": lr,
                "train.seed": seed,
                "probe.bn_modes": True,
            }
            if ghost:
                config["norm.virtual_batch"] = g
            if (lr, seed) in diverged:
                make_run(runs, norm="ghost_bn" if ghost else "bn", config=config,
                         status="diverged")  # fmt: skip
                continue
            make_run(
                runs,
                norm="ghost_bn" if ghost else "bn",
                config=config,
                final=modes["running_acc"],
                summary_extra={"bn_modes": modes | {"g": g or batch}},
            )


def decide(runs: Path):
    return SECTIONS["batch_why"](load_runs(runs))


def rows_of(result) -> dict[str, tuple[str, str]]:
    return {v.against: (v.verdict, v.why) for v in result.comparisons}


ROWS = ("statistics mismatch, training set", "recovered by precise statistics", "training noise")


def names(g: int) -> list[str]:
    return [f"ghost g={g}: {part}" for part in ROWS]


# ----------------------------------------------------------------------------- verdicts


def test_every_part_supported_with_paired_seeds(tmp_path):
    arm_runs(tmp_path, None, BN_MODES)
    arm_runs(tmp_path, 4, GHOST_DECOMPOSED)
    r = decide(tmp_path)
    assert r.version == 2 and r.verdict == SUPPORTED
    by = {v.against: v for v in r.comparisons}
    assert list(by) == names(4)
    for name, want in zip(names(4), (5.5, 6.0, 2.0), strict=True):
        row = by[name]
        assert row.verdict == SUPPORTED, (name, row.why)
        assert row.effect == pytest.approx(want, abs=0.01)
        # Paired: the +-3 pp seed shift cancels; only the ghost's +-0.2 pp jitter is left.
        assert row.high - row.low < 2.0, name
        assert row.seeds == "3 vs 3"
    # The gap and its three parts add up, and every part is shown.
    n = r.numbers
    assert n["reference_batch"] == 64
    assert n["g4_gap_pp"].startswith("+10.0") and n["g4_rest_pp"].startswith("+2.5")
    assert n["g4_noise_pp"].startswith("+2.0") and n["g4_mismatch_pp"].startswith("+5.5")


def test_unpaired_the_same_runs_could_not_decide():
    # The construction's point: the seed shift is shared by the two runs of a seed, so
    # only pairing separates the arms (Welch's interval on the unpaired means is ~+-7 pp).
    from bnlab.report.intervals import difference, estimate

    ghost = estimate(GHOST_DECOMPOSED[0] + s + j for s, j in zip(SHIFT, JITTER, strict=True))
    bn = estimate(BN_MODES[0] + s for s in SHIFT)
    welch = difference(bn, ghost)
    assert welch.high - welch.low > 0.1  # > 10 pp wide


def test_not_supported_when_the_gap_is_neither_noise_nor_statistics(tmp_path):
    arm_runs(tmp_path, None, BN_MODES)
    arm_runs(tmp_path, 16, GHOST_UNEXPLAINED)
    r = decide(tmp_path)
    assert [v for v, _ in rows_of(r).values()] == [NOT_SUPPORTED] * 3
    assert r.verdict == NOT_SUPPORTED
    assert r.numbers["g16_rest_pp"].startswith("+10.0")


def test_mixed_when_ghost_arms_disagree(tmp_path):
    arm_runs(tmp_path, None, BN_MODES)
    arm_runs(tmp_path, 4, GHOST_DECOMPOSED)
    arm_runs(tmp_path, 16, GHOST_UNEXPLAINED)
    r = decide(tmp_path)
    assert list(rows_of(r)) == names(16) + names(4)  # larger g first
    assert r.verdict == MIXED


def test_older_runs_leave_the_mismatch_not_measured(tmp_path):
    arm_runs(tmp_path, None, BN_MODES, running=False)
    arm_runs(tmp_path, 4, GHOST_DECOMPOSED, running=False)
    r = decide(tmp_path)
    by = {v.against: v for v in r.comparisons}
    mismatch = by[names(4)[0]]
    assert mismatch.verdict == INCONCLUSIVE and mismatch.effect is None
    assert mismatch.why == PREDATES
    assert PREDATES == "runs predate the eval-conditions probe (train_running_acc)"
    # The parts that need no (e) are still decided, and decide the headline.
    assert by[names(4)[1]].verdict == SUPPORTED and by[names(4)[2]].verdict == SUPPORTED
    assert r.verdict == SUPPORTED
    assert "g4_mismatch_pp" not in r.numbers and "g4_rest_pp" not in r.numbers
    assert set(r.evidence["(e) running averages, training set %"]) == {"–"}


def test_one_arm_without_e_is_enough_to_leave_it_unmeasured(tmp_path):
    arm_runs(tmp_path, None, BN_MODES, running=False)
    arm_runs(tmp_path, 4, GHOST_DECOMPOSED)
    (verdict, why) = rows_of(decide(tmp_path))[names(4)[0]]
    assert (verdict, why) == (INCONCLUSIVE, PREDATES)


def test_no_gap_to_decompose_blocks_the_arm(tmp_path):
    arm_runs(tmp_path, None, BN_MODES)
    arm_runs(tmp_path, 32, GHOST_NO_GAP)
    r = decide(tmp_path)
    for verdict, why in rows_of(r).values():
        assert verdict == INCONCLUSIVE and why.startswith("no accuracy gap to decompose"), why
    assert all(v.blocked and v.effect is not None for v in r.comparisons)
    assert r.verdict == INCONCLUSIVE


def test_blocked_arm_does_not_sway_the_headline(tmp_path):
    arm_runs(tmp_path, None, BN_MODES)
    arm_runs(tmp_path, 4, GHOST_DECOMPOSED)
    arm_runs(tmp_path, 32, GHOST_NO_GAP)
    assert decide(tmp_path).verdict == SUPPORTED


def test_every_arm_is_measured_at_bns_lr_a_fixed_setting(tmp_path):
    # The decomposition is a fixed setting: one lr for every arm, BN's best among the
    # lrs all arms were run at -- not each arm's own best, and no ladder edge blocks.
    arm_runs(tmp_path, None, BN_MODES, lrs=(0.05,), best=0.05)
    arm_runs(tmp_path, 4, GHOST_DECOMPOSED, lrs=(0.05, 0.1), best=0.1)
    r = decide(tmp_path)
    assert r.numbers["lr"] == 0.05
    ev = r.evidence.set_index("arm")
    assert ev.loc["ghost_bn/4", "lr per seed"] == "0.05, 0.05, 0.05"
    assert not any("extend" in why for _, why in rows_of(r).values())


def test_a_run_that_failed_to_train_blocks_and_is_counted(tmp_path):
    arm_runs(tmp_path, None, BN_MODES)
    arm_runs(tmp_path, 4, GHOST_DECOMPOSED, diverged={(lr, 2) for lr in LRS})
    r = decide(tmp_path)
    for verdict, why in rows_of(r).values():
        assert verdict == INCONCLUSIVE
        assert why == "ghost_bn/4 at its lr: 1 diverged, 0 stuck of 3 seeds (failed to train)"
    ev = r.evidence.set_index("arm")
    assert ev.loc["ghost_bn/4", "trained / diverged / stuck"] == "2 / 1 / 0"
    assert ev.loc["bn", "trained / diverged / stuck"] == "3 / 0 / 0"
    outcomes = r.data["outcomes"].set_index("stat_batch")
    assert outcomes.loc[4.0, "diverged"] == 1


def test_a_stuck_run_never_counts_as_trained(tmp_path):
    arm_runs(tmp_path, None, BN_MODES)
    arm_runs(tmp_path, 4, (0.07, 0.07, 0.07, 0.08, 0.07), seeds=(2,))  # stuck at chance
    arm_runs(tmp_path, 4, GHOST_DECOMPOSED, seeds=(0, 1))
    r = decide(tmp_path)
    assert {why for _, why in rows_of(r).values()} == {
        "ghost_bn/4 at its lr: 0 diverged, 1 stuck of 3 seeds (failed to train)"
    }


def test_fewer_than_three_seeds_is_exploratory(tmp_path):
    arm_runs(tmp_path, None, BN_MODES, seeds=(0, 1))
    arm_runs(tmp_path, 4, GHOST_DECOMPOSED, seeds=(0, 1))
    r = decide(tmp_path)
    assert {v for v, _ in rows_of(r).values()} == {INCONCLUSIVE}
    assert all("exploratory" in why for _, why in rows_of(r).values())


def test_only_the_reference_batch_counts(tmp_path):
    arm_runs(tmp_path, None, BN_MODES)
    arm_runs(tmp_path, 4, GHOST_DECOMPOSED)
    # A smaller batch's ghost arm (the small-batch claim's runs) that would flip rows.
    arm_runs(tmp_path, 4, GHOST_NO_GAP, batch=32)
    r = decide(tmp_path)
    assert r.verdict == SUPPORTED and r.numbers["reference_batch"] == 64
    assert any("at a batch other than the reference batch 64" in n for n in r.notes)


def test_the_fixed_lr_is_bns_best_among_the_shared_ones(tmp_path):
    # BN does best at 0.1 of its three lrs; the ghost arm ran at 0.05 and 0.1 only:
    # every arm is measured at 0.1, whatever the ghost arm's own best (0.05).
    arm_runs(tmp_path, None, BN_MODES, lrs=(0.025, 0.05, 0.1), best=0.1)
    arm_runs(tmp_path, 4, GHOST_DECOMPOSED, lrs=(0.05, 0.1), best=0.05)
    r = decide(tmp_path)
    assert r.numbers["lr"] == 0.1
    assert r.evidence.set_index("arm").loc["ghost_bn/4", "lr per seed"] == "0.1, 0.1, 0.1"


def test_no_bn_modes_is_no_data(tmp_path):
    make_run(tmp_path, norm="bn", config={"data.batch_size": 64})
    r = decide(tmp_path)
    assert r.verdict == NO_DATA and r.figures == []


def test_ghost_arms_without_bn_are_not_measured(tmp_path):
    arm_runs(tmp_path, 4, GHOST_DECOMPOSED)
    r = decide(tmp_path)
    assert r.verdict == NO_DATA and not r.comparisons
    assert any("no lr at which bn and every Ghost BN arm were run" in n for n in r.notes)


# ----------------------------------------------------------------------------- versions, report


def test_version_1_stays_computable_beside(tmp_path):
    arm_runs(tmp_path, None, BN_MODES)
    arm_runs(tmp_path, 4, GHOST_DECOMPOSED)
    r = decide(tmp_path)
    [(version, verdict, text)] = r.superseded
    assert version == 1 and "evaluated four ways" in text
    # Version 1 selected the old statistics-batch recipe (batch 128, lr 0.1): none here.
    assert verdict == batch_why_section_v1(load_runs(tmp_path)).verdict == NO_DATA
    assert "Version 2: the train-set measure in eval conditions; seeds paired." in r.rule


def test_version_1_still_decides_the_old_design(tmp_path):
    # The old statistics-batch experiment: batch 128, lr 0.1 only. Version 1 decides it
    # (unpaired, so the +-3 pp seed shift leaves it undecided); version 2 measures both
    # arms at the one lr they share (a fixed setting), seeds paired.
    arm_runs(tmp_path, None, BN_MODES, lrs=(0.1,), best=0.1, batch=128)
    arm_runs(tmp_path, 4, GHOST_DECOMPOSED, lrs=(0.1,), best=0.1, batch=128)
    old = batch_why_section_v1(load_runs(tmp_path))
    assert [v.against for v in old.comparisons] == [
        "statistics mismatch at g=4: (b) - (a)",
        "training noise: (d) at g=128 - (d) at g=4",
    ]
    assert old.comparisons[0].effect == pytest.approx(6.0, abs=0.01)
    r = decide(tmp_path)
    assert r.numbers["lr"] == 0.1 and r.verdict == SUPPORTED  # paired, the shift cancels
    assert r.superseded[0][1] == old.verdict


def test_the_report_renders_the_section_and_its_figure(tmp_path):
    arm_runs(tmp_path / "runs", None, BN_MODES)
    arm_runs(tmp_path / "runs", 4, GHOST_DECOMPOSED, diverged={(0.1, 1)})
    result = build_report(tmp_path / "runs", tmp_path / "report", experiment="batch_why")
    [claim] = result.claims
    assert claim.key == "batch_why" and claim.verdict == SUPPORTED
    text = result.report_md.read_text()
    assert "Why BN degrades at small batch: SUPPORTED" in text
    assert "**Rule (v2).**" in text and "**Earlier rule v1**" in text
    assert "(e) running averages, training set" in text
    assert (tmp_path / "report" / "figures" / "batch_why_modes.png").exists()
