"""The sequence-model sections (bnlab.report.sequence) on synthetic stores: every verdict
reachable, each arm at its own lr chosen across seeds, an arm stuck at chance never
counted as trained, fewer than 3 seeds never deciding, and no runs -> NO DATA.

Every grid point has 3 seeds offset -0.4, 0, +0.4 pp (SD 0.4 pp: a point's 95% interval
is about +-1 pp; a difference of two points about +-0.9 pp), unless a test says otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from bnlab.report import build_report
from bnlab.report.core import INCONCLUSIVE, MIXED, NO_DATA, NOT_SUPPORTED, SUPPORTED
from bnlab.report.intervals import difference
from bnlab.report.keys import K
from bnlab.report.load import load_runs
from bnlab.report.sections import SECTIONS
from bnlab.report.sequence import (
    BEATS,
    MATCHES,
    NO_WORSE,
    Point,
    decide,
    own_lr,
)
from tests.report_synth import make_run, sequence_runs

GRID = (0.03, 0.1, 0.3)
SEQUENCE_KEYS = ("rnn_ln", "rnn_bn_time", "transformer_norms")


def grid(*accs: float | None) -> dict[float, float | None]:
    """Accuracies at lr 0.03, 0.1, 0.3."""
    return dict(zip(GRID, accs, strict=True))


def decide_on(runs: Path, key: str):
    return SECTIONS[key](load_runs(runs))


def rows_of(result) -> dict[str, tuple[str, str]]:
    return {v.against: (v.verdict, v.why) for v in result.comparisons}


def verdicts(result) -> list[str]:
    return [v.verdict for v in result.comparisons]


# ----------------------------------------------------------------------------- no runs


def test_no_sequence_run_is_no_data_for_every_sequence_section(tmp_path):
    make_run(tmp_path, norm="bn", final=0.7)  # a ResNet run only
    tables = load_runs(tmp_path)
    for key in SEQUENCE_KEYS:
        result = SECTIONS[key](tables)
        assert result.verdict == NO_DATA and result.figures == [] and result.notes, key
        assert result.version == 1, key


def test_sequence_runs_are_no_run_of_the_other_sections(tmp_path):
    # The ResNet claims select the standard recipe (augmentation, He init, depth 20):
    # a sequence run never lands on their grids.
    sequence_runs(tmp_path, "lstm", "ln", grid(0.80, 0.85, 0.84))
    sequence_runs(tmp_path, "transformer", "bn", grid(0.75, 0.78, 0.77))
    tables = load_runs(tmp_path)
    for key in SECTIONS:
        if key not in SEQUENCE_KEYS:
            assert SECTIONS[key](tables).verdict == NO_DATA, key


# ----------------------------------------------------------------------------- own lr


def _part(accs: dict[float, tuple[float, ...]], fit: float = 0.8) -> pd.DataFrame:
    rows = [
        {K.optim.lr: lr, K.train.seed: seed, "acc": acc, "fit": fit, "run_id": f"{lr}-{seed}"}
        for lr, values in accs.items()
        for seed, acc in enumerate(values)
    ]
    return pd.DataFrame(rows)


def test_own_lr_measures_each_seed_at_the_lr_the_other_seeds_chose():
    # lr 0.1 is best on the mean of all seeds (0.80 > 0.783), but only because seed 0 was
    # lucky at 0.3 (0.95): without seed 0, seeds 1 and 2 each see 0.3 as best (0.825).
    p = own_lr(_part({0.1: (0.80, 0.80, 0.80), 0.3: (0.95, 0.70, 0.70)}), "ln", "LN")
    assert p.best_lr == 0.1
    assert p.runs[K.optim.lr].tolist() == [0.1, 0.3, 0.3]
    assert p.acc.mean == pytest.approx((0.80 + 0.70 + 0.70) / 3)
    # Picking on all seeds and measuring the same runs would have said 0.80.
    assert p.acc.mean < 0.80


def test_own_lr_with_one_seed_takes_its_own_best_and_ties_go_to_the_smaller_lr():
    p = own_lr(_part({0.03: (0.7,), 0.1: (0.8,), 0.3: (0.8,)}), "ln", "LN")
    assert (p.best_lr, p.runs[K.optim.lr].tolist(), p.acc.n) == (0.1, [0.1], 1)


def test_own_lr_edges_and_training():
    inside = own_lr(_part({0.03: (0.7,) * 3, 0.1: (0.8,) * 3, 0.3: (0.75,) * 3}), "ln", "LN")
    low = own_lr(_part({0.03: (0.8,) * 3, 0.1: (0.7,) * 3, 0.3: (0.1,) * 3}), "ln", "LN")
    only = own_lr(_part({0.1: (0.8,) * 3}), "ln", "LN")
    stuck = own_lr(_part({0.03: (0.11,) * 3, 0.1: (0.1,) * 3}, fit=0.11), "ln", "LN")
    assert inside.edge == "" and inside.trained
    assert "smallest" in low.edge and "only" in only.edge
    assert not stuck.trained


def test_each_arm_is_compared_at_its_own_best_lr(tmp_path):
    sequence_runs(tmp_path, "lstm", "ln", {0.03: 0.80, 0.1: 0.84, 0.3: 0.86, 1.0: 0.83})
    sequence_runs(tmp_path, "lstm", "step_bn", {0.03: 0.80, 0.1: 0.855, 0.3: 0.83, 1.0: 0.70})
    r = decide_on(tmp_path, "rnn_ln")
    assert r.numbers["lstm_ln_best_lr"] == 0.3 and r.numbers["lstm_step_bn_best_lr"] == 0.1
    assert (r.numbers["lstm_ln_acc_pct"], r.numbers["lstm_step_bn_acc_pct"]) == (86.0, 85.5)
    assert r.evidence["lr per seed"].tolist() == ["0.3, 0.3, 0.3", "0.1, 0.1, 0.1"]


# ----------------------------------------------------------------------------- (a) rnn_ln


def test_rnn_ln_supported_ln_as_accurate_and_faster(tmp_path):
    sequence_runs(tmp_path, "lstm", "ln", grid(0.80, 0.86, 0.84), speed=1.2)
    sequence_runs(tmp_path, "lstm", "step_bn", grid(0.80, 0.855, 0.83), speed=0.4)
    r = decide_on(tmp_path, "rnn_ln")
    assert r.verdict == SUPPORTED and verdicts(r) == [SUPPORTED, SUPPORTED]
    [acc, speed] = r.comparisons
    assert acc.effect == pytest.approx(-0.5) and acc.unit == "pp"  # BN - LN
    assert speed.unit == "epochs" and speed.low > 0.5
    assert r.numbers["lstm_target_acc_pct"] == pytest.approx(0.9 * 85.5)


def test_rnn_ln_not_supported_when_bn_is_better_and_as_fast(tmp_path):
    sequence_runs(tmp_path, "gru", "ln", grid(0.80, 0.84, 0.83))
    sequence_runs(tmp_path, "gru", "step_bn", grid(0.80, 0.88, 0.85))
    r = decide_on(tmp_path, "rnn_ln")
    assert r.verdict == NOT_SUPPORTED and verdicts(r) == [NOT_SUPPORTED, NOT_SUPPORTED]
    assert r.comparisons[0].against.startswith("GRU")


def test_rnn_ln_inconclusive_when_seeds_disagree(tmp_path):
    wide = (-0.03, 0.0, 0.03)
    sequence_runs(tmp_path, "lstm", "ln", grid(0.80, 0.85, 0.84), spread=wide)
    sequence_runs(tmp_path, "lstm", "step_bn", grid(0.80, 0.85, 0.84), spread=wide[::-1])
    r = decide_on(tmp_path, "rnn_ln")
    assert rows_of(r)["LSTM accuracy: per-step BN − LN"] == (
        INCONCLUSIVE,
        "interval too wide to decide",
    )


def test_rnn_ln_an_arm_stuck_at_chance_did_not_train(tmp_path):
    sequence_runs(tmp_path, "lstm", "ln", grid(0.80, 0.86, 0.84))
    # Completed runs at chance at two lrs, diverged at the third: never trained.
    sequence_runs(tmp_path, "lstm", "step_bn", grid(0.10, 0.11, None), train_acc=0.11)
    r = decide_on(tmp_path, "rnn_ln")
    assert r.verdict == INCONCLUSIVE
    for verdict, why in rows_of(r).values():
        assert verdict == INCONCLUSIVE and "LSTM per-step BN did not train" in why


def test_fewer_than_three_seeds_never_decide(tmp_path):
    for arm, accs in (("ln", grid(0.80, 0.86, 0.84)), ("step_bn", grid(0.70, 0.75, 0.74))):
        sequence_runs(tmp_path, "lstm", arm, accs, seeds=(0, 1), speed=0.6)
    r = decide_on(tmp_path, "rnn_ln")
    assert r.verdict == INCONCLUSIVE
    assert all(why.startswith("exploratory") for _, why in rows_of(r).values())
    assert r.comparisons[0].seeds == "2 vs 2"


def test_missing_arm_asks_for_it(tmp_path):
    sequence_runs(tmp_path, "lstm", "ln", grid(0.80, 0.86, 0.84))
    r = decide_on(tmp_path, "rnn_ln")
    assert r.verdict == INCONCLUSIVE
    assert all(why.startswith("needs ln and step_bn") for _, why in rows_of(r).values())


# ----------------------------------------------------------------------------- edges


def test_an_edge_blocks_only_the_verdict_it_could_overturn(tmp_path):
    # BN (the foil) best at the largest lr: it may do better beyond the grid, so "LN
    # beats it" cannot be SUPPORTED; LN at an edge instead does not stop SUPPORTED.
    sequence_runs(tmp_path, "transformer", "ln", grid(0.80, 0.84, 0.83))
    sequence_runs(tmp_path, "transformer", "rmsnorm", grid(0.84, 0.80, 0.79))
    sequence_runs(tmp_path, "transformer", "bn", grid(0.70, 0.74, 0.76))
    sequence_runs(tmp_path, "transformer", "none", grid(0.70, 0.72, 0.71))
    r = rows_of(decide_on(tmp_path, "transformer_norms"))
    verdict, why = r["LN − BN"]
    assert verdict == INCONCLUSIVE and "BN's best lr is the largest of its grid (0.3)" in why
    assert r["RMSNorm − no norm"][0] == SUPPORTED  # RMSNorm itself at the smallest lr
    # Matching is overturned by either side: RMSNorm at an edge blocks it.
    assert r["RMSNorm − LN"][0] == INCONCLUSIVE and "RMSNorm" in r["RMSNorm − LN"][1]


def _point(acc: float, edge: bool, arm: str = "x") -> Point:
    lrs = (0.1, 0.3, 1.0)
    best = 0.1 if edge else 0.3
    runs = pd.DataFrame({"acc": [acc - 0.004, acc, acc + 0.004], K.optim.lr: [best] * 3})
    return Point(arm, arm, runs, lrs, best, 0.9)


@pytest.mark.parametrize(
    ("kind", "a", "b", "edge_on", "expected"),
    [
        # beats (a - b >= 1 pp): SUPPORTED is overturned by b under-tuned, not by a
        (BEATS, 0.85, 0.80, "b", INCONCLUSIVE),
        (BEATS, 0.85, 0.80, "a", SUPPORTED),
        (BEATS, 0.80, 0.85, "a", INCONCLUSIVE),
        (BEATS, 0.80, 0.85, "b", NOT_SUPPORTED),
        # no worse (a - b below 1 pp): SUPPORTED is overturned by a under-tuned
        (NO_WORSE, 0.80, 0.85, "a", INCONCLUSIVE),
        (NO_WORSE, 0.80, 0.85, "b", SUPPORTED),
        (NO_WORSE, 0.85, 0.80, "b", INCONCLUSIVE),
        (NO_WORSE, 0.85, 0.80, "a", NOT_SUPPORTED),
        # matches: either side
        (MATCHES, 0.80, 0.80, "a", INCONCLUSIVE),
        (MATCHES, 0.80, 0.80, None, SUPPORTED),
        (MATCHES, 0.85, 0.80, None, NOT_SUPPORTED),
    ],
)
def test_decide_edges_by_direction(kind, a, b, edge_on, expected):
    pa, pb = _point(a, edge_on == "a", "a"), _point(b, edge_on == "b", "b")
    effect = difference(pa.acc, pb.acc).scaled(100.0)
    assert decide("a vs b", effect, [(1, pa), (-1, pb)], kind, 1.0, "pp").verdict == expected


def test_matches_needs_the_whole_interval_within_the_bound():
    pa = _point(0.80, False)
    wide = Point("b", "b", pd.DataFrame({"acc": [0.79, 0.80, 0.81]}), (0.1, 0.3, 1.0), 0.3, 0.9)
    effect = difference(pa.acc, wide.acc).scaled(100.0)
    row = decide("a vs b", effect, [(1, pa), (-1, wide)], MATCHES, 1.0, "pp")
    assert row.verdict == INCONCLUSIVE and row.why == "interval too wide to decide"


# ----------------------------------------------------------------------------- (b) rnn_bn_time


def peak(best: float) -> dict[float, float | None]:
    """A grid whose best lr is its middle one, 0.1."""
    return grid(best - 0.04, best, best - 0.02)


def _bn_time_store(runs: Path, ln_long: float, ln_small: float) -> Path:
    """LSTM at batch 128 on all rows (LN 86%, per-step BN 85.5%, shared BN 75.5%),
    trained on 20 rows and tested on all 28 (LN `ln_long`, per-step BN 22%: it fits its
    20 rows, train acc 80%, so it trained), and at batch 16 (LN `ln_small`, BN 78%)."""
    sequence_runs(runs, "lstm", "ln", peak(0.86))
    sequence_runs(runs, "lstm", "step_bn", peak(0.855))
    sequence_runs(runs, "lstm", "bn", peak(0.755))
    steps = {"model.train_steps": 20}
    sequence_runs(runs, "lstm", "ln", peak(ln_long), train_acc=0.85, **steps)
    sequence_runs(runs, "lstm", "step_bn", grid(0.20, 0.22, 0.21), train_acc=0.8, **steps)
    small = {"data.batch_size": 16}
    sequence_runs(runs, "lstm", "ln", peak(ln_small), **small)
    sequence_runs(runs, "lstm", "step_bn", peak(0.78), **small)
    return runs


def test_rnn_bn_time_supported_bn_fails_where_ln_does_not(tmp_path):
    r = decide_on(_bn_time_store(tmp_path, 0.86, 0.862), "rnn_bn_time")
    assert r.verdict == SUPPORTED, rows_of(r)
    assert verdicts(r) == [SUPPORTED] * 5
    assert list(rows_of(r)) == [
        "LSTM: per-step − shared BN statistics",
        "LSTM longer sequences (trained on 20 of 28 rows): per-step BN drop − LN drop",
        "LSTM longer sequences (trained on 20 of 28 rows): LN drop",
        "LSTM small batch (128 -> 16): per-step BN drop − LN drop",
        "LSTM small batch (128 -> 16): LN drop",
    ]
    assert r.numbers["lstm_step_bn_drop_rows_20_pp"] == pytest.approx(85.5 - 22.0)
    assert r.numbers["lstm_per_step_minus_shared_pp"] == pytest.approx(10.0)


def test_rnn_bn_time_mixed_when_ln_fails_too(tmp_path):
    # Trained on 20 rows, LN falls to 40% on 28: BN still fails more (SUPPORTED), but
    # "where LN does not" is false (NOT SUPPORTED): the headline is MIXED.
    r = rows_of(decide_on(_bn_time_store(tmp_path, 0.40, 0.862), "rnn_bn_time"))
    long = "LSTM longer sequences (trained on 20 of 28 rows)"
    assert r[f"{long}: per-step BN drop − LN drop"][0] == SUPPORTED
    assert r[f"{long}: LN drop"][0] == NOT_SUPPORTED
    assert decide_on(tmp_path, "rnn_bn_time").verdict == MIXED


def test_rnn_bn_time_not_supported_when_bn_holds_up(tmp_path):
    sequence_runs(tmp_path, "lstm", "ln", grid(0.80, 0.86, 0.84))
    sequence_runs(tmp_path, "lstm", "step_bn", grid(0.80, 0.855, 0.83))
    sequence_runs(tmp_path, "lstm", "bn", grid(0.80, 0.86, 0.83))  # shared as good
    small = {"data.batch_size": 16}
    sequence_runs(tmp_path, "lstm", "ln", peak(0.862), **small)
    sequence_runs(tmp_path, "lstm", "step_bn", peak(0.86), **small)  # gains as much
    r = decide_on(tmp_path, "rnn_bn_time")
    assert rows_of(r)["LSTM: per-step − shared BN statistics"][0] == NOT_SUPPORTED
    assert rows_of(r)["LSTM small batch (128 -> 16): per-step BN drop − LN drop"][0] == (
        NOT_SUPPORTED
    )
    assert rows_of(r)["LSTM small batch (128 -> 16): LN drop"][0] == SUPPORTED
    assert r.verdict == MIXED


def test_rnn_bn_time_stuck_ln_variant_did_not_train(tmp_path):
    # LN at batch 16 never leaves chance (training accuracy 11% at every lr): the small
    # batch rows say so, and are no verdict.
    sequence_runs(tmp_path, "lstm", "ln", grid(0.80, 0.86, 0.84))
    sequence_runs(tmp_path, "lstm", "step_bn", grid(0.80, 0.855, 0.83))
    small = {"data.batch_size": 16}
    sequence_runs(tmp_path, "lstm", "ln", grid(0.10, 0.10, None), train_acc=0.11, **small)
    sequence_runs(tmp_path, "lstm", "step_bn", grid(0.70, 0.78, 0.76), **small)
    r = rows_of(decide_on(tmp_path, "rnn_bn_time"))
    assert set(r) == {
        "LSTM small batch (128 -> 16): per-step BN drop − LN drop",
        "LSTM small batch (128 -> 16): LN drop",
    }
    for verdict, why in r.values():
        assert verdict == INCONCLUSIVE and why.startswith("LSTM LN did not train")


# ----------------------------------------------------------------------------- (c) transformer


def _transformer_store(runs: Path, rms: float, none: tuple) -> Path:
    sequence_runs(runs, "transformer", "ln", grid(0.80, 0.84, 0.83))
    sequence_runs(runs, "transformer", "rmsnorm", peak(rms))
    sequence_runs(runs, "transformer", "bn", grid(0.75, 0.78, 0.77))
    sequence_runs(runs, "transformer", "none", grid(*none))
    return runs


def test_transformer_supported(tmp_path):
    r = decide_on(_transformer_store(tmp_path, 0.84, (0.70, 0.72, None)), "transformer_norms")
    assert r.verdict == SUPPORTED and verdicts(r) == [SUPPORTED] * 5
    assert r.numbers["none_best_lr"] == 0.1 and r.comparisons[-1].against == "RMSNorm − LN"


def test_transformer_mixed_when_rmsnorm_falls_behind(tmp_path):
    r = decide_on(_transformer_store(tmp_path, 0.80, (0.70, 0.72, None)), "transformer_norms")
    assert rows_of(r)["RMSNorm − LN"][0] == NOT_SUPPORTED
    assert rows_of(r)["RMSNorm − BN"][0] == SUPPORTED
    assert r.verdict == MIXED


def test_transformer_without_norm_diverging_everywhere_did_not_train(tmp_path):
    r = decide_on(_transformer_store(tmp_path, 0.84, (None, None, None)), "transformer_norms")
    rows = rows_of(r)
    for against in ("LN − no norm", "RMSNorm − no norm"):
        verdict, why = rows[against]
        assert verdict == INCONCLUSIVE and why.startswith("transformer no norm did not train")
    assert r.verdict == SUPPORTED  # the other three comparisons decide


# ----------------------------------------------------------------------------- the report


def test_the_sequence_sections_draw_their_figures(tmp_path):
    runs = _bn_time_store(tmp_path / "runs", 0.86, 0.862)
    _transformer_store(runs, 0.84, (0.70, 0.72, None))
    result = build_report(runs, tmp_path / "report")
    by_key = {c.key: c for c in result.claims}
    assert [by_key[k].figures for k in SEQUENCE_KEYS] == [
        ["rnn_ln_speed"],
        ["rnn_bn_time"],
        ["transformer_norms"],
    ]
    names = {p.name for p in result.figures}
    assert {"rnn_ln_speed.png", "rnn_bn_time.svg", "transformer_norms.png"} <= names
    text = result.report_md.read_text()
    assert re.search(r"^## \d+\. Norms in the transformer: SUPPORTED$", text, re.M)
    assert "chosen without the seed it is measured on" in text
