"""The mechanism sections: *why* BN helps, and what replaces it.

Four sections beside the seven claims, each a function with its rule as its
docstring (same conventions as claims.py):

- ics:          "ICS is not why BN helps" (Santurkar et al. 2018, Sec. 2)
- landscape:    "BN smooths the loss landscape" (Santurkar et al. 2018, Sec. 3)
- alternatives: GroupNorm, LayerNorm, Batch Renorm (and Ghost BN) at small batch
- deep_no_norm: Fixup / SkipInit vs no norm vs BN across depth

ics and landscape read the training probes (probes.csv, long format); the other
two read final accuracies only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from bnlab.report.claims import (
    CHANCE_ACC,
    INCONCLUSIVE,
    LR_LEARNS_ABOVE_CHANCE,
    MODEL,
    NO_DATA,
    NOT_SUPPORTED,
    SUPPORTED,
    ClaimResult,
    _acc_cells,
    _comparison,
    _pct,
    _pivot,
    _point,
    _values,
    _with_acc,
    make_result,
    rule_filler,
)
from bnlab.report.select import STANDARD, arm_labels, linear_lr, select
from bnlab.report.stats import GREATER, LESS, aggregate, compare

# ----------------------------------------------------------------------------- constants

ICS_SAME_MARGIN = 0.05  # noisy BN trains "about as well" as BN: at most 5 pp below it
SMOOTHER_RATIO = 1.1  # a landscape quantity is lower when the other is >= 1.1x it
LEARNS = CHANCE_ACC + LR_LEARNS_ABOVE_CHANCE  # "trains": clearly above chance (20%)
NOISY_NORMS = ("bn", "bn_noisy", "none", "none_noisy")
# Batch-independent, or BN corrected for small batches (every renorm warm-up an arm).
ALTERNATIVES = ("gn", "ln", "batch_renorm")
DEEP_ARMS = ("bn", "none", "fixup", "skipinit")
LANDSCAPE = {  # probes.csv metric -> what the report calls it
    "loss_variation": "loss variation",
    "grad_change_max": "gradient change (l2)",
    "beta_smoothness": "effective beta-smoothness",
}

RULE_VALUES = {
    "same": f"{100 * ICS_SAME_MARGIN:g} pp",
    "ratio": f"{SMOOTHER_RATIO:g}",
    "learns": f"{100 * LEARNS:g}%",
    "chance": f"{100 * CHANCE_ACC:g}%",
}

TEXT = {
    "ics": (
        "ICS is not why BN helps",
        "Injecting distribution shift after every BN layer barely hurts: noisy BN trains "
        "about as well as BN, and far better than the same noise without BN, although its "
        "layer input distributions shift more.",
    ),
    "landscape": (
        "BN smooths the loss landscape",
        "At the same lr, along the gradient, BN's loss varies less, its gradient changes "
        "less and its effective beta-smoothness is lower than without BN.",
    ),
    "alternatives": (
        "Alternatives at small batch",
        "GroupNorm, LayerNorm and Batch Renormalization hold up better than BN when the "
        "batch gets small.",
    ),
    "deep_no_norm": (
        "Depth without BN",
        "Deep residual nets train without any normalisation when each residual branch "
        "starts at zero (Fixup, SkipInit), where the same nets with He init do not.",
    ),
}

Section = Callable[[pd.DataFrame, pd.DataFrame, pd.DataFrame], ClaimResult]


_rule = rule_filler(RULE_VALUES)


def _result(fn: Section, key: str, verdict: str, noise: bool = False, **kw: Any) -> ClaimResult:
    return make_result(fn, key, TEXT[key], verdict, noise, **kw)


# ----------------------------------------------------------------------------- sections


@_rule
def ics_section(runs: pd.DataFrame, epochs: pd.DataFrame, probes: pd.DataFrame) -> ClaimResult:
    """ICS is not why BN helps.

    Runs: plain ResNet-20 (no skip connections, as Santurkar et al. used VGG; in a
    residual net the noise's shifts add up along the unnormalised skip stream), init
    scale 1, augmentation, batch 128, with the ics and activations probes on; norm bn,
    bn_noisy (BN followed by noise whose mean and scale change every step), none and
    none_noisy; any lr. Accuracy: the final epoch's training accuracy, measured in
    training mode (the noisy nets with their noise on: how well they *train*), a
    diverged run counting as chance ({chance}), mean over seeds; test accuracy is shown
    beside (the noisy nets are evaluated without their noise, which they never saw).
    Distribution shift of a run: for every conv/linear layer, between consecutive
    activation-probe points (init and each epoch end, one fixed batch, train mode),
    |change of the output's mean| + |change of its std|, in units of its std averaged
    over the two points; then averaged over layers and points. Decided at the lr where
    BN trains best among those tried with bn, bn_noisy and none_noisy. SUPPORTED if
    noisy BN's distributions shift more than BN's, noisy BN is at most {same} below BN
    and it beats noisy none by more than the margin; NOT SUPPORTED if its distributions
    shift more but it falls more than {same} below BN or does not beat noisy none;
    INCONCLUSIVE if the noise did not make them shift more than BN's (the experiment
    did not test the claim) or a norm is missing. Shown beside: Santurkar's ICS, 1 -
    cos between a layer's gradient before and after one SGD step of all layers,
    averaged over layers and probed steps (0 = no shift).
    """
    fixed = {**MODEL, "model.residual": False, "data.augment": True, "data.batch_size": 128}
    extra = _flag(runs, "probe.ics") & _flag(runs, "probe.activations")
    sel, setting, notes = select(runs, fixed, NOISY_NORMS, extra)
    if sel.empty:
        return _result(ics_section, "ics", NO_DATA, notes=notes)
    mine = probes[probes["run_id"].isin(sel["run_id"])]
    per_run = _with_acc(_with_acc(sel, "train_acc"), "test_acc", "test").assign(
        shift=sel["run_id"].map(_shift_by_run(mine)),
        ics=sel["run_id"].map(_ics_by_run(mine)),
    )
    keys = ["norm.kind", "optim.lr"]
    pts = aggregate(per_run, keys, "acc")
    for column in ("test", "shift", "ics"):
        pts[column] = _mean_by(per_run, keys, column, pts)
    numbers: dict[str, Any] = {}
    need = ("bn", "bn_noisy", "none_noisy")
    lrs = sorted(set.intersection(*(_values(pts, n, "optim.lr") for n in need)))
    verdict = INCONCLUSIVE
    if not lrs:
        notes.append(f"needs {', '.join(need)} at one lr, found {sorted(set(pts['norm.kind']))}")
    else:
        bn_at = {lr: _point(pts, "bn", lr, "optim.lr")["mean"] for lr in lrs}
        lr = max(lrs, key=lambda v: bn_at[v])
        bn, noisy, noisy_none = (_point(pts, n, lr, "optim.lr") for n in need)
        shift_ratio = noisy["shift"] / bn["shift"] if bn["shift"] > 0 else math.nan
        vs_bn = noisy["mean"] - bn["mean"]
        vs_none = compare(noisy["mean"] - noisy_none["mean"], [noisy["std"], noisy_none["std"]])
        numbers = {
            "lr": lr,
            "bn_train_acc_pct": _pct(bn["mean"]),
            "bn_noisy_train_acc_pct": _pct(noisy["mean"]),
            "none_noisy_train_acc_pct": _pct(noisy_none["mean"]),
            "bn_noisy_minus_bn_pp": _pct(vs_bn),
            **_comparison("bn_noisy_vs_none_noisy", vs_none),
            "bn_shift": _round3(bn["shift"]),
            "bn_noisy_shift": _round3(noisy["shift"]),
            "shift_ratio_noisy_over_bn": _round3(shift_ratio),
            "bn_ics_1_minus_cos": _round3(bn["ics"]),
            "bn_noisy_ics_1_minus_cos": _round3(noisy["ics"]),
        }
        if "none" in set(pts["norm.kind"]) and lr in _values(pts, "none", "optim.lr"):
            numbers["none_ics_1_minus_cos"] = _round3(_point(pts, "none", lr, "optim.lr")["ics"])
        if not shift_ratio > 1.0:
            notes.append("the noise did not make noisy BN's distributions shift more than BN's")
        elif vs_bn >= -ICS_SAME_MARGIN and vs_none.outcome == GREATER:
            verdict = SUPPORTED
        else:
            verdict = NOT_SUPPORTED
    evidence = pd.DataFrame(
        {
            "norm": pts["norm.kind"],
            "lr": pts["optim.lr"].map(lambda v: f"{v:g}"),
            "train acc %": _acc_cells(pts),
            "test acc % (no noise)": pts["test"].map(lambda v: f"{100 * v:.1f}"),
            "distribution shift": pts["shift"].map(_fmt3),
            "ICS (1 - cos)": pts["ics"].map(_fmt3),
        }
    )
    curves = epochs[epochs["run_id"].isin(sel["run_id"])].merge(sel[["run_id", *keys]], on="run_id")
    return _result(
        ics_section,
        "ics",
        verdict,
        noise=True,
        numbers=numbers,
        evidence=evidence,
        figures=["ics_mechanism"],
        setting=setting,
        notes=notes,
        data={
            "points": pts,
            "curves": curves,
            "ics": _probe_rows(mine, sel, "ics", "ics_cos"),
            "shift": _shift_rows(mine, sel),
        },
    )


@_rule
def landscape_section(
    runs: pd.DataFrame, epochs: pd.DataFrame, probes: pd.DataFrame
) -> ClaimResult:
    """BN smooths the loss landscape.

    Runs: ResNet-20, residual, init scale 1, augmentation, batch 128, with the landscape
    probe on; norm bn and none; any lr. At each probed step the probe moves the weights
    along the gradient g by eta = m x lr for each multiple m and records: the loss
    variation (max - min of the loss over the etas), the gradient change (largest l2
    distance between the gradient there and g: gradient predictiveness) and the
    effective beta-smoothness (largest gradient change per unit of distance moved). A
    run's value is its median over the steps probed in every run compared at that lr
    (a diverged run stops being probed); a non-finite value (the loss blew up along the
    gradient) counts as infinite. Mean over seeds. At each lr tried with both norms, BN
    is smoother in a quantity when none's value is at least {ratio} x BN's, and rougher
    when BN's is at least {ratio} x none's. SUPPORTED if BN is smoother in all three
    quantities at every such lr; NOT SUPPORTED if it is smoother in fewer than half of
    the (lr, quantity) pairs; INCONCLUSIVE otherwise or without a shared lr.
    """
    fixed = {**MODEL, "data.augment": True, "data.batch_size": 128}
    sel, setting, notes = select(runs, fixed, ("bn", "none"), _flag(runs, "probe.landscape"))
    if sel.empty:
        return _result(landscape_section, "landscape", NO_DATA, notes=notes)
    mine = probes[probes["run_id"].isin(sel["run_id"]) & probes["probe"].eq("landscape")]
    mine = mine.merge(sel[["run_id", "norm.kind", "optim.lr"]], on="run_id")
    shared = sorted(_values(sel, "bn", "optim.lr") & _values(sel, "none", "optim.lr"))
    rows, numbers = [], {"shared_lrs": shared}
    outcomes: list[str] = []
    for lr in shared:
        at_lr = mine[np.isclose(mine["optim.lr"], lr)]
        ids = sel.loc[np.isclose(sel["optim.lr"], lr), "run_id"]
        steps = _common_steps(at_lr, ids)
        numbers[f"lr_{lr:g}_steps_compared"] = len(steps)
        if not steps:
            notes.append(f"lr {lr:g}: no step was probed in every run")
            continue
        for metric, label in LANDSCAPE.items():
            value = {}
            for norm in ("bn", "none"):
                part = at_lr[at_lr["norm.kind"].eq(norm) & at_lr["metric"].eq(metric)]
                part = part[part["step"].isin(steps)]
                value[norm] = _mean_of_medians(part)
            ratio = value["none"] / value["bn"] if value["bn"] > 0 else math.nan
            if ratio >= SMOOTHER_RATIO:
                outcome = "BN smoother"
            elif ratio <= 1 / SMOOTHER_RATIO:
                outcome = "BN rougher"
            else:
                outcome = "similar"
            outcomes.append(outcome)
            numbers[f"lr_{lr:g}_{metric}_none_over_bn"] = _round3(ratio)
            rows.append(
                {
                    "lr": f"{lr:g}",
                    "quantity": label,
                    "bn (median)": _fmt3(value["bn"]),
                    "none (median)": _fmt3(value["none"]),
                    "none / bn": _fmt3(ratio),
                    "outcome": outcome,
                    "steps compared": len(steps),
                }
            )
    smoother = sum(o == "BN smoother" for o in outcomes)
    numbers |= {"pairs": len(outcomes), "pairs_bn_smoother": smoother}
    if not outcomes:
        verdict = INCONCLUSIVE
        notes.append("no lr was tried (and probed) with both bn and none")
    elif smoother == len(outcomes):
        verdict = SUPPORTED
    elif smoother < len(outcomes) / 2:
        verdict = NOT_SUPPORTED
    else:
        verdict = INCONCLUSIVE
    return _result(
        landscape_section,
        "landscape",
        verdict,
        numbers=numbers,
        evidence=pd.DataFrame(rows),
        figures=["landscape_bands"],
        setting=setting,
        notes=notes,
        data={"landscape": mine},
    )


@_rule
def alternatives_section(
    runs: pd.DataFrame, epochs: pd.DataFrame, probes: pd.DataFrame
) -> ClaimResult:
    """Alternatives at small batch.

    Runs: ResNet-20, residual, init scale 1, augmentation, linearly scaled lr (0.1 x
    batch/128), any batch size; norm bn, gn, ln, batch_renorm (each warm-up its own
    arm), and ghost_bn (each virtual batch its own arm). Final test accuracy, a
    diverged run counting as chance ({chance}), mean over seeds. Each alternative
    (gn, ln, batch_renorm) is compared with BN between the smallest and the largest
    batch size both were tried at: its change is its accuracy at the small batch minus
    at the large one. First, BN must really degrade: its own change below minus the
    margin at every pair of sizes compared, else INCONCLUSIVE (there is no loss for
    the alternatives to hold up against). Then SUPPORTED if the change of every
    alternative present is larger than BN's by more than the margin (from the four
    means involved): it holds up better; NOT SUPPORTED if none of them does;
    INCONCLUSIVE otherwise or without BN and an alternative at 2 shared sizes.
    Shown beside (no part of the verdict): Ghost BN, whose statistics come from
    a few samples whatever the batch, against BN at the largest batch -- the cost of
    small-batch statistics alone, at the same number of steps.
    """
    fixed = {**MODEL, "data.augment": True}
    kinds = ("bn", "ghost_bn", *ALTERNATIVES)
    sel, setting, notes = select(runs, fixed, kinds, linear_lr(runs))
    if sel.empty:
        return _result(alternatives_section, "alternatives", NO_DATA, notes=notes)
    key = "data.batch_size"
    per_run = _with_acc(sel).assign(arm=arm_labels(sel))
    pts = aggregate(per_run, ["arm", key], "acc")
    numbers: dict[str, Any] = {}
    change: dict[str, tuple[float, list[float]]] = {}
    outcomes, bn_degrades = [], []
    arms = sorted(set(pts["arm"]))
    for arm in [a for a in arms if a.split("/")[0] in ALTERNATIVES]:
        shared = sorted(_values(pts, "bn", key, "arm") & _values(pts, arm, key, "arm"))
        if len(shared) < 2:
            continue
        small, big = shared[0], shared[-1]
        for who in ("bn", arm):
            lo, hi = _point(pts, who, small, key, "arm"), _point(pts, who, big, key, "arm")
            change[who] = (lo["mean"] - hi["mean"], [lo["std"], hi["std"]])
        comp = compare(change[arm][0] - change["bn"][0], change[arm][1] + change["bn"][1])
        outcomes.append(comp.outcome)
        bn_degrades.append(compare(*change["bn"]).outcome == LESS)
        numbers |= {
            f"{arm}_batches": [int(small), int(big)],
            f"{arm}_change_pp": _pct(change[arm][0]),
            f"bn_change_over_{arm}_batches_pp": _pct(change["bn"][0]),
            **_comparison(f"{arm}_change_minus_bn", comp),
        }
    verdict = INCONCLUSIVE
    if not outcomes:
        notes.append(f"needs bn and one of {', '.join(ALTERNATIVES)} at 2 shared batch sizes")
    elif not all(bn_degrades):
        notes.append(
            "BN does not lose accuracy at the small batch here, so no alternative can hold "
            "up better; the changes compared are gains"
        )
    elif all(o == GREATER for o in outcomes):
        verdict = SUPPORTED
    elif not any(o == GREATER for o in outcomes):
        verdict = NOT_SUPPORTED
    big = max(_values(pts, "bn", key, "arm"), default=None)
    for arm in sorted(a for a in set(pts["arm"]) if a.startswith("ghost_bn")):
        if big is not None and big in _values(pts, arm, key, "arm"):
            ghost, bn = _point(pts, arm, big, key, "arm"), _point(pts, "bn", big, key, "arm")
            comp = compare(ghost["mean"] - bn["mean"], [ghost["std"], bn["std"]])
            numbers |= _comparison(f"{arm}_minus_bn_at_batch_{int(big)}", comp)
    evidence = _pivot(pts, key, "batch", by="arm", order=())
    return _result(
        alternatives_section,
        "alternatives",
        verdict,
        noise=True,
        numbers=numbers,
        evidence=evidence,
        figures=["alternatives_accuracy"],
        setting=setting,
        notes=notes,
        data={"points": pts},
    )


@_rule
def deep_no_norm_section(
    runs: pd.DataFrame, epochs: pd.DataFrame, probes: pd.DataFrame
) -> ClaimResult:
    """Depth without BN.

    Runs: residual ResNets of any depth, init scale 1, augmentation, batch 128, lr 0.1;
    four arms: bn (He init), none (He init), fixup and skipinit (no norm, each residual
    branch zero at init). Final test accuracy, a diverged run counting as chance
    ({chance}), mean over seeds. Decided at the deepest depth tried with all four arms:
    an arm trains there if no seed diverged and it reaches {learns}. SUPPORTED if Fixup
    and SkipInit both train and both beat none by more than the margin; NOT SUPPORTED
    if neither trains; INCONCLUSIVE otherwise or when an arm is missing. Shown beside:
    each no-norm arm's gap to BN at every depth.
    """
    fixed = {k: v for k, v in STANDARD.items() if k not in ("model.depth", "model.init")}
    init = runs.get("model.init", pd.Series("kaiming", index=runs.index)).fillna("kaiming")
    kind = runs["norm.kind"]
    arms = kind.eq("bn") & init.eq("kaiming") | kind.eq("none") & init.isin(
        ["kaiming", "fixup", "skipinit"]
    )
    sel, setting, notes = select(runs, fixed, None, arms, vary=("model.init",))
    if sel.empty:
        return _result(deep_no_norm_section, "deep_no_norm", NO_DATA, notes=notes)
    key = "model.depth"
    per_run = _with_acc(sel).assign(
        arm=np.where(sel["model.init"].eq("kaiming"), sel["norm.kind"], sel["model.init"]),
        diverged=sel["status"].eq("diverged"),
    )
    pts = aggregate(per_run, ["arm", key], "acc")
    pts["diverged"] = _mean_by(per_run, ["arm", key], "diverged", pts, "sum")
    depths = sorted(set.intersection(*(_values(pts, a, key, "arm") for a in DEEP_ARMS)))
    numbers: dict[str, Any] = {"depths_with_all_arms": [int(d) for d in depths]}
    for arm in ("none", "fixup", "skipinit"):
        for depth in sorted(_values(pts, arm, key, "arm") & _values(pts, "bn", key, "arm")):
            gap = (
                _point(pts, arm, depth, key, "arm")["mean"]
                - _point(pts, "bn", depth, key, "arm")["mean"]
            )
            numbers[f"{arm}_minus_bn_depth_{int(depth)}_pp"] = _pct(gap)
    verdict = INCONCLUSIVE
    if not depths:
        notes.append(f"needs {', '.join(DEEP_ARMS)} at one depth, found {sorted(set(pts['arm']))}")
    else:
        depth = depths[-1]
        numbers["deciding_depth"] = int(depth)
        at = {a: _point(pts, a, depth, key, "arm") for a in DEEP_ARMS}
        trains = {a: bool(at[a]["diverged"] == 0 and at[a]["mean"] >= LEARNS) for a in DEEP_ARMS}
        numbers |= {f"{a}_trains": trains[a] for a in DEEP_ARMS}
        numbers |= {f"{a}_acc_pct": _pct(at[a]["mean"]) for a in DEEP_ARMS}
        beats = []
        for arm in ("fixup", "skipinit"):
            comp = compare(
                at[arm]["mean"] - at["none"]["mean"], [at[arm]["std"], at["none"]["std"]]
            )
            numbers |= _comparison(f"{arm}_vs_none", comp)
            beats.append(trains[arm] and comp.outcome == GREATER)
        if all(beats):
            verdict = SUPPORTED
        elif not trains["fixup"] and not trains["skipinit"]:
            verdict = NOT_SUPPORTED
    evidence = _pivot(pts, key, "depth", by="arm", order=DEEP_ARMS)
    return _result(
        deep_no_norm_section,
        "deep_no_norm",
        verdict,
        noise=True,
        numbers=numbers,
        evidence=evidence,
        figures=["deep_no_norm_accuracy"],
        setting=setting,
        notes=notes,
        data={"points": pts},
    )


MECHANISMS: dict[str, Section] = {
    "ics": ics_section,
    "landscape": landscape_section,
    "alternatives": alternatives_section,
    "deep_no_norm": deep_no_norm_section,
}


# ----------------------------------------------------------------------------- probe maths


def distribution_shift(acts: pd.DataFrame) -> float:
    """One run's activation shift (the rule in ics_section), from its activations rows."""
    wide = acts.pivot_table(index=["layer", "step"], columns="metric", values="value")
    if wide.empty or not {"act_mean", "act_std"} <= set(wide.columns):
        return math.nan
    shifts = []
    for _, layer in wide.groupby(level="layer"):
        layer = layer.sort_index(level="step")
        mean, std = layer["act_mean"].to_numpy(), layer["act_std"].to_numpy()
        scale = (std[1:] + std[:-1]) / 2
        moved = np.abs(np.diff(mean)) + np.abs(np.diff(std))
        with np.errstate(divide="ignore", invalid="ignore"):
            shifts.extend(moved / scale)
    values = np.asarray(shifts, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def _shift_by_run(probes: pd.DataFrame) -> dict[str, float]:
    acts = probes[probes["probe"].eq("activations")]
    return {rid: distribution_shift(rows) for rid, rows in acts.groupby("run_id")}


def _shift_rows(probes: pd.DataFrame, sel: pd.DataFrame) -> pd.DataFrame:
    """Per run and layer: its shift, for the figure (layer order as in probes.csv)."""
    acts = probes[probes["probe"].eq("activations")]
    out = []
    for rid, rows in acts.groupby("run_id", sort=False):
        for layer, part in rows.groupby("layer", sort=False):
            out.append({"run_id": rid, "layer": layer, "shift": distribution_shift(part)})
    frame = pd.DataFrame(out, columns=["run_id", "layer", "shift"])
    return frame.merge(sel[["run_id", "norm.kind", "optim.lr"]], on="run_id")


def _ics_by_run(probes: pd.DataFrame) -> dict[str, float]:
    cos = probes[probes["probe"].eq("ics") & probes["metric"].eq("ics_cos")]
    cos = cos[np.isfinite(cos["value"])]
    return {rid: float((1 - rows["value"]).mean()) for rid, rows in cos.groupby("run_id")}


def _probe_rows(probes: pd.DataFrame, sel: pd.DataFrame, probe: str, metric: str) -> pd.DataFrame:
    rows = probes[probes["probe"].eq(probe) & probes["metric"].eq(metric)]
    return rows.merge(sel[["run_id", "norm.kind", "optim.lr"]], on="run_id")


def _common_steps(rows: pd.DataFrame, run_ids: pd.Series) -> list[int]:
    """Steps at which every one of `run_ids` has landscape rows."""
    per_run = [set(rows.loc[rows["run_id"].eq(r), "step"]) for r in run_ids]
    return sorted(set.intersection(*per_run)) if per_run else []


def _mean_of_medians(rows: pd.DataFrame) -> float:
    """Mean over runs (seeds) of each run's median over steps; non-finite -> +inf."""
    if rows.empty:
        return math.nan
    values = rows["value"].where(np.isfinite(rows["value"]), np.inf)
    medians = values.groupby(rows["run_id"]).median()
    return float(medians.mean())


# ----------------------------------------------------------------------------- helpers


def _flag(runs: pd.DataFrame, key: str) -> pd.Series:
    if key not in runs:
        return pd.Series(False, index=runs.index)
    return runs[key].map(lambda v: v is True or v == "True" or v == 1).astype(bool)


def _mean_by(
    per_run: pd.DataFrame, keys: list[str], column: str, pts: pd.DataFrame, how: str = "mean"
) -> pd.Series:
    """`column` aggregated per grid point, aligned with `pts` (same keys, same order)."""
    agg = per_run.groupby(keys, dropna=False)[column].agg(how).rename(column).reset_index()
    return pts[keys].merge(agg, on=keys, how="left")[column].to_numpy()


def _round3(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(f"{x:.4g}")


def _fmt3(x: float) -> str:
    if x is None or pd.isna(x):
        return "–"
    return "inf" if math.isinf(x) else f"{x:.3g}"
