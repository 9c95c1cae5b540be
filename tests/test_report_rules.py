"""The current rules (BN against arms that train, decided from seeds), on synthetic
stores whose answers are known -- written before the runs they judge."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from scipy import stats

from bnlab.report import build_report
from bnlab.report.claims import batch_claim, convergence_claim, depth_claim, lr_claim
from bnlab.report.core import INCONCLUSIVE, MIXED, NOT_SUPPORTED, SUPPORTED, Verdict, overall
from bnlab.report.intervals import (
    Estimate,
    contrast,
    difference,
    estimate,
    judge,
    judge_below,
    pooled_sd,
    seed_noise,
)
from bnlab.report.load import load_runs
from bnlab.report.mechanisms import batch_why_section_v1
from bnlab.report.sections import SECTIONS
from tests.arms_synth import LR_ACC, arm_runs, make_arms_store

# The rules this file tests, on the arms store they were written with: the current
# ones, and for lr, depth, convergence, batch and batch_why the versions issue 24
# superseded (still computable; the report shows them beside). The current versions of
# those are tested in tests/test_report_{lr_limit,depth_v3,convergence_v4,small_batch,
# batch_why}.py.
SECTION = {
    **SECTIONS,
    "lr": lr_claim,
    "depth": depth_claim,
    "convergence": convergence_claim,
    "batch": batch_claim,
    "batch_why": batch_why_section_v1,
}


def verdicts(runs: Path, key: str) -> dict[str, str]:
    result = SECTION[key](load_runs(runs))
    return {v.against: v.verdict for v in result.comparisons}


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_arms_store(tmp_path_factory.mktemp("arms") / "runs")


# ----------------------------------------------------------------------------- intervals


def test_estimate_is_the_student_t_interval():
    e = estimate([0.70, 0.72, 0.74])
    assert e.mean == pytest.approx(0.72) and e.sd == pytest.approx(0.02)
    half = stats.t.ppf(0.975, 2) * 0.02 / math.sqrt(3)
    assert (e.low, e.high) == (pytest.approx(0.72 - half), pytest.approx(0.72 + half))
    one = estimate([0.5])
    assert one.n == 1 and math.isnan(one.low) and math.isnan(one.sd)
    assert estimate([0.5, float("nan"), None]).n == 1  # non-finite values are not seeds


def test_difference_is_welchs_interval():
    a, b = estimate([1.0, 2.0, 3.0, 4.0]), estimate([0.0, 0.5, 1.0])
    ref = stats.ttest_ind([1.0, 2.0, 3.0, 4.0], [0.0, 0.5, 1.0], equal_var=False)
    ci = ref.confidence_interval(0.95)
    d = difference(a, b)
    assert (d.value, d.low, d.high) == pytest.approx((2.0, ci.low, ci.high))
    assert d.seeds == (4, 3)


def test_contrast_of_four_points_and_the_zero_variance_case():
    same = Estimate((1.0, 1.0, 1.0))
    e = contrast([(1, same), (-1, same), (-1, Estimate((0.5, 0.5, 0.5))), (1, same)])
    assert (e.value, e.low, e.high) == (0.5, 0.5, 0.5)  # every seed agrees: the point
    noisy = contrast([(1, estimate([1, 2, 3])), (-1, estimate([0, 1, 2]))])
    assert noisy.low < 1.0 < noisy.high


def test_judge_needs_three_seeds_an_interval_clear_of_zero_and_the_minimum():
    from bnlab.report.intervals import Effect

    assert judge(Effect(5.0, 2.0, 8.0, (3, 3)), 1.0)[0] == SUPPORTED
    assert judge(Effect(5.0, 2.0, 8.0, (2, 3)), 1.0) == (
        INCONCLUSIVE,
        "exploratory: fewer than 3 seeds",
    )
    assert judge(Effect(0.5, 0.1, 0.9, (3, 3)), 1.0)[0] == NOT_SUPPORTED  # below the minimum
    assert judge(Effect(-3.0, -5.0, -1.0, (3, 3)), 1.0)[0] == NOT_SUPPORTED  # the other way
    assert judge(Effect(2.0, -1.0, 5.0, (3, 3)), 1.0)[0] == INCONCLUSIVE  # too wide
    assert judge(Effect(1.5, 0.2, 2.8, (3, 3)), 2.0)[0] == INCONCLUSIVE  # minimum inside
    assert judge_below(Effect(2.0, 1.0, 3.0, (3, 3)), 5.0)[0] == SUPPORTED
    assert judge_below(Effect(8.0, 6.0, 10.0, (3, 3)), 5.0)[0] == NOT_SUPPORTED
    assert judge_below(Effect(4.0, 2.0, 6.0, (3, 3)), 5.0)[0] == INCONCLUSIVE


def test_overall_keeps_disagreement_visible():
    s, n, i = (Verdict("a", SUPPORTED), Verdict("b", NOT_SUPPORTED), Verdict("c", INCONCLUSIVE))
    assert overall([s, i]) == SUPPORTED
    assert overall([s, n, i]) == MIXED
    assert overall([i]) == INCONCLUSIVE and overall([]) == INCONCLUSIVE


def test_pooled_sd_and_the_seed_noise_of_a_store(suite):
    sd, dof = pooled_sd([estimate([1, 2, 3]), estimate([5.0]), estimate([2, 4])])
    assert (sd, dof) == (pytest.approx(math.sqrt((2 * 1 + 1 * 2) / 3)), 3)
    noise, dof = seed_noise(load_runs(suite).runs)
    assert noise == pytest.approx(0.004, rel=0.05) and dof > 50  # arms_synth's SPREAD


# ----------------------------------------------------------------------------- lr


def test_lr_supported_against_arms_that_train_inconclusive_against_one_that_does_not(suite):
    r = SECTION["lr"](load_runs(suite))
    by = {v.against: v for v in r.comparisons}
    assert by["vs Fixup"].verdict == SUPPORTED and by["vs SkipInit"].verdict == SUPPORTED
    assert by["vs Fixup"].effect == pytest.approx(math.log2(1.0 / 0.3))
    assert by["vs naive He init"].verdict == INCONCLUSIVE
    assert "never trains" in by["vs naive He init"].why
    assert r.verdict == SUPPORTED and r.version == 3
    assert r.numbers["bn_best_lr"] == 0.1 and r.numbers["fixup_best_lr"] == 0.1


def test_lr_with_one_seed_is_exploratory(tmp_path):
    for arm in ("bn", "fixup"):
        for lr, acc in LR_ACC[arm].items():
            arm_runs(tmp_path, arm, acc, (0,), **{"optim.lr": lr})
    v = verdicts(tmp_path, "lr")
    assert v["vs Fixup"] == INCONCLUSIVE
    r = SECTION["lr"](load_runs(tmp_path))
    assert "exploratory" in r.comparisons[0].why


def test_lr_not_supported_when_the_arm_trains_as_high(tmp_path):
    for arm in ("bn", "fixup"):
        for lr, acc in LR_ACC["bn"].items():
            arm_runs(tmp_path, arm, acc, **{"optim.lr": lr})
    assert verdicts(tmp_path, "lr")["vs Fixup"] == NOT_SUPPORTED


def test_lr_inconclusive_when_bn_trains_at_the_top_of_the_grid(tmp_path):
    for arm in ("bn", "fixup"):
        for lr, acc in LR_ACC[arm].items():
            if lr < 3.0:
                arm_runs(tmp_path, arm, acc if arm == "fixup" else 0.7, **{"optim.lr": lr})
    r = SECTION["lr"](load_runs(tmp_path))
    # BN trains at 1.0, the largest lr tried, and Fixup stops at 0.3: a lower bound of
    # 3.3x is already SUPPORTED, so the censoring does not matter here...
    assert r.comparisons[0].verdict == SUPPORTED
    # ... but when both train at the top the grid says nothing.
    for lr in (0.03, 0.1, 0.3, 1.0):
        arm_runs(tmp_path / "b", "bn", 0.7, **{"optim.lr": lr})
        arm_runs(tmp_path / "b", "fixup", 0.6, **{"optim.lr": lr})
    r = SECTION["lr"](load_runs(tmp_path / "b"))
    assert r.comparisons[0].verdict == INCONCLUSIVE and "extend the grid" in r.comparisons[0].why


# ----------------------------------------------------------------------------- depth, init


def test_depth_compares_the_depth_cost_per_arm(suite):
    v = verdicts(suite, "depth")
    assert v["vs Fixup (residual)"] == NOT_SUPPORTED  # Fixup loses 1 pp, BN 2 pp
    assert v["vs SkipInit (residual)"] == SUPPORTED  # SkipInit loses 13 pp
    assert v["vs naive He init (residual)"] == INCONCLUSIVE  # never trains
    assert v["vs naive He init (plain)"] == INCONCLUSIVE
    assert SECTION["depth"](load_runs(suite)).verdict == MIXED


def test_init_compares_the_spread_over_scales(suite):
    v = verdicts(suite, "init")
    assert v["vs Fixup"] == SUPPORTED  # Fixup spreads 24 pp, BN 2
    assert v["vs SkipInit"] == NOT_SUPPORTED  # SkipInit spreads 1.5 pp


# ----------------------------------------------------------------------------- convergence, reg


def test_convergence_at_each_arms_best_lr(suite):
    r = SECTION["convergence"](load_runs(suite))
    by = {v.against: v for v in r.comparisons}
    assert by["vs Fixup"].verdict == SUPPORTED and by["vs Fixup"].effect > 0.5
    assert by["vs naive He init"].verdict == INCONCLUSIVE
    assert r.figures == []  # a superseded version draws no figures


def test_regularization_gap_at_matched_training_loss(suite):
    r = SECTION["regularization"](load_runs(suite))
    (row,) = r.comparisons
    assert row.against == "vs Fixup" and row.verdict == SUPPORTED
    # By hand: at Fixup's final training loss BN's train accuracy is Fixup's (0.80), and
    # its progress is (0.80 - 0.1) / 0.82, where its test accuracy is 0.1 + 0.6 x that.
    bn_test = 0.1 + 0.6 * (0.70 / 0.82)
    assert row.effect == pytest.approx(100 * ((0.80 - 0.57) - (0.80 - bn_test)), abs=0.3)


# ----------------------------------------------------------------------------- batch and why


def test_batch_is_decided_on_the_statistics_batch(suite):
    r = SECTION["batch"](load_runs(suite))
    by = {v.against: v for v in r.comparisons}
    assert by["statistics batch 128 vs 2"].verdict == SUPPORTED
    assert by["statistics batch 128 vs 2"].effect == pytest.approx(12.0, abs=0.01)
    (wu_he,) = [v for k, v in by.items() if k.startswith("Wu & He")]
    assert wu_he.verdict == INCONCLUSIVE and "exploratory" in wu_he.why  # one seed
    assert r.verdict == SUPPORTED


def test_alternatives_beat_bn_with_two_sample_statistics(suite):
    v = verdicts(suite, "alternatives")
    assert v == {
        "gn vs BN with 2-sample statistics": SUPPORTED,
        "ln vs BN with 2-sample statistics": SUPPORTED,
    }


def test_batch_why_separates_mismatch_from_training_noise(suite):
    r = SECTION["batch_why"](load_runs(suite))
    by = {v.against.split(":")[0]: v for v in r.comparisons}
    assert by["statistics mismatch at g=2"].verdict == SUPPORTED  # precise BN +6 pp
    assert by["training noise"].verdict == SUPPORTED  # train mode 0.80 vs 0.70
    assert r.numbers["share_recovered_by_precise_bn"] == pytest.approx(0.5)


def test_inference_from_the_bn_eval_probe(suite):
    v = verdicts(suite, "inference")
    assert v == {"train batch 128, eval batch 2": SUPPORTED}


# ----------------------------------------------------------------------------- mechanisms


def test_ics_picks_the_noise_level_that_shifts_as_much_as_fixup(suite):
    r = SECTION["ics"](load_runs(suite))
    assert r.numbers["noise_level_compared"] == "bn_noisy/m0.5"
    v = {x.against: x.verdict for x in r.comparisons}
    assert v == {
        "noisy BN (m0.5) vs BN: accuracy cost": SUPPORTED,
        "noisy BN (m0.5) vs Fixup": SUPPORTED,
    }


def test_ics_inconclusive_when_the_noise_never_shifts_as_much(tmp_path):
    probed = {"probe.activations": True}
    arm_runs(tmp_path, "bn", 0.72, probes=activation_rows_for(0.1), **probed)
    arm_runs(tmp_path, "fixup", 0.6, probes=activation_rows_for(0.5), **probed)
    arm_runs(
        tmp_path,
        "bn_noisy",
        0.7,
        probes=activation_rows_for(0.2),
        **{**probed, "norm.noise_scale": 1.0},
    )
    r = SECTION["ics"](load_runs(tmp_path))
    assert r.verdict == INCONCLUSIVE and "shifted" in r.comparisons[0].why


def activation_rows_for(shift: float) -> list[tuple]:
    from tests.report_synth import activation_rows

    return activation_rows(shift)


def test_landscape_at_matched_loss(suite):
    r = SECTION["landscape"](load_runs(suite))
    v = {x.against: x.verdict for x in r.comparisons}
    assert all(
        v[f"vs Fixup: {q}"] == SUPPORTED
        for q in ("loss variation", "gradient change (l2)", "effective beta-smoothness")
    )
    assert all(v[k] == NOT_SUPPORTED for k in v if k.startswith("vs SkipInit"))  # 1.02x
    assert r.verdict == MIXED and len(r.numbers["matched_loss_levels"]) == 3


def test_deep_no_norm_against_the_naive_net(suite):
    v = verdicts(suite, "deep_no_norm")
    assert v == {
        "fixup vs naive He init at depth 56": SUPPORTED,
        "skipinit vs naive He init at depth 56": SUPPORTED,
    }


# ----------------------------------------------------------------------------- the report


def test_report_shows_each_comparison_its_interval_seeds_and_rule_versions(suite, tmp_path):
    result = build_report(suite, tmp_path / "report")
    text = result.report_md.read_text()
    # lr rule v4 on the arms store: BN trains to 1.0, Fixup to 0.3 (log2 3.33).
    assert "| lr | vs Fixup | +1.74 [+1.74, +1.74] log2 lr | 3 vs 3 | v4 | SUPPORTED |" in text
    assert "**Rule (v4).**" in text and "**Earlier rule v3** (on these runs:" in text
    assert "Seed noise:** 0.40 pp" in text
    for claim in result.claims:
        for key in claim.figures:
            assert (tmp_path / "report" / "figures" / f"{key}.png").stat().st_size > 5_000
