"""The batch claim, rule v4 (bnlab.report.small_batch: Wu & He's protocol), on synthetic
stores whose verdicts are known from their construction.

Every grid point has 3 seeds offset -0.4, 0, +0.4 pp (tests.arms_synth: SD 0.4 pp), so
a norm's drop (two points) has a 95% interval of about +-0.9 pp and BN's drop minus
another norm's (four points) about +-1.1 pp. A test that needs an effect of 0 decided
NOT SUPPORTED against the 1 pp bound uses 6 seeds (about +-0.6 pp).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bnlab.report import build_report
from bnlab.report.core import INCONCLUSIVE, MIXED, NO_DATA, NOT_SUPPORTED, SUPPORTED
from bnlab.report.load import load_runs
from bnlab.report.sections import SECTIONS
from bnlab.report.small_batch import EVIDENCE_FIRST
from tests.arms_synth import SEEDS, arm_runs

TUNE = {0.05: 0.66, 0.1: 0.70, 0.2: 0.68}  # lr at batch R -> acc: the tuned base lr is 0.1
SIX_SEEDS = (0, 1, 2, 3, 4, 5)
BN_ROW, VS_GN, VS_LN = "BN degrades", "vs GN", "vs LN"
GN_ROW, LN_ROW = "GN does not degrade", "LN does not degrade"


def norm_grid(
    runs: Path,
    norm: str,
    small: dict[int, float | None],
    reference: int = 64,
    tune: dict[float, float | None] | None = None,
    base: float | None = None,
    seeds: tuple[int, ...] = SEEDS,
) -> None:
    """`norm` tuned at batch `reference` over `tune` (lr -> acc), then run at each batch
    in `small` (batch -> acc, None: diverges) at lr = base x b / reference (`base`: the
    tuned lr unless given)."""
    tune = TUNE if tune is None else tune
    for lr, acc in tune.items():
        arm_runs(runs, norm, acc, seeds, **{"data.batch_size": reference, "optim.lr": lr})
    best = max(tune, key=lambda lr: tune[lr] or 0.0)
    base = best if base is None else base
    for b, acc in small.items():
        lr = base * b / reference
        arm_runs(runs, norm, acc, seeds, **{"data.batch_size": b, "optim.lr": lr})


def store(
    runs: Path,
    bn_small: float = 0.60,
    gn_small: float = 0.69,
    ln_small: float = 0.69,
    seeds: tuple[int, ...] = SEEDS,
) -> Path:
    """BN, GN and LN tuned at 64 (best 70% at lr 0.1) and run at batch 8 (BN only: a
    batch between) and 2 (accuracies given)."""
    norm_grid(runs, "bn", {2: bn_small, 8: 0.68}, seeds=seeds)
    norm_grid(runs, "gn", {2: gn_small}, seeds=seeds)
    norm_grid(runs, "ln", {2: ln_small}, seeds=seeds)
    return runs


def decide(runs: Path):
    return SECTIONS["batch"](load_runs(runs))


def rows(result) -> dict[str, object]:
    """Rows by the start of their label ("vs GN", "GN does not degrade", ...)."""
    return {v.against.split(":")[0]: v for v in result.comparisons}


# ----------------------------------------------------------------------------- registry


def test_batch_is_rule_v4_and_v3_stays_computable(tmp_path):
    result = decide(store(tmp_path))
    assert result.version == 4 and result.figures == ["small_batch"]
    assert [v for v, _, _ in result.superseded][0] == 3
    assert "Wu & He's protocol" in result.rule and "R/b times as many" in result.rule


def test_no_bn_run_is_no_data(tmp_path):
    norm_grid(tmp_path, "gn", {2: 0.69})
    result = decide(tmp_path)
    assert result.verdict == NO_DATA and result.figures == []


# ----------------------------------------------------------------------------- verdicts


def test_bn_drops_10pp_gn_1pp_is_supported_vs_gn(tmp_path):
    result = decide(store(tmp_path, bn_small=0.60, gn_small=0.69, ln_small=0.70))
    by = rows(result)
    assert by[VS_GN].verdict == SUPPORTED
    assert by[VS_GN].effect == pytest.approx(9.0, abs=1e-6)
    assert by[VS_GN].low > 1.0
    assert by[BN_ROW].verdict == SUPPORTED and by[BN_ROW].effect == pytest.approx(10.0)
    assert by[VS_LN].verdict == SUPPORTED and by[VS_LN].effect == pytest.approx(10.0)
    # GN's 1 pp drop sits on the bound: undecided, and a measured undecided row next to
    # SUPPORTED ones makes the headline MIXED (core.headline).
    assert by[GN_ROW].verdict == INCONCLUSIVE and not by[GN_ROW].blocked
    assert by[LN_ROW].verdict == SUPPORTED  # LN drops 0 pp: interval below 1
    assert result.verdict == MIXED
    assert result.numbers["reference_batch"] == 64 and result.numbers["smallest_batch"] == 2
    assert result.numbers["bn_drop_64_to_2_pp"] == pytest.approx(10.0)
    assert result.numbers["bn_drop_minus_gn_drop_pp"] == pytest.approx(9.0)
    assert result.numbers["gn_base_lr"] == 0.1


def test_whole_claim_supported_when_gn_and_ln_do_not_degrade(tmp_path):
    result = decide(store(tmp_path, bn_small=0.60, gn_small=0.70, ln_small=0.70))
    assert {v.against.split(":")[0]: v.verdict for v in result.comparisons} == {
        BN_ROW: SUPPORTED,
        VS_GN: SUPPORTED,
        VS_LN: SUPPORTED,
        GN_ROW: SUPPORTED,
        LN_ROW: SUPPORTED,
    }
    assert result.verdict == SUPPORTED


def test_equal_drops_are_not_supported(tmp_path):
    result = decide(store(tmp_path, 0.68, 0.68, 0.68, seeds=SIX_SEEDS))
    by = rows(result)
    assert by[VS_GN].verdict == NOT_SUPPORTED and by[VS_LN].verdict == NOT_SUPPORTED
    assert by[VS_GN].effect == pytest.approx(0.0, abs=1e-9) and by[VS_GN].high < 1.0
    assert by[GN_ROW].verdict == NOT_SUPPORTED  # GN drops 2 pp: it degrades too
    assert by[BN_ROW].verdict == SUPPORTED
    assert result.verdict == MIXED


def test_mixed_when_supported_vs_gn_and_not_vs_ln(tmp_path):
    # BN and LN both lose 10 pp; GN loses nothing.
    result = decide(store(tmp_path, bn_small=0.60, gn_small=0.70, ln_small=0.60, seeds=SIX_SEEDS))
    by = rows(result)
    assert by[VS_GN].verdict == SUPPORTED and by[VS_LN].verdict == NOT_SUPPORTED
    assert by[GN_ROW].verdict == SUPPORTED and by[LN_ROW].verdict == NOT_SUPPORTED
    assert result.verdict == MIXED


def test_gn_does_not_degrade_row_judged_below_the_bound(tmp_path):
    for gn_small, want in ((0.70, SUPPORTED), (0.67, NOT_SUPPORTED), (0.69, INCONCLUSIVE)):
        runs = tmp_path / f"gn{gn_small}"
        row = rows(decide(store(runs, gn_small=gn_small)))[GN_ROW]
        assert row.verdict == want, gn_small
        assert row.effect == pytest.approx(100 * (0.70 - gn_small))


def test_supported_needs_the_whole_interval_above_1pp(tmp_path):
    # BN loses 2.5 pp, GN 1 pp: 1.5 pp more, but the interval (about +-1.1) reaches below
    # 1 pp, so the seeds cannot say BN loses more than 1 pp more.
    by = rows(decide(store(tmp_path, bn_small=0.675, gn_small=0.69)))
    assert by[VS_GN].effect == pytest.approx(1.5)
    assert 0.0 < by[VS_GN].low < 1.0 and by[VS_GN].verdict == INCONCLUSIVE


def test_bn_that_does_not_degrade_is_not_supported_even_if_gn_gains(tmp_path):
    # GN gains 3 pp at batch 2 and BN loses nothing: BN "beats" GN's drop by 3 pp, but
    # BN does not degrade, and that row says so.
    result = decide(store(tmp_path, bn_small=0.70, gn_small=0.73, ln_small=0.70))
    by = rows(result)
    assert by[VS_GN].verdict == SUPPORTED
    assert by[BN_ROW].verdict == NOT_SUPPORTED
    assert result.verdict == MIXED


# ----------------------------------------------------------------------------- the lr check


def test_gn_small_batch_runs_at_another_base_lr_are_not_measured(tmp_path):
    norm_grid(tmp_path, "bn", {2: 0.60})
    norm_grid(tmp_path, "ln", {2: 0.70})
    # GN is tuned at 0.1, but its batch-2 runs were launched with base lr 0.05.
    norm_grid(tmp_path, "gn", {2: 0.70}, base=0.05)
    result = decide(tmp_path)
    by = rows(result)
    for key in (VS_GN, GN_ROW):
        assert by[key].verdict == INCONCLUSIVE and by[key].effect is None, key
        assert "no GN runs at batch 2 with the tuned base lr 0.1" in by[key].why
        assert "found lrs 0.0015625 (base 0.05)" in by[key].why
    assert any("GN at batch 2: left out 3 run(s) at lr 0.0015625" in n for n in result.notes)
    assert by[VS_LN].verdict == SUPPORTED  # the rest is decided as before
    assert result.verdict == SUPPORTED  # GN's rows are not measured: they do not count


def test_runs_at_the_tuned_lr_count_and_the_others_are_left_out(tmp_path):
    store(tmp_path)
    # Extra GN runs at batch 2 with base lr 0.2 (lr 0.00625): not the tuned 0.1.
    arm_runs(tmp_path, "gn", 0.40, **{"data.batch_size": 2, "optim.lr": 0.2 * 2 / 64})
    result = decide(tmp_path)
    assert rows(result)[VS_GN].effect == pytest.approx(9.0)  # the 0.40 runs are not in it
    assert any(n.startswith("GN at batch 2: left out 3 run(s)") for n in result.notes)


def test_tuned_base_lr_at_the_edge_blocks_that_norms_rows(tmp_path):
    # BN's best lr at batch 64 is the largest it tried.
    norm_grid(tmp_path, "bn", {2: 0.60}, tune={0.05: 0.64, 0.1: 0.67, 0.2: 0.70})
    norm_grid(tmp_path, "gn", {2: 0.70})
    norm_grid(tmp_path, "ln", {2: 0.70})
    result = decide(tmp_path)
    by = rows(result)
    for key in (BN_ROW, VS_GN, VS_LN):
        assert by[key].verdict == INCONCLUSIVE and by[key].blocked, key
        assert "base lr at the edge of its tuning grid" in by[key].why
        assert by[key].effect is not None  # measured, shown, not deciding
    assert by[GN_ROW].verdict == SUPPORTED and not by[GN_ROW].blocked
    # Only GN's and LN's own rows are measured: without a 'vs' row nothing is claimed.
    assert result.verdict == INCONCLUSIVE
    assert result.numbers["bn_base_lr"] == 0.2


def test_a_norm_that_does_not_train_at_the_reference_batch_is_not_measured(tmp_path):
    norm_grid(tmp_path, "bn", {2: 0.60})
    norm_grid(tmp_path, "ln", {2: 0.70})
    norm_grid(tmp_path, "gn", {2: 0.15}, tune={0.05: 0.15, 0.1: 0.20, 0.2: 0.18})
    by = rows(decide(tmp_path))
    assert by[VS_GN].effect is None and "GN does not train at batch 64" in by[VS_GN].why
    assert by[GN_ROW].effect is None
    assert by[VS_LN].verdict == SUPPORTED


# ----------------------------------------------------------------------------- R and S


def test_reference_batch_is_the_largest_batch_of_each_store(tmp_path):
    cpu = store(tmp_path / "cpu")
    gpu = tmp_path / "gpu"
    norm_grid(gpu, "bn", {2: 0.60, 32: 0.69}, reference=128)
    norm_grid(gpu, "gn", {2: 0.70}, reference=128)
    for runs, reference in ((cpu, 64), (gpu, 128)):
        result = decide(runs)
        assert result.numbers["reference_batch"] == reference
        assert result.numbers["bn_acc_batch_2_pct"] == pytest.approx(60.0)
        assert rows(result)[VS_GN].verdict == SUPPORTED
    # lr 0.1 x 2/128 is the tuned base lr at batch 128, not at 64
    assert decide(gpu).numbers["bn_drop_128_to_2_pp"] == pytest.approx(10.0)


def test_smallest_batch_missing_for_a_norm_is_not_measured(tmp_path):
    norm_grid(tmp_path, "bn", {2: 0.60, 8: 0.66})
    norm_grid(tmp_path, "gn", {8: 0.70})
    by = rows(decide(tmp_path))
    assert by[VS_GN].effect is None and by[VS_GN].why == "no GN runs at batch 2"
    assert by[VS_LN].effect is None and "no LN runs at the reference batch 64" in by[VS_LN].why


def test_one_seed_is_exploratory(tmp_path):
    store(tmp_path, seeds=(0,))
    by = rows(decide(tmp_path))
    assert by[VS_GN].verdict == INCONCLUSIVE and "exploratory" in by[VS_GN].why


def test_ghost_bn_runs_are_ignored(tmp_path):
    store(tmp_path)
    before = decide(tmp_path)
    # Ghost BN at a larger batch than R, and at batch 2: neither is this section's.
    for batch in (128, 2):
        cfg = {"data.batch_size": batch, "optim.lr": 0.1 * batch / 128, "norm.virtual_batch": 2}
        arm_runs(tmp_path, "ghost_bn", 0.30, **cfg)
    after = decide(tmp_path)
    assert after.numbers == before.numbers and after.numbers["reference_batch"] == 64
    assert [(v.against, v.verdict, v.effect) for v in after.comparisons] == [
        (v.against, v.verdict, v.effect) for v in before.comparisons
    ]
    assert not after.evidence[EVIDENCE_FIRST].str.contains("Ghost|ghost").any()


def test_dropout_runs_are_another_net(tmp_path):
    store(tmp_path)
    before = decide(tmp_path).numbers
    arm_runs(tmp_path, "bn", 0.30, **{"data.batch_size": 64, "optim.lr": 0.1, "model.dropout": 0.3})
    assert decide(tmp_path).numbers == before


# ----------------------------------------------------------------------------- evidence


def test_evidence_counts_diverged_and_stuck_runs(tmp_path):
    norm_grid(tmp_path, "bn", {2: None, 8: 0.11})  # diverged at 2, stuck at 8
    norm_grid(tmp_path, "gn", {2: 0.70})
    result = decide(tmp_path)
    ev = result.evidence.set_index(EVIDENCE_FIRST)
    assert list(ev.index) == ["BN (base lr 0.1)", "GN (base lr 0.1)"]
    head = "batch {}"
    assert ev.loc["BN (base lr 0.1)", head.format(2)].startswith("10.0 [10.0, 10.0] (0/3/0)")
    assert ev.loc["BN (base lr 0.1)", head.format(8)].endswith("(0/0/3)")
    assert ev.loc["BN (base lr 0.1)", head.format(64)].endswith("(3/0/0)")
    assert ev.loc["GN (base lr 0.1)", head.format(8)] == "–"
    # A diverged run counts as chance: BN loses 60 pp.
    assert rows(result)[BN_ROW].effect == pytest.approx(60.0)


def test_report_renders_the_section_and_its_figure(tmp_path):
    runs = tmp_path / "runs"
    norm_grid(runs, "bn", {2: None, 8: 0.11, 16: 0.66})
    norm_grid(runs, "gn", {2: 0.70, 16: 0.70})
    norm_grid(runs, "ln", {2: 0.69})
    result = build_report(runs, tmp_path / "report", experiment="batch")
    [claim] = result.claims
    assert claim.key == "batch" and claim.version == 4
    assert {"small_batch.png", "small_batch.svg"} <= {p.name for p in result.figures}
    text = result.report_md.read_text()
    assert "## 1. Batch size: " in text and "**Rule (v4).**" in text
    assert "Earlier rule v3" in text


def test_runs_at_the_reference_batch_only_are_no_data(tmp_path):
    # The committed GPU runs: BN at batch 128 only -- no drop to measure, and no
    # "(128 -> 128)" rows.
    for lr in (0.05, 0.1, 0.2):
        arm_runs(tmp_path, "bn", 0.7, **{"optim.lr": lr, "data.batch_size": 128})
    r = SECTIONS["batch"](load_runs(tmp_path))
    assert r.verdict == "NO DATA" and not r.comparisons
    assert any("no run below the reference batch 128" in n for n in r.notes)
