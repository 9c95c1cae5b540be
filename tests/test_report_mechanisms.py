"""The mechanism sections (ics, landscape, alternatives, deep_no_norm) on synthetic run
folders whose answers are known, the probe loading, and the distribution-shift maths."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bnlab.report import build_report
from bnlab.report.load import RunTables, load_runs
from bnlab.report.probe_maths import distribution_shift
from bnlab.report.superseded import alternatives_section_v2 as alternatives_section
from bnlab.report.superseded import deep_no_norm_section_v1 as deep_no_norm_section
from bnlab.report.superseded import ics_section_v1 as ics_section
from bnlab.report.superseded import landscape_section_v1 as landscape_section
from tests.report_synth import (
    ICS_PROBED,
    PROBED,
    activation_rows,
    ics_rows,
    landscape_rows,
    make_mechanism_store,
    make_run,
    write_probe_rows,
)


def tables(runs: Path) -> RunTables:
    return load_runs(runs)


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs"


# ----------------------------------------------------------------------------- probe maths


def test_distribution_shift_by_hand():
    # One layer: means 0, 1, 3 and stds 1, 1, 3. Step 1: (|1| + 0) / 1 = 1;
    # step 2: (|2| + |2|) / ((1 + 3) / 2) = 2. Mean 1.5.
    rows = [
        ("a", s, m, v)
        for s, mean, std in ((0, 0.0, 1.0), (39, 1.0, 1.0), (78, 3.0, 3.0))
        for m, v in (("act_mean", mean), ("act_std", std))
    ]
    acts = pd.DataFrame(rows, columns=["layer", "step", "metric", "value"])
    assert distribution_shift(acts) == pytest.approx(1.5)
    # A second layer that never moves halves the average over (layer, step) pairs.
    still = acts.assign(layer="b", value=[0.0, 1.0] * 3)
    assert distribution_shift(pd.concat([acts, still])) == pytest.approx(0.75)
    # Order of rows does not matter: points are taken in step order.
    assert distribution_shift(acts.iloc[::-1]) == pytest.approx(1.5)


def test_probes_csv_is_read_into_a_long_table(runs):
    run = make_run(runs, norm="bn", config=PROBED)
    write_probe_rows(run, activation_rows(0.5, points=2) + ics_rows(0.25, steps=(0,)))
    probes = tables(runs).probes
    assert list(probes.columns) == ["run_id", "epoch", "step", "probe", "layer", "metric", "value"]
    assert set(probes["probe"]) == {"activations", "ics"}
    assert probes["run_id"].nunique() == 1 and len(probes) == 2 * 4 * 2 + 4


def test_a_corrupt_probes_csv_loses_only_the_probes(runs):
    run = make_run(runs, norm="bn", config=PROBED, final=0.6)
    (run / "probes.csv").write_text("epoch,step\n1,oops\n")
    loaded = load_runs(runs)
    assert len(loaded.runs) == 1 and loaded.probes.empty
    assert any("probes are left out" in w for w in loaded.warnings)


# ----------------------------------------------------------------------------- ics


def ics_store(runs: Path, accs: dict[str, float], shifts: dict[str, float]) -> Path:
    for norm, acc in accs.items():
        run = make_run(runs, norm=norm, final=acc, config={**ICS_PROBED, "optim.lr": 0.1})
        write_probe_rows(run, activation_rows(shifts[norm]) + ics_rows(0.3))
    return runs


SHIFTS = {"bn": 0.1, "bn_noisy": 0.6, "none": 0.3, "none_noisy": 0.8}


def test_ics_supported_when_noisy_bn_shifts_more_but_trains_like_bn(runs):
    ics_store(runs, {"bn": 0.70, "bn_noisy": 0.67, "none": 0.40, "none_noisy": 0.20}, SHIFTS)
    r = ics_section(tables(runs))
    assert r.verdict == "SUPPORTED"
    assert r.numbers["shift_ratio_noisy_over_bn"] == pytest.approx(6.0)
    assert r.numbers["bn_noisy_minus_bn_pp"] == pytest.approx(-3.0, abs=0.01)


def test_ics_not_supported_when_the_noise_costs_bn_its_accuracy(runs, tmp_path):
    ics_store(runs, {"bn": 0.70, "bn_noisy": 0.55, "none_noisy": 0.20}, SHIFTS)
    assert ics_section(tables(runs)).verdict == "NOT SUPPORTED"  # 15 pp below BN
    # ... or when noisy BN is no better than noisy none.
    other = ics_store(tmp_path / "b", {"bn": 0.7, "bn_noisy": 0.69, "none_noisy": 0.685}, SHIFTS)
    assert ics_section(tables(other)).verdict == "NOT SUPPORTED"


def test_ics_inconclusive_when_the_noise_did_not_shift_the_distributions(runs):
    ics_store(runs, {"bn": 0.70, "bn_noisy": 0.69, "none_noisy": 0.2}, {**SHIFTS, "bn_noisy": 0.05})
    r = ics_section(tables(runs))
    assert r.verdict == "INCONCLUSIVE"
    assert any("did not make" in n for n in r.notes)


def test_ics_decides_at_the_lr_where_bn_is_best(runs):
    make_mechanism_store(runs)  # lr 0.01 is 10% worse for every norm
    r = ics_section(tables(runs))
    assert r.numbers["lr"] == 0.1 and r.verdict == "SUPPORTED"


def test_ics_ignores_runs_without_the_probes_or_with_skips(runs, tmp_path):
    for norm in ("bn", "bn_noisy", "none_noisy"):
        make_run(runs, norm=norm, final=0.6, config={"model.residual": False})  # no probes
    assert ics_section(tables(runs)).verdict == "NO DATA"
    residual = tmp_path / "residual"  # probed, but residual nets: not the ICS study's
    for norm in ("bn", "bn_noisy", "none_noisy"):
        make_run(residual, norm=norm, final=0.6, config={**PROBED, "optim.lr": 0.1})
    assert ics_section(tables(residual)).verdict == "NO DATA"


def test_ics_decides_on_training_accuracy(runs):
    # Noisy BN's test accuracy (evaluated without its noise) collapses; it trains fine.
    for norm, train, test in (("bn", 0.60, 0.62), ("bn_noisy", 0.58, 0.10),
                              ("none_noisy", 0.20, 0.15)):  # fmt: skip
        run = make_run(runs, norm=norm, final=test, train_acc=train,
                       config={**ICS_PROBED, "optim.lr": 0.1})  # fmt: skip
        write_probe_rows(run, activation_rows(SHIFTS[norm]) + ics_rows(0.3))
    r = ics_section(tables(runs))
    assert r.verdict == "SUPPORTED"
    assert r.numbers["bn_noisy_minus_bn_pp"] == pytest.approx(-2.0, abs=0.01)


# ----------------------------------------------------------------------------- landscape


def landscape_store(runs: Path, values: dict[str, tuple[float, float, float]], **kw) -> Path:
    for norm, v in values.items():
        for lr in (0.01, 0.1):
            run = make_run(runs, norm=norm, final=0.5, config={**PROBED, "optim.lr": lr})
            write_probe_rows(run, landscape_rows(*v, **kw.get(norm, {})))
    return runs


def test_landscape_supported_when_bn_is_smoother_in_every_quantity(runs):
    landscape_store(runs, {"bn": (0.1, 1.0, 5.0), "none": (1.0, 2.0, 50.0)})
    r = landscape_section(tables(runs))
    assert r.verdict == "SUPPORTED"
    assert r.numbers["lr_0.1_grad_change_max_none_over_bn"] == pytest.approx(2.0)
    assert r.numbers["pairs"] == 6 and r.numbers["pairs_bn_smoother"] == 6


def test_landscape_not_supported_when_bn_is_rougher(runs):
    landscape_store(runs, {"bn": (1.0, 2.0, 50.0), "none": (0.1, 1.0, 5.0)})
    assert landscape_section(tables(runs)).verdict == "NOT SUPPORTED"


def test_landscape_inconclusive_when_mixed(runs):
    # Smoother loss and beta, similar gradient change (ratio 1.05 < 1.1).
    landscape_store(runs, {"bn": (0.1, 1.0, 5.0), "none": (1.0, 1.05, 50.0)})
    r = landscape_section(tables(runs))
    assert r.verdict == "INCONCLUSIVE" and r.numbers["pairs_bn_smoother"] == 4


def test_landscape_compares_only_steps_probed_in_both_runs(runs):
    # none "diverged" after step 0: only step 0 is compared, where none is far rougher
    # (its later, smooth-looking steps would otherwise pull its median down).
    for lr in (0.01, 0.1):
        bn = make_run(runs, norm="bn", final=0.5, config={**PROBED, "optim.lr": lr})
        write_probe_rows(bn, landscape_rows(0.1, 1.0, 5.0))
        none = make_run(runs, norm="none", status="diverged", config={**PROBED, "optim.lr": lr})
        write_probe_rows(none, landscape_rows(float("inf"), float("nan"), 80.0, steps=(0,)))
    r = landscape_section(tables(runs))
    assert r.numbers["lr_0.1_steps_compared"] == 1
    assert r.verdict == "SUPPORTED"  # non-finite counts as infinitely rough


# ----------------------------------------------------------------------------- alternatives


def alt_store(runs: Path, accs: dict[str, tuple[float, float]]) -> Path:
    for norm, (small, big) in accs.items():
        extra = {"ghost_bn": {"norm.virtual_batch": 4}, "batch_renorm": {"norm.warmup_steps": 100}}
        extra = extra.get(norm, {})
        for batch, acc in ((8, small), (128, big)):
            cfg = {"data.batch_size": batch, "optim.lr": 0.1 * batch / 128, **extra}
            make_run(runs, norm=norm, final=acc, config=cfg)
    return runs


def test_alternatives_supported_when_each_holds_up_better_than_bn(runs):
    alt_store(runs, {"bn": (0.55, 0.72), "gn": (0.64, 0.66), "ln": (0.60, 0.63),
                     "batch_renorm": (0.68, 0.71), "ghost_bn": (0.50, 0.60)})  # fmt: skip
    r = alternatives_section(tables(runs))
    assert r.verdict == "SUPPORTED"
    assert r.numbers["gn_change_minus_bn_pp"] == pytest.approx(15.0, abs=0.01)
    # Ghost BN is no alternative: shown beside when the rule was current, never compared.
    assert not any(k.startswith("ghost_bn") for k in r.numbers)
    # A renorm warm-up other than the paper's is its own arm, and still an alternative.
    assert r.numbers["batch_renorm/w100_change_minus_bn_outcome"] == "greater"


def test_the_norms_table_keeps_the_noise_injections_out(runs):
    alt_store(runs, {"bn": (0.55, 0.72), "gn": (0.64, 0.66), "ghost_bn": (0.50, 0.60)})
    make_run(runs, norm="bn_noisy", final=0.7, config={"optim.lr": 0.1})
    (norms,) = build_report(runs, runs.parent / "report", experiment="norms").claims
    assert set(norms.evidence["norm"]) == {"bn", "gn", "ghost_bn/4"}


def test_alternatives_not_supported_when_bn_holds_up_best(runs):
    alt_store(runs, {"bn": (0.70, 0.72), "gn": (0.55, 0.66), "ln": (0.50, 0.63)})
    assert alternatives_section(tables(runs)).verdict == "NOT SUPPORTED"


def test_alternatives_inconclusive_when_bn_does_not_degrade(runs):
    # Every norm gains at batch 8 (as at CPU scale): GN's larger gain is no "holding up".
    alt_store(runs, {"bn": (0.53, 0.48), "gn": (0.41, 0.34), "ln": (0.37, 0.29)})
    r = alternatives_section(tables(runs))
    assert r.verdict == "INCONCLUSIVE"
    assert r.numbers["gn_change_minus_bn_outcome"] == "greater"
    assert any("does not lose accuracy" in n for n in r.notes)


def test_alternatives_inconclusive_when_mixed_or_alone(runs, tmp_path):
    alt_store(runs, {"bn": (0.60, 0.72), "gn": (0.64, 0.66), "ln": (0.50, 0.63)})
    assert alternatives_section(tables(runs)).verdict == "INCONCLUSIVE"
    alone = alt_store(tmp_path / "alone", {"bn": (0.60, 0.72)})
    r = alternatives_section(tables(alone))
    assert r.verdict == "INCONCLUSIVE" and any("needs bn" in n for n in r.notes)


# ----------------------------------------------------------------------------- deep_no_norm


def deep_store(runs: Path, accs: dict[str, dict[int, float | None]]) -> Path:
    for arm, by_depth in accs.items():
        norm, init = ("bn", "kaiming") if arm == "bn" else ("none", arm.replace("none", "kaiming"))
        for depth, acc in by_depth.items():
            cfg = {"model.depth": depth, "model.init": init}
            if acc is None:
                make_run(runs, norm=norm, status="diverged", config=cfg)
            else:
                make_run(runs, norm=norm, final=acc, config=cfg)
    return runs


def test_depth_without_bn_supported_when_fixup_and_skipinit_rescue_depth(runs):
    deep_store(runs, {"bn": {20: 0.72, 56: 0.70}, "none": {20: 0.3, 56: None},
                      "fixup": {20: 0.66, 56: 0.64}, "skipinit": {20: 0.65, 56: 0.62}})  # fmt: skip
    r = deep_no_norm_section(tables(runs))
    assert r.verdict == "SUPPORTED"
    assert r.numbers["deciding_depth"] == 56
    assert r.numbers["fixup_vs_none_pp"] == pytest.approx(54.0, abs=0.01)  # none diverged: chance
    assert r.numbers["none_trains"] is False


def test_depth_without_bn_not_supported_when_neither_trains(runs):
    deep_store(runs, {"bn": {20: 0.72, 56: 0.70}, "none": {20: 0.3, 56: None},
                      "fixup": {20: 0.5, 56: None}, "skipinit": {20: 0.5, 56: 0.12}})  # fmt: skip
    assert deep_no_norm_section(tables(runs)).verdict == "NOT SUPPORTED"


def test_depth_without_bn_inconclusive_when_an_arm_is_missing(runs):
    deep_store(runs, {"bn": {20: 0.72}, "none": {20: 0.3}, "fixup": {20: 0.6}})
    assert deep_no_norm_section(tables(runs)).verdict == "INCONCLUSIVE"


def test_fixup_runs_stay_out_of_the_he_init_claims(runs):
    deep_store(runs, {"bn": {20: 0.72}, "none": {20: 0.3}, "fixup": {20: 0.6}})
    report = build_report(runs, runs.parent / "report", experiment="depth")
    (depth,) = report.claims
    assert not any("model.init" in n for n in depth.notes)
    assert "0.6" not in depth.evidence.to_string()  # fixup's accuracy is not none's


# ----------------------------------------------------------------------------- the report


def test_the_report_has_the_mechanism_sections_and_figures(tmp_path):
    runs = make_mechanism_store(tmp_path / "runs", seeds=(0, 1))
    result = build_report(runs, tmp_path / "report")
    verdicts = {c.key: c.superseded[0][1] for c in result.claims if c.superseded}
    assert {k: verdicts[k] for k in ("ics", "landscape", "alternatives", "deep_no_norm")} == {
        "ics": "SUPPORTED",
        "landscape": "SUPPORTED",
        "alternatives": "SUPPORTED",
        "deep_no_norm": "SUPPORTED",
    }
    names = {p.name for p in result.figures}
    for key in ("ics_mechanism", "landscape_bands", "alternatives_accuracy",
                "deep_no_norm_accuracy"):  # fmt: skip
        assert {f"{key}.png", f"{key}.svg"} <= names
        assert (tmp_path / "report" / "figures" / f"{key}.png").stat().st_size > 10_000
    text = result.report_md.read_text()
    for title in ("ICS is not why BN helps", "BN smooths the loss landscape",
                  "Alternatives at small batch", "Depth without BN"):  # fmt: skip
        assert title in text
