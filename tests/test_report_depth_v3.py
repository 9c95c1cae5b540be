"""The depth claim, rule version 3 (bnlab.report.depth_rule), on synthetic stores: each
(architecture, arm, depth) at its own lr, a best lr at the edge of its lrs blocking only
the verdicts it could overturn, a net that does not train shallow not measured, stuck
and diverged runs counted as such, and runs at a smaller batch left out.

Every grid point has 3 seeds offset -0.4, 0, +0.4 pp (tests.arms_synth: a point's 95%
interval is about +-1 pp; a contrast of four points about +-1.3 pp). The lrs of a point
are 0.025, 0.05, 0.1 unless a test says otherwise; its best lr is 0.05 (inside them)
unless it says otherwise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bnlab.report import build_report
from bnlab.report.core import INCONCLUSIVE, MIXED, NO_DATA, NOT_SUPPORTED, SUPPORTED
from bnlab.report.load import load_runs
from bnlab.report.sections import SECTIONS
from tests.arms_synth import arm_runs

BATCH = 64  # the reference batch of these stores (the largest)
LRS = (0.025, 0.05, 0.1)


def peak(acc: float | None, drop: float = 0.03) -> dict[float, float | None]:
    """Accuracy `acc` at lr 0.05, `drop` less at 0.025 and 0.1 (None: all diverge)."""
    if acc is None:
        return dict.fromkeys(LRS)
    return {0.025: acc - drop, 0.05: acc, 0.1: acc - drop}


def point(
    runs: Path,
    arm: str,
    residual: bool,
    depth: int,
    accs: dict[float, float | None],
    batch: int = BATCH,
    seeds: tuple[int, ...] = (0, 1, 2),
) -> None:
    """One (architecture, arm, depth) over the lrs of `accs` (lr -> acc, None diverges)."""
    for lr, acc in accs.items():
        cfg = {
            "model.depth": depth,
            "model.residual": residual,
            "optim.lr": lr,
            "data.batch_size": batch,
        }
        arm_runs(runs, arm, acc, seeds, **cfg)


def plain_pair(runs: Path, none8: dict, none56: dict) -> None:
    """Plain BN (8: 70%, 56: 66%) and the plain He-init net at depth 8 and 56."""
    point(runs, "bn", False, 8, peak(0.70))
    point(runs, "bn", False, 56, peak(0.66))
    point(runs, "none", False, 8, none8)
    point(runs, "none", False, 56, none56)


# The plain He-init net at depth 56 near chance: stuck at 0.025, just off it at 0.05
# (its best, inside its lrs), diverged at 0.1.
AT_CHANCE = {0.025: 0.10, 0.05: 0.14, 0.1: None}


def depth(runs: Path):
    return SECTIONS["depth"](load_runs(runs))


def rows_of(result) -> dict[str, object]:
    return {v.against: v for v in result.comparisons}


# ----------------------------------------------------------------------------- verdicts


def test_plain_he_init_falling_to_chance_while_bn_keeps_is_supported(tmp_path):
    plain_pair(tmp_path, peak(0.65), AT_CHANCE)
    r = depth(tmp_path)
    assert r.version == 3
    [row] = r.comparisons
    assert (row.against, row.verdict, row.blocked) == ("vs He init (plain)", SUPPORTED, False)
    # He init loses 65 - 14 = 51 pp, BN 70 - 66 = 4 pp: the effect is 47 pp.
    assert row.effect == pytest.approx(47.0, abs=0.01)
    assert r.numbers["plain_none_depth_cost_8_to_56_pp"] == pytest.approx(51.0)
    assert r.numbers["plain_bn_depth_cost_8_to_56_pp"] == pytest.approx(4.0)
    assert r.verdict == SUPPORTED


def test_equal_depth_costs_are_not_supported(tmp_path):
    plain_pair(tmp_path, peak(0.65), peak(0.61))  # both lose 4 pp
    r = depth(tmp_path)
    [row] = r.comparisons
    assert row.verdict == NOT_SUPPORTED and row.effect == pytest.approx(0.0, abs=0.01)
    assert r.verdict == NOT_SUPPORTED


def test_an_arm_that_does_not_train_at_the_shallowest_depth_is_not_measured(tmp_path):
    # The He-init net is stuck at chance at depth 8 at every lr: no depth cost.
    plain_pair(tmp_path, dict.fromkeys(LRS, 0.10), AT_CHANCE)
    r = depth(tmp_path)
    [row] = r.comparisons
    assert row.verdict == INCONCLUSIVE and row.effect is None
    assert "He init (plain, depth 8) does not train" in row.why
    assert "0 trained, 0 diverged, 9 stuck" in row.why
    assert r.verdict == INCONCLUSIVE  # nothing measured


def test_bn_that_does_not_train_shallow_is_not_measured_either(tmp_path):
    point(tmp_path, "bn", False, 8, dict.fromkeys(LRS))  # every run diverges
    point(tmp_path, "bn", False, 56, peak(0.66))
    point(tmp_path, "none", False, 8, peak(0.65))
    point(tmp_path, "none", False, 56, AT_CHANCE)
    [row] = depth(tmp_path).comparisons
    assert row.effect is None and "BN (plain, depth 8) does not train" in row.why


def test_a_best_lr_at_the_edge_blocks_a_verdict_it_could_overturn(tmp_path):
    # The deep He-init net is best at its smallest lr: a smaller one might train it,
    # shrinking the effect -- the SUPPORTED verdict is blocked.
    plain_pair(tmp_path, peak(0.65), {0.025: 0.30, 0.05: 0.20, 0.1: 0.12})
    r = depth(tmp_path)
    [row] = r.comparisons
    assert row.verdict == INCONCLUSIVE and row.blocked
    assert "He init (plain, depth 56)'s best lr is the smallest of its grid (0.025)" in row.why
    assert row.effect == pytest.approx((65 - 30) - 4, abs=0.01)  # measured, not deciding
    assert r.verdict == INCONCLUSIVE  # a blocked row does not decide the headline


def test_a_deep_net_failing_at_every_lr_below_the_shallow_best_does_not_block(tmp_path):
    # The plain He-init net trains best at 0.05 at depth 8; at depth 56 every lr from
    # 0.0125 up diverges or sticks: its tie at chance goes to the smallest lr, which
    # is no sign a smaller lr would train it -- the verdict stands ...
    plain_pair(tmp_path, peak(0.65), {0.0125: 0.10, 0.025: 0.10, 0.05: None})
    [row] = depth(tmp_path).comparisons
    assert (row.verdict, row.blocked) == (SUPPORTED, False)
    # ... but when its lrs do not reach below the shallow net's best, it still blocks.
    plain_pair(tmp_path / "b", peak(0.65), {0.05: 0.10, 0.1: None, 0.2: None})
    [row] = depth(tmp_path / "b").comparisons
    assert row.verdict == INCONCLUSIVE and row.blocked


def test_a_best_lr_at_the_edge_that_cannot_overturn_does_not_block(tmp_path):
    # The same edge under a NOT SUPPORTED verdict: a better deep point only lowers the
    # effect further, so the verdict stands.
    plain_pair(tmp_path, peak(0.65), {0.025: 0.61, 0.05: 0.58, 0.1: 0.55})
    [row] = depth(tmp_path).comparisons
    assert (row.verdict, row.blocked) == (NOT_SUPPORTED, False)
    # ... but BN's deepest point at an edge could (raising it lowers BN's cost).
    point(tmp_path / "b", "bn", False, 8, peak(0.70))
    point(tmp_path / "b", "bn", False, 56, {0.025: 0.60, 0.05: 0.63, 0.1: 0.66})
    point(tmp_path / "b", "none", False, 8, peak(0.65))
    point(tmp_path / "b", "none", False, 56, peak(0.62))
    [row] = depth(tmp_path / "b").comparisons
    assert (
        row.verdict == INCONCLUSIVE and "BN (plain, depth 56)'s best lr is the largest" in row.why
    )


def test_each_arm_and_depth_picks_its_own_lr(tmp_path):
    # The He-init net trains best at 0.1 at depth 8 but at 0.025 at depth 56 (lrs
    # 0.0125-0.05 there): one lr for both depths would cost it accuracy at one of them.
    point(tmp_path, "bn", False, 8, peak(0.70))
    point(tmp_path, "bn", False, 56, peak(0.66))
    point(tmp_path, "none", False, 8, {0.05: 0.60, 0.1: 0.65, 0.2: 0.62})
    point(tmp_path, "none", False, 56, {0.0125: 0.50, 0.025: 0.55, 0.05: 0.45})
    r = depth(tmp_path)
    assert r.numbers["plain_none_depth_8_lr"] == 0.1
    assert r.numbers["plain_none_depth_56_lr"] == 0.025
    assert r.numbers["plain_bn_depth_56_lr"] == 0.05
    assert r.numbers["plain_none_depth_cost_8_to_56_pp"] == pytest.approx(10.0)
    [row] = r.comparisons
    assert row.verdict == SUPPORTED and row.effect == pytest.approx(6.0, abs=0.01)
    ev = r.evidence.set_index("arm")
    assert (
        "(lr 0.025 of 0.0125, 0.025, 0.05)"
        in ev.loc["He init", "depth 56 acc % [95% CI] (lr used)"]
    )
    assert "(lr 0.1 of 0.05, 0.1, 0.2)" in ev.loc["He init", "depth 8 acc % [95% CI] (lr used)"]


def test_stuck_and_diverged_runs_are_counted_as_such(tmp_path):
    plain_pair(tmp_path, peak(0.65), AT_CHANCE)
    r = depth(tmp_path)
    ev = r.evidence.set_index("arm")
    # At depth 56 the He-init net is measured at 0.05 (3 trained, at 14%); over all its
    # lrs 3 stuck at 0.025 and 3 diverged at 0.1. A stuck run is never "trained".
    cell = ev.loc["He init", "depth 56 runs trained/diverged/stuck"]
    assert cell == "3/0/0 (all lrs 3/3/3)"
    assert ev.loc["BN", "depth 56 runs trained/diverged/stuck"] == "3/0/0 (all lrs 9/0/0)"
    # A point measured on stuck runs (all under 12%, its best inside its lrs): counted
    # stuck, its training loss shown.
    plain_pair(tmp_path / "b", peak(0.65), peak(0.105, drop=0.005))
    r = depth(tmp_path / "b")
    ev = r.evidence.set_index("arm")
    assert ev.loc["He init", "depth 56 runs trained/diverged/stuck"] == "0/0/3 (all lrs 0/0/9)"
    assert ev.loc["He init", "depth 56 train loss"].startswith("2.")  # near log(10)
    assert r.comparisons[0].verdict == SUPPORTED  # the deep net stuck at chance: measured
    cells = r.data["cells"].set_index(["arch", "arm", "model.depth"])
    assert cells.loc[("plain", "none", 56), ["trained", "stuck"]].tolist() == [0, 3]


def test_a_point_whose_runs_all_diverged_shows_no_training_loss(tmp_path):
    plain_pair(tmp_path, peak(0.65), dict.fromkeys(LRS))
    r = depth(tmp_path)
    ev = r.evidence.set_index("arm")
    assert ev.loc["He init", "depth 56 train loss"] == "– (every run diverged)"
    assert ev.loc["He init", "depth 56 runs trained/diverged/stuck"] == "0/3/0 (all lrs 0/9/0)"
    # Every lr ties at chance and the smallest is taken, one x2 step below the depth-8
    # net's best (0.05): no sign a smaller lr would train it, so nothing is blocked.
    assert not r.comparisons[0].blocked and r.comparisons[0].verdict == SUPPORTED


def test_fixup_and_skipinit_rows_only_for_residual_nets_and_mixed_verdicts(tmp_path):
    plain_pair(tmp_path, peak(0.65), AT_CHANCE)  # SUPPORTED
    point(tmp_path, "bn", True, 8, peak(0.72))
    point(tmp_path, "bn", True, 56, peak(0.74))
    point(tmp_path, "none", True, 8, peak(0.60))
    point(tmp_path, "none", True, 56, peak(0.45))  # loses 15 pp, BN gains 2: SUPPORTED
    point(tmp_path, "fixup", True, 8, peak(0.66))
    point(tmp_path, "fixup", True, 56, peak(0.68))  # gains as BN does: NOT SUPPORTED
    point(tmp_path, "skipinit", True, 8, peak(0.65))
    point(tmp_path, "skipinit", True, 56, peak(0.67))  # NOT SUPPORTED
    # A Fixup run in a plain net (no residual branch to scale) is left out.
    point(tmp_path, "fixup", False, 8, peak(0.50))
    r = depth(tmp_path)
    assert list(rows_of(r)) == [
        "vs He init (plain)",
        "vs He init (residual)",
        "vs Fixup (residual)",
        "vs SkipInit (residual)",
    ]
    verdicts = [v.verdict for v in r.comparisons]
    assert verdicts == [SUPPORTED, SUPPORTED, NOT_SUPPORTED, NOT_SUPPORTED]
    assert r.verdict == MIXED
    assert any("Fixup/SkipInit run(s) in plain nets" in n for n in r.notes)
    arms = r.evidence[["architecture", "arm"]].agg(" ".join, axis=1).tolist()
    assert arms == [
        "plain BN",
        "plain He init",
        "residual BN",
        "residual He init",
        "residual Fixup",
        "residual SkipInit",
    ]


def test_runs_at_another_batch_size_are_ignored(tmp_path):
    plain_pair(tmp_path, peak(0.65), AT_CHANCE)
    # At batch 32 the deep He-init net trains well: pooled, it would overturn the verdict.
    point(tmp_path, "none", False, 56, peak(0.66), batch=32)
    point(tmp_path, "bn", False, 56, peak(0.30), batch=32)
    r = depth(tmp_path)
    assert r.numbers["reference_batch"] == BATCH
    assert r.verdict == SUPPORTED
    assert r.numbers["plain_none_depth_56_acc_pct"] == pytest.approx(14.0)
    assert any("18 run(s) at batch 32" in n for n in r.notes)


def test_the_deepest_and_shallowest_depths_both_arms_were_tried_at(tmp_path):
    plain_pair(tmp_path, peak(0.65), AT_CHANCE)
    point(tmp_path, "bn", False, 110, peak(0.60))  # BN alone at 110: not a common depth
    point(tmp_path, "none", False, 20, peak(0.62))
    r = depth(tmp_path)
    assert "plain_none_depth_cost_8_to_56_pp" in r.numbers
    assert r.numbers["plain_bn_depth_110_lr"] == 0.05  # still reported


def test_fewer_than_two_common_depths_or_three_seeds_never_decide(tmp_path):
    point(tmp_path, "bn", False, 8, peak(0.70))
    point(tmp_path, "bn", False, 56, peak(0.66))
    point(tmp_path, "none", False, 8, peak(0.65))
    [row] = depth(tmp_path).comparisons
    assert row.effect is None and "needs two depths" in row.why
    for d, acc in ((8, 0.70), (56, 0.66)):
        point(tmp_path / "b", "bn", False, d, peak(acc), seeds=(0, 1))
    point(tmp_path / "b", "none", False, 8, peak(0.65), seeds=(0, 1))
    point(tmp_path / "b", "none", False, 56, AT_CHANCE, seeds=(0, 1))
    [row] = depth(tmp_path / "b").comparisons
    assert row.verdict == INCONCLUSIVE and "exploratory" in row.why


def test_no_bn_run_is_no_data(tmp_path):
    point(tmp_path, "none", False, 8, peak(0.65))
    assert depth(tmp_path).verdict == NO_DATA


# ----------------------------------------------------------------------------- the report


def test_the_report_shows_rule_v3_its_figure_and_the_earlier_versions(tmp_path):
    plain_pair(tmp_path / "runs", peak(0.65), AT_CHANCE)
    point(tmp_path / "runs", "bn", True, 8, peak(0.72))
    point(tmp_path / "runs", "bn", True, 56, peak(0.74))
    point(tmp_path / "runs", "fixup", True, 8, peak(0.66))
    point(tmp_path / "runs", "fixup", True, 56, {0.025: 0.10, 0.05: 0.15, 0.1: None})
    result = build_report(tmp_path / "runs", tmp_path / "report", experiment="depth")
    [claim] = result.claims
    assert (claim.key, claim.version, claim.verdict) == ("depth", 3, SUPPORTED)
    assert [v for v, _, _ in claim.superseded] == [2, 1]
    text = result.report_md.read_text()
    assert "**Rule (v3).**" in text and "**Earlier rule v2**" in text
    assert "figures/depth_trainability.png" in text
    assert (tmp_path / "report" / "figures" / "depth_trainability.png").stat().st_size > 10_000
