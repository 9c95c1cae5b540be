"""Superseded rule versions, kept computable: the report decides each on the same runs
and shows its verdict beside the current rule's (bnlab.report.core.superseded).

These are the rules as they stood before this version of bnlab (they compared BN with
the He-init net without normalisation, one seed, an assumed 1 pp noise floor), and,
for the four rules that were changed after seeing CPU-scale data, the first version
too (lr, convergence, batch, alternatives: version 1, rebuilt from the same code with
the later guard switched off). Nothing here decides a headline verdict.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from bnlab.report.cells import (
    acc_cell,
    acc_cells,
    images_for,
    num_cell,
    pct,
    pp_cell,
    round2,
    sig3_cell,
    sig4,
    yes_no,
)
from bnlab.report.core import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Finding,
    Rule,
    Section,
    no_data,
    superseded,
)
from bnlab.report.load import RunTables
from bnlab.report.points import (
    CHANCE_ACC,
    LEARNS,
    aggregate_aligned,
    comparison_numbers,
    flag,
    pivot,
    point,
    values_of,
    with_acc,
)
from bnlab.report.probe_maths import (
    bn_eval_long,
    common_steps,
    ics_by_run,
    mean_of_medians,
    probe_rows,
    shift_by_run,
    shift_rows,
)
from bnlab.report.select import RESNET20, STANDARD, arm_labels, bn_eval_probed, linear_lr, select
from bnlab.report.stats import (
    GREATER,
    LESS,
    NOISE_RULE,
    aggregate,
    all_of,
    any_of,
    compare,
    verdict_of,
)

# ----------------------------------------------------------------------------- constants

LR_TRAINS_MARGIN = 0.05  # an lr "trains" if its mean accuracy is within 5 pp of the norm's best
CONV_TARGET_FRACTION = 0.9  # target = 90% of the lower of BN's and none's best accuracy
CONV_MIN_EPOCHS = 0.5  # epochs are whole numbers: any 1-epoch difference counts at one seed
CONV_CURVE_LR = 0.1  # the lr whose training curves are drawn (nearest shared one)
# The ICS study's noise injections: instruments, not normalisers for the norms table.
NOISE_DEVICES = ("bn_noisy", "none_noisy")
BN_NONE = ("bn", "none")
ICS_SAME_MARGIN = 0.05  # noisy BN trains "about as well" as BN: at most 5 pp below it
SMOOTHER_RATIO = 1.1  # a landscape quantity is lower when the other is >= 1.1x it
NOISY_NORMS = ("bn", "bn_noisy", "none", "none_noisy")
# Batch-independent, or BN corrected for small batches (every renorm warm-up an arm).
ALTERNATIVES = ("gn", "ln", "batch_renorm")
DEEP_ARMS = ("bn", "none", "fixup", "skipinit")
LANDSCAPE = {  # probes.csv metric -> what the report calls it
    "loss_variation": "loss variation",
    "grad_change_max": "gradient change (l2)",
    "beta_smoothness": "effective beta-smoothness",
}


def _without(*keys: str) -> dict[str, Any]:
    return {k: v for k, v in STANDARD.items() if k not in keys}


# The margins as the rules quote them; {noise} is the shared rule for accuracy
# differences (bnlab.report.stats.compare).
RULE_VALUES = {
    "lr_margin": f"{100 * LR_TRAINS_MARGIN:g} pp",
    "learns": f"{100 * LEARNS:g}%",
    "chance": f"{100 * CHANCE_ACC:g}%",
    "target": f"{100 * CONV_TARGET_FRACTION:g}%",
    "min_epochs": f"{CONV_MIN_EPOCHS:g}",
    "curve_lr": f"{CONV_CURVE_LR:g}",
    "same": f"{100 * ICS_SAME_MARGIN:g} pp",
    "ratio": f"{SMOOTHER_RATIO:g}",
    "noise": NOISE_RULE,
}


def _amended(template: str, slots: dict[str, tuple[str, str]]) -> dict[int, Rule]:
    """A rule's version 2 and the version 1 it amended, written once: each `{slot}` of
    `template` holds version 1's words and version 2's (the guard version 2 added)."""

    def filled(version: int) -> dict[str, str]:
        words = {k: pair[version - 1].format(**RULE_VALUES) for k, pair in slots.items()}
        return {**RULE_VALUES, **words}

    return {v: Rule(template, filled(v), version=v) for v in (1, 2)}


def _amended_sections(
    key: str, rules: dict[int, Rule], figures: tuple[str, ...], decide: Callable[..., Finding]
) -> tuple[Section, Section]:
    """Register versions 2 and 1 of section `key`, both decided by
    `decide(tables, guarded)`: version 1 is the same rule before the guard version 2 added."""
    v2 = superseded(key, rules[2], figures)(functools.partial(decide, guarded=True))
    v1 = superseded(key, rules[1], figures)(functools.partial(decide, guarded=False))
    return v2, v1


LR_RULES = _amended(
    """
    Runs: ResNet-20, residual, init scale 1, augmentation, batch 128, norm bn or none,
    any optim.lr. Only learning rates tried with both norms count. An lr "trains" for a
    norm when no seed diverged there{joint} its mean final test accuracy is {learns}within
    {lr_margin} of that norm's best mean. SUPPORTED if BN's largest lr that trains is
    larger than none's; NOT SUPPORTED if it is not larger. INCONCLUSIVE with fewer than
    2 shared learning rates, when neither norm trains at any, or when both train at the
    largest lr tried (the grid stops before the limit).
    """,
    {"joint": (" and", ","), "learns": ("", "at least {learns} (clearly above chance) and ")},
)


def _lr_claim(tables: RunTables, guarded: bool) -> Finding:
    runs = tables.runs
    sel, setting, notes = select(runs, _without("optim.lr"), BN_NONE)
    if sel.empty:
        return no_data(notes)
    sel = sel.assign(diverged=sel["status"].eq("diverged"))
    keys = ["norm.kind", "optim.lr"]
    counts = sel.groupby(keys).agg(runs=("run_id", "size"), diverged=("diverged", "sum"))
    accs = aggregate(sel[~sel["diverged"]], keys, "test_acc")
    pts = counts.reset_index().merge(accs, on=keys, how="left")
    shared = sorted(values_of(pts, "bn", "optim.lr") & values_of(pts, "none", "optim.lr"))
    pts["trains"] = np.nan
    numbers: dict[str, Any] = {"shared_lrs": shared}
    largest: dict[str, float | None] = {}
    for norm in BN_NONE:
        rows = pts["norm.kind"].eq(norm) & pts["optim.lr"].isin(shared)
        clean = pts[rows & pts["diverged"].eq(0)]
        best = clean["mean"].max() if not clean.empty else math.nan
        learns = pts["mean"] >= LEARNS if guarded else True
        trains = rows & pts["diverged"].eq(0) & learns & (pts["mean"] >= best - LR_TRAINS_MARGIN)
        pts.loc[rows, "trains"] = trains[rows].astype(float)
        good = pts.loc[trains, "optim.lr"]
        largest[norm] = float(good.max()) if not good.empty else None
        numbers[f"{norm}_largest_trainable_lr"] = largest[norm]
        numbers[f"{norm}_best_acc_pct"] = pct(best)
    if len(shared) < 2:
        verdict = INCONCLUSIVE
        notes.append(f"needs at least 2 learning rates tried with both norms, found {shared}")
    elif largest["bn"] is None and largest["none"] is None:
        verdict = INCONCLUSIVE
        notes.append("neither norm trains at any shared learning rate")
    elif largest["bn"] == largest["none"] == max(shared):
        verdict = INCONCLUSIVE
        notes.append(f"both norms train at the largest lr tried ({max(shared):g}): extend the grid")
    else:
        verdict = SUPPORTED if (largest["bn"] or 0.0) > (largest["none"] or 0.0) else NOT_SUPPORTED
    evidence = pd.DataFrame(
        {
            "norm": pts["norm.kind"],
            "lr": pts["optim.lr"].map(lambda v: f"{v:g}"),
            "diverged": [f"{d}/{r}" for d, r in zip(pts["diverged"], pts["runs"], strict=True)],
            "test acc % (not diverged)": acc_cells(pts),
            "trains": pts["trains"].map(yes_no),
        }
    )
    return Finding(verdict, numbers, evidence, setting, notes, {"points": pts})


@superseded(
    "depth",
    Rule(
        """
        Runs: init scale 1, augmentation, batch 128, lr 0.1, norm bn or none, any depth,
        residual and plain. Final test accuracy, a diverged run counting as chance
        ({chance}), mean over seeds. For each architecture (plain, residual) with at least 2
        depths tried with both norms, compare BN with none at its deepest such depth.
        SUPPORTED if BN is ahead there for at least one architecture and behind for neither;
        NOT SUPPORTED if behind for one and ahead for none, or equal for all; INCONCLUSIVE
        if it is ahead in one and behind in the other, or unresolved, or no architecture
        has 2 depths. {noise}
        """,
        RULE_VALUES,
        version=1,
    ),
    figures=("depth_accuracy",),
)
def depth_claim_v1(tables: RunTables) -> Finding:
    runs = tables.runs
    fixed = _without("model.depth", "model.residual")
    sel, setting, notes = select(runs, fixed, BN_NONE)
    if sel.empty:
        return no_data(notes)
    keys = ["model.residual", "model.depth", "norm.kind"]
    pts = aggregate(with_acc(sel), keys, "acc")
    numbers: dict[str, Any] = {}
    outcomes: list[str] = []
    rows = []
    for residual in (False, True):
        arch = "residual" if residual else "plain"
        sub = pts[pts["model.residual"].eq(residual)]
        shared = sorted(values_of(sub, "bn", "model.depth") & values_of(sub, "none", "model.depth"))
        for depth in shared:
            bn, none = (
                point(sub, "bn", depth, "model.depth"),
                point(sub, "none", depth, "model.depth"),
            )
            rows.append(
                {
                    "architecture": arch,
                    "depth": depth,
                    "bn acc %": acc_cell(bn),
                    "none acc %": acc_cell(none),
                    "BN - none (pp)": pp_cell(bn["mean"] - none["mean"]),
                }
            )
        if len(shared) < 2:
            if shared or not sub.empty:
                notes.append(f"{arch}: needs 2 depths tried with both norms, found {shared}")
            continue
        deep = shared[-1]
        bn, none = point(sub, "bn", deep, "model.depth"), point(sub, "none", deep, "model.depth")
        comp = compare(bn["mean"] - none["mean"], [bn["std"], none["std"]])
        shallow = (
            point(sub, "bn", shared[0], "model.depth")["mean"]
            - point(sub, "none", shared[0], "model.depth")["mean"]
        )
        outcomes.append(comp.outcome)
        numbers |= {
            f"{arch}_deepest_depth": int(deep),
            f"{arch}_bn_acc_pct": pct(bn["mean"]),
            f"{arch}_none_acc_pct": pct(none["mean"]),
            **comparison_numbers(f"{arch}_bn_advantage", comp),
            f"{arch}_bn_advantage_at_depth_{int(shared[0])}_pp": pct(shallow),
        }
    verdict = any_of(outcomes) if outcomes else INCONCLUSIVE
    return Finding(verdict, numbers, pd.DataFrame(rows), setting, notes, {"points": pts})


CONVERGENCE_RULES = _amended(
    """
    Runs: ResNet-20, residual, init scale 1, augmentation, batch 128, norm bn or none,
    any lr tried with both norms, with per-epoch metrics. At each such lr the target is
    {target} of the lower of BN's and none's mean best test accuracy (over runs that did
    not diverge), so it is reachable at any scale{guard}. A run's epochs-to-target is the
    first epoch whose test accuracy reaches it; a run that never does counts as its
    planned epochs + 1; images = epochs x training images per epoch. SUPPORTED if BN
    needs fewer epochs than none at every shared lr; NOT SUPPORTED if none is faster
    or they are equal at some lr; otherwise INCONCLUSIVE. A difference in mean epochs
    counts when it exceeds the root-sum-square of the two seed standard deviations and
    at least {min_epochs} epoch (so one whole epoch counts at a single seed); inside
    that it is 'equal' at the floor, else 'unresolved'. Curves are drawn at the shared
    lr nearest {curve_lr}.
    """,
    {
        "guard": (
            "",
            ", but at least {learns} (a target at chance level says nothing about "
            "convergence). An lr where no run reaches the target carries no information "
            "and is left out",
        )
    },
)


def _convergence_claim(tables: RunTables, guarded: bool) -> Finding:
    runs, epochs = tables.runs, tables.epochs
    sel, setting, notes = select(runs, _without("optim.lr"), BN_NONE)
    if sel.empty:
        return no_data(notes)
    curves = epochs[epochs["run_id"].isin(sel["run_id"])]
    no_curve = ~sel["run_id"].isin(curves["run_id"])
    if no_curve.any():
        notes.append(f"left out {int(no_curve.sum())} run(s) without metrics.csv")
        sel = sel[~no_curve]
    shared = sorted(values_of(sel, "bn", "optim.lr") & values_of(sel, "none", "optim.lr"))
    numbers: dict[str, Any] = {"shared_lrs": shared}
    outcomes: list[str] = []
    rows: list[dict[str, Any]] = []
    targets: dict[float, float] = {}
    for lr in shared:
        at_lr = sel[sel["optim.lr"].eq(lr)]
        ok = at_lr[at_lr["status"].eq("completed")]
        bests = ok.groupby("norm.kind")["best_test_acc"].mean().dropna()
        if bests.empty:
            notes.append(f"lr {lr:g}: every run diverged, no target")
            continue
        target = CONV_TARGET_FRACTION * float(bests.min())
        if guarded:
            target = max(target, LEARNS)
        reach = _epochs_to(at_lr, curves, target)
        if guarded and not reach["reached"].any():
            notes.append(f"lr {lr:g}: no run reaches {100 * target:.0f}%, left out")
            continue
        targets[lr] = target
        agg = aggregate(reach, ["norm.kind"], "epochs_to").set_index("norm.kind")
        reached = reach.groupby("norm.kind")["reached"].sum()
        bn, none = agg.loc["bn"], agg.loc["none"]
        comp = compare(none["mean"] - bn["mean"], [bn["std"], none["std"]], CONV_MIN_EPOCHS)
        outcomes.append(comp.outcome)
        tag = f"lr_{lr:g}"
        numbers |= {
            f"{tag}_target_acc_pct": pct(target),
            f"{tag}_bn_epochs": round2(bn["mean"]),
            f"{tag}_none_epochs": round2(none["mean"]),
            f"{tag}_bn_images": images_for(bn["mean"], setting),
            f"{tag}_none_images": images_for(none["mean"], setting),
            f"{tag}_bn_saves_epochs": round2(comp.diff),
            f"{tag}_margin_epochs": round2(comp.margin),
            f"{tag}_outcome": comp.outcome,
        }
        for norm in BN_NONE:
            point = agg.loc[norm]
            rows.append(
                {
                    "lr": f"{lr:g}",
                    "target acc %": f"{100 * target:.1f}",
                    "norm": norm,
                    "reached": f"{int(reached.get(norm, 0))}/{int(point['n'])}",
                    # Censored runs count as planned epochs + 1: say so in the cell.
                    "epochs to target": num_cell(point, 1)
                    + ("" if reached.get(norm, 0) == point["n"] else " (censored)"),
                    "images to target": images_for(point["mean"], setting),
                }
            )
    verdict = all_of(outcomes) if outcomes else INCONCLUSIVE
    if not shared:
        notes.append("no learning rate was tried with both norms")
    data: dict[str, pd.DataFrame] = {}
    if targets:
        lr = min(targets, key=lambda v: abs(math.log(v / CONV_CURVE_LR)))
        ids = sel.loc[sel["optim.lr"].eq(lr), ["run_id", "norm.kind"]]
        data["curves"] = curves.merge(ids, on="run_id")
        numbers |= {"curve_lr": lr, "curve_target_acc_pct": pct(targets[lr])}
    return Finding(
        verdict,
        numbers,
        pd.DataFrame(rows),
        setting,
        notes,
        data,
        figures=["training_curves"] if data else [],
    )


@superseded(
    "init",
    Rule(
        """
        Runs: ResNet-20, residual, augmentation, batch 128, lr 0.1, norm bn or none, any
        model.init_scale. Final test accuracy, a diverged run counting as chance
        ({chance}), mean over seeds. Over the init scales tried with both norms (at least
        2), each norm's spread is its best mean minus its worst mean. SUPPORTED if BN's
        spread is smaller than none's by more than the margin (from the four means that
        define the two spreads); NOT SUPPORTED if it is larger or equal; INCONCLUSIVE if
        unresolved or fewer than 2 shared scales. {noise}
        """,
        RULE_VALUES,
        version=1,
    ),
    figures=("init_accuracy",),
)
def init_claim_v1(tables: RunTables) -> Finding:
    runs = tables.runs
    sel, setting, notes = select(runs, _without("model.init_scale"), BN_NONE)
    if sel.empty:
        return no_data(notes)
    key = "model.init_scale"
    pts = aggregate(with_acc(sel), ["norm.kind", key], "acc")
    shared = sorted(values_of(pts, "bn", key) & values_of(pts, "none", key))
    numbers: dict[str, Any] = {"shared_init_scales": shared}
    used = pts[pts[key].isin(shared)]
    verdict = INCONCLUSIVE
    if len(shared) < 2:
        notes.append(f"needs 2 init scales tried with both norms, found {shared}")
    else:
        extremes = {}
        for norm in BN_NONE:
            sub = used[used["norm.kind"].eq(norm)].dropna(subset=["mean"])
            hi, lo = sub.loc[sub["mean"].idxmax()], sub.loc[sub["mean"].idxmin()]
            extremes[norm] = (hi, lo)
            numbers |= {
                f"{norm}_spread_pp": pct(hi["mean"] - lo["mean"]),
                f"{norm}_best_scale": float(hi[key]),
                f"{norm}_worst_scale": float(lo[key]),
            }
        spread = {n: hi["mean"] - lo["mean"] for n, (hi, lo) in extremes.items()}
        stds = [p["std"] for pair in extremes.values() for p in pair]
        comp = compare(spread["none"] - spread["bn"], stds)
        numbers |= comparison_numbers("spread_reduction", comp)
        verdict = verdict_of(comp.outcome)
    evidence = pivot(pts, key, "init scale")
    return Finding(verdict, numbers, evidence, setting, notes, {"points": pts})


@superseded(
    "regularization",
    Rule(
        """
        Runs: ResNet-20, residual, init scale 1, batch 128, lr 0.1, norm bn or none, with
        and without augmentation; diverged runs are left out (their gap means nothing).
        Gap = final train accuracy - final test accuracy (train accuracy is the running
        mean over the last epoch, on augmented images when augmentation is on). A
        regulariser narrows the gap without costing test accuracy: per augmentation
        setting BN regularises if its gap is smaller than none's by more than the margin
        and its test accuracy is not lower by more than the margin. A smaller gap with
        lower test accuracy is underfitting; a similar gap with higher test accuracy is
        better optimisation -- neither counts. The verdict comes from the runs without
        augmentation (where overfitting shows), or with it when those are all there is:
        SUPPORTED if BN regularises there; NOT SUPPORTED if its gap is larger or equal, or
        smaller only with lower test accuracy; INCONCLUSIVE if the gap difference is
        unresolved. {noise}
        """,
        RULE_VALUES,
        version=1,
    ),
    figures=("regularization_gap",),
)
def regularization_claim_v1(tables: RunTables) -> Finding:
    runs = tables.runs
    sel, setting, notes = select(runs, _without("data.augment"), BN_NONE)
    if sel.empty:
        return no_data(notes)
    diverged = sel["status"].eq("diverged")
    if diverged.any():
        notes.append(f"left out {int(diverged.sum())} diverged run(s)")
    ok = sel[~diverged].assign(gap=lambda d: d["train_acc"] - d["test_acc"])
    keys = ["data.augment", "norm.kind"]
    pts = aggregate(ok, keys, "gap")
    for value in ("test_acc", "train_acc"):
        part = aggregate(ok, keys, value).rename(columns=lambda c, v=value: _suffix(c, v, keys))
        pts = pts.merge(part.drop(columns=[f"n_{value}"]), on=keys)
    numbers: dict[str, Any] = {}
    outcomes: dict[bool, str] = {}
    for augment in (False, True):
        sub = pts[pts["data.augment"].eq(augment)].set_index("norm.kind")
        if not {"bn", "none"} <= set(sub.index):
            continue
        bn, none = sub.loc["bn"], sub.loc["none"]
        gap = compare(none["mean"] - bn["mean"], [bn["std"], none["std"]])
        test = compare(
            bn["mean_test_acc"] - none["mean_test_acc"], [bn["std_test_acc"], none["std_test_acc"]]
        )
        outcome = gap.outcome
        if outcome == GREATER and test.outcome == LESS:
            outcome = LESS  # narrower gap bought with test accuracy: underfitting
        outcomes[augment] = outcome
        tag = "augment" if augment else "no_augment"
        numbers |= {
            f"{tag}_bn_gap_pp": pct(bn["mean"]),
            f"{tag}_none_gap_pp": pct(none["mean"]),
            **comparison_numbers(f"{tag}_gap_reduction", gap),
            f"{tag}_bn_test_acc_pct": pct(bn["mean_test_acc"]),
            f"{tag}_none_test_acc_pct": pct(none["mean_test_acc"]),
            **comparison_numbers(f"{tag}_test_acc_gain", test),
            f"{tag}_outcome": outcome,
        }
    if not outcomes:
        verdict = INCONCLUSIVE
        notes.append("no augmentation setting has runs of both norms")
    else:
        use_augmented = False not in outcomes  # without augmentation whenever those exist
        numbers["decided_on"] = "augmentation" if use_augmented else "no augmentation"
        verdict = verdict_of(outcomes[use_augmented])
    evidence = pd.DataFrame(
        {
            "augment": pts["data.augment"].map(yes_no),
            "norm": pts["norm.kind"],
            "train acc %": acc_cells(pts, "_train_acc"),
            "test acc %": acc_cells(pts, "_test_acc"),
            "gap (pp)": acc_cells(pts),
        }
    )
    return Finding(verdict, numbers, evidence, setting, notes, {"points": pts})


BATCH_RULES = _amended(
    """
    Runs: ResNet-20, residual, init scale 1, augmentation, norm bn, gn or ln, any batch
    size with the linearly scaled lr (0.1 x batch/128). Final test accuracy, a diverged
    run counting as chance ({chance}), mean over seeds. Over the batch sizes tried with
    every norm present (at least 2), a norm's drop is its accuracy at the largest minus
    at the smallest. SUPPORTED if {degrades} drop exceeds the drop of each of GN and LN
    present by more than the margin (from the four means involved); NOT SUPPORTED if
    {not_degrades} is smaller or equal for one of them; INCONCLUSIVE otherwise, or
    without BN and at least one of GN/LN. {noise}
    """,
    {
        "degrades": (
            "BN's",
            "BN really degrades (its own drop exceeds the margin from its two means) and its",
        ),
        "not_degrades": ("it", "BN does not degrade, or its drop"),
    },
)


def _batch_claim(tables: RunTables, guarded: bool) -> Finding:
    runs = tables.runs
    fixed = {**RESNET20, "data.augment": True}
    sel, setting, notes = select(runs, fixed, ("bn", "gn", "ln"), linear_lr(runs))
    if sel.empty:
        return no_data(notes)
    key = "data.batch_size"
    pts = aggregate(with_acc(sel), ["norm.kind", key], "acc")
    present = [n for n in ("bn", "gn", "ln") if n in set(pts["norm.kind"])]
    others = [n for n in present if n != "bn"]
    shared = sorted(set.intersection(*(values_of(pts, n, key) for n in present)))
    numbers: dict[str, Any] = {"shared_batch_sizes": [int(b) for b in shared]}
    verdict = INCONCLUSIVE
    if "bn" not in present or not others:
        notes.append(f"needs bn and gn or ln, found {present}")
    elif len(shared) < 2:
        notes.append(f"needs 2 batch sizes tried with {present}, found {shared}")
    else:
        big, small = shared[-1], shared[0]
        drops = {}
        for norm in present:
            hi, lo = point(pts, norm, big, key), point(pts, norm, small, key)
            drops[norm] = (hi["mean"] - lo["mean"], [hi["std"], lo["std"]])
            numbers[f"{norm}_drop_pp"] = pct(drops[norm][0])
        # First: does BN degrade at all? Beating GN/LN's drop means nothing when
        # every norm gains accuracy at the small batch (seen at CPU scale).
        own = compare(*drops["bn"])
        numbers |= comparison_numbers("bn_drop", own)
        outcomes = [own.outcome] if guarded else []
        for other in others:
            comp = compare(drops["bn"][0] - drops[other][0], drops["bn"][1] + drops[other][1])
            outcomes.append(comp.outcome)
            numbers |= comparison_numbers(f"bn_extra_drop_vs_{other}", comp)
        numbers |= {"largest_batch": int(big), "smallest_batch": int(small)}
        verdict = all_of(outcomes)
    evidence = pivot(pts, key, "batch")
    return Finding(verdict, numbers, evidence, setting, notes, {"points": pts})


@superseded(
    "inference",
    Rule(
        """
        Runs: ResNet-20 with BN, residual, init scale 1, augmentation, linearly scaled lr,
        completed, with the bn_eval probe (probe.bn_eval_batch_sizes). For each training
        batch size: test accuracy with the running statistics, and with each eval batch's
        own statistics at each eval batch size, means over seeds. SUPPORTED if, for every
        training batch size, batch-statistics accuracy at the smallest eval batch size is
        below running-statistics accuracy by more than the margin; NOT SUPPORTED if it is
        above or equal for one; otherwise INCONCLUSIVE. {noise}
        """,
        RULE_VALUES,
        version=1,
    ),
    figures=("inference_accuracy",),
)
def inference_claim_v1(tables: RunTables) -> Finding:
    runs = tables.runs
    extra = bn_eval_probed(runs)
    sel, setting, notes = select(runs, {**RESNET20, "data.augment": True}, ("bn",), extra)
    if sel.empty:
        return no_data(notes)
    long = bn_eval_long(sel)
    pts = aggregate(long, ["data.batch_size", "eval_batch"], "acc")
    running = aggregate(sel, ["data.batch_size"], "bn_eval.running_stats_acc")
    running = running.set_index("data.batch_size")
    numbers: dict[str, Any] = {}
    outcomes: list[str] = []
    rows = []
    for train_batch, sub in pts.groupby("data.batch_size"):
        run_pt = running.loc[train_batch]
        for _, p in sub.iterrows():
            rows.append(
                {
                    "train batch": int(train_batch),
                    "eval batch": int(p["eval_batch"]),
                    "batch-stats acc %": acc_cell(p),
                    "running-stats acc %": acc_cell(run_pt),
                    "running - batch (pp)": pp_cell(run_pt["mean"] - p["mean"]),
                }
            )
        smallest = sub.loc[sub["eval_batch"].idxmin()]
        comp = compare(run_pt["mean"] - smallest["mean"], [run_pt["std"], smallest["std"]])
        outcomes.append(comp.outcome)
        tag = f"train_batch_{int(train_batch)}"
        numbers |= {
            f"{tag}_running_acc_pct": pct(run_pt["mean"]),
            f"{tag}_smallest_eval_batch": int(smallest["eval_batch"]),
            f"{tag}_batch_stats_acc_pct": pct(smallest["mean"]),
            **comparison_numbers(f"{tag}_running_advantage", comp),
        }
    verdict = all_of(outcomes) if outcomes else INCONCLUSIVE
    data = {"points": pts, "running": running.reset_index()}
    return Finding(verdict, numbers, pd.DataFrame(rows), setting, notes, data)


@superseded(
    "ics",
    Rule(
        """
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
        averaged over layers and probed steps (0 = no shift). {noise}
        """,
        RULE_VALUES,
        version=1,
    ),
    figures=("ics_mechanism",),
)
def ics_section_v1(tables: RunTables) -> Finding:
    runs, epochs, probes = tables.runs, tables.epochs, tables.probes
    fixed = {**RESNET20, "model.residual": False, "data.augment": True, "data.batch_size": 128}
    extra = flag(runs, "probe.ics") & flag(runs, "probe.activations")
    sel, setting, notes = select(runs, fixed, NOISY_NORMS, extra)
    if sel.empty:
        return no_data(notes)
    mine = probes[probes["run_id"].isin(sel["run_id"])]
    per_run = with_acc(with_acc(sel, "train_acc"), "test_acc", "test").assign(
        shift=sel["run_id"].map(shift_by_run(mine)),
        ics=sel["run_id"].map(ics_by_run(mine)),
    )
    keys = ["norm.kind", "optim.lr"]
    pts = aggregate(per_run, keys, "acc")
    for column in ("test", "shift", "ics"):
        pts[column] = aggregate_aligned(per_run, keys, column, pts)
    numbers: dict[str, Any] = {}
    need = ("bn", "bn_noisy", "none_noisy")
    lrs = sorted(set.intersection(*(values_of(pts, n, "optim.lr") for n in need)))
    verdict = INCONCLUSIVE
    if not lrs:
        notes.append(f"needs {', '.join(need)} at one lr, found {sorted(set(pts['norm.kind']))}")
    else:
        bn_at = {lr: point(pts, "bn", lr, "optim.lr")["mean"] for lr in lrs}
        lr = max(lrs, key=lambda v: bn_at[v])
        bn, noisy, noisy_none = (point(pts, n, lr, "optim.lr") for n in need)
        shift_ratio = noisy["shift"] / bn["shift"] if bn["shift"] > 0 else math.nan
        vs_bn = noisy["mean"] - bn["mean"]
        vs_none = compare(noisy["mean"] - noisy_none["mean"], [noisy["std"], noisy_none["std"]])
        numbers = {
            "lr": lr,
            "bn_train_acc_pct": pct(bn["mean"]),
            "bn_noisy_train_acc_pct": pct(noisy["mean"]),
            "none_noisy_train_acc_pct": pct(noisy_none["mean"]),
            "bn_noisy_minus_bn_pp": pct(vs_bn),
            **comparison_numbers("bn_noisy_vs_none_noisy", vs_none),
            "bn_shift": sig4(bn["shift"]),
            "bn_noisy_shift": sig4(noisy["shift"]),
            "shift_ratio_noisy_over_bn": sig4(shift_ratio),
            "bn_ics_1_minus_cos": sig4(bn["ics"]),
            "bn_noisy_ics_1_minus_cos": sig4(noisy["ics"]),
        }
        if "none" in set(pts["norm.kind"]) and lr in values_of(pts, "none", "optim.lr"):
            numbers["none_ics_1_minus_cos"] = sig4(point(pts, "none", lr, "optim.lr")["ics"])
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
            "train acc %": acc_cells(pts),
            "test acc % (no noise)": pts["test"].map(lambda v: f"{100 * v:.1f}"),
            "distribution shift": pts["shift"].map(sig3_cell),
            "ICS (1 - cos)": pts["ics"].map(sig3_cell),
        }
    )
    curves = epochs[epochs["run_id"].isin(sel["run_id"])].merge(sel[["run_id", *keys]], on="run_id")
    data = {
        "points": pts,
        "curves": curves,
        "ics": probe_rows(mine, sel, "ics", "ics_cos"),
        "shift": shift_rows(mine, sel),
    }
    return Finding(verdict, numbers, evidence, setting, notes, data)


@superseded(
    "landscape",
    Rule(
        """
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
        """,
        RULE_VALUES,
        version=1,
    ),
    figures=("landscape_bands",),
)
def landscape_section_v1(tables: RunTables) -> Finding:
    runs, probes = tables.runs, tables.probes
    fixed = {**RESNET20, "data.augment": True, "data.batch_size": 128}
    sel, setting, notes = select(runs, fixed, ("bn", "none"), flag(runs, "probe.landscape"))
    if sel.empty:
        return no_data(notes)
    mine = probes[probes["run_id"].isin(sel["run_id"]) & probes["probe"].eq("landscape")]
    mine = mine.merge(sel[["run_id", "norm.kind", "optim.lr"]], on="run_id")
    shared = sorted(values_of(sel, "bn", "optim.lr") & values_of(sel, "none", "optim.lr"))
    rows, numbers = [], {"shared_lrs": shared}
    outcomes: list[str] = []
    for lr in shared:
        at_lr = mine[np.isclose(mine["optim.lr"], lr)]
        ids = sel.loc[np.isclose(sel["optim.lr"], lr), "run_id"]
        steps = common_steps(at_lr, ids)
        numbers[f"lr_{lr:g}_steps_compared"] = len(steps)
        if not steps:
            notes.append(f"lr {lr:g}: no step was probed in every run")
            continue
        for metric, label in LANDSCAPE.items():
            value = {}
            for norm in ("bn", "none"):
                part = at_lr[at_lr["norm.kind"].eq(norm) & at_lr["metric"].eq(metric)]
                part = part[part["step"].isin(steps)]
                value[norm] = mean_of_medians(part)
            ratio = value["none"] / value["bn"] if value["bn"] > 0 else math.nan
            if ratio >= SMOOTHER_RATIO:
                outcome = "BN smoother"
            elif ratio <= 1 / SMOOTHER_RATIO:
                outcome = "BN rougher"
            else:
                outcome = "similar"
            outcomes.append(outcome)
            numbers[f"lr_{lr:g}_{metric}_none_over_bn"] = sig4(ratio)
            rows.append(
                {
                    "lr": f"{lr:g}",
                    "quantity": label,
                    "bn (median)": sig3_cell(value["bn"]),
                    "none (median)": sig3_cell(value["none"]),
                    "none / bn": sig3_cell(ratio),
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
    return Finding(verdict, numbers, pd.DataFrame(rows), setting, notes, {"landscape": mine})


ALTERNATIVES_RULES = _amended(
    """
    Runs: ResNet-20, residual, init scale 1, augmentation, linearly scaled lr (0.1 x
    batch/128), any batch size; norm bn, gn, ln, batch_renorm (each warm-up its own
    arm), and ghost_bn (each virtual batch its own arm). Final test accuracy, a
    diverged run counting as chance ({chance}), mean over seeds. Each alternative
    (gn, ln, batch_renorm) is compared with BN between the smallest and the largest
    batch size both were tried at: its change is its accuracy at the small batch minus
    at the large one. {first}SUPPORTED if the change of every alternative present is
    larger than BN's by more than the margin (from the four means involved): it holds
    up better; NOT SUPPORTED if none of them does; INCONCLUSIVE otherwise or without BN
    and an alternative at 2 shared sizes. Shown beside (no part of the verdict): Ghost
    BN, whose statistics come from a few samples whatever the batch, against BN at the
    largest batch -- the cost of small-batch statistics alone, at the same number of
    steps. {noise}
    """,
    {
        "first": (
            "",
            "First, BN must really degrade: its own change below minus the margin at every "
            "pair of sizes compared, else INCONCLUSIVE (there is no loss for the "
            "alternatives to hold up against). Then ",
        )
    },
)


def _alternatives_section(tables: RunTables, guarded: bool) -> Finding:
    runs = tables.runs
    fixed = {**RESNET20, "data.augment": True}
    kinds = ("bn", "ghost_bn", *ALTERNATIVES)
    sel, setting, notes = select(runs, fixed, kinds, linear_lr(runs))
    if sel.empty:
        return no_data(notes)
    key = "data.batch_size"
    per_run = with_acc(sel).assign(arm=arm_labels(sel))
    pts = aggregate(per_run, ["arm", key], "acc")
    numbers: dict[str, Any] = {}
    change: dict[str, tuple[float, list[float]]] = {}
    outcomes, bn_degrades = [], []
    arms = sorted(set(pts["arm"]))
    for arm in [a for a in arms if a.split("/")[0] in ALTERNATIVES]:
        shared = sorted(values_of(pts, "bn", key, "arm") & values_of(pts, arm, key, "arm"))
        if len(shared) < 2:
            continue
        small, big = shared[0], shared[-1]
        for who in ("bn", arm):
            lo, hi = point(pts, who, small, key, "arm"), point(pts, who, big, key, "arm")
            change[who] = (lo["mean"] - hi["mean"], [lo["std"], hi["std"]])
        comp = compare(change[arm][0] - change["bn"][0], change[arm][1] + change["bn"][1])
        outcomes.append(comp.outcome)
        bn_degrades.append(compare(*change["bn"]).outcome == LESS)
        numbers |= {
            f"{arm}_batches": [int(small), int(big)],
            f"{arm}_change_pp": pct(change[arm][0]),
            f"bn_change_over_{arm}_batches_pp": pct(change["bn"][0]),
            **comparison_numbers(f"{arm}_change_minus_bn", comp),
        }
    verdict = INCONCLUSIVE
    if not outcomes:
        notes.append(f"needs bn and one of {', '.join(ALTERNATIVES)} at 2 shared batch sizes")
    elif guarded and not all(bn_degrades):
        notes.append(
            "BN does not lose accuracy at the small batch here, so no alternative can hold "
            "up better; the changes compared are gains"
        )
    elif all(o == GREATER for o in outcomes):
        verdict = SUPPORTED
    elif not any(o == GREATER for o in outcomes):
        verdict = NOT_SUPPORTED
    big = max(values_of(pts, "bn", key, "arm"), default=None)
    for arm in sorted(a for a in set(pts["arm"]) if a.startswith("ghost_bn")):
        if big is not None and big in values_of(pts, arm, key, "arm"):
            ghost, bn = point(pts, arm, big, key, "arm"), point(pts, "bn", big, key, "arm")
            comp = compare(ghost["mean"] - bn["mean"], [ghost["std"], bn["std"]])
            numbers |= comparison_numbers(f"{arm}_minus_bn_at_batch_{int(big)}", comp)
    evidence = pivot(pts, key, "batch", by="arm", order=())
    return Finding(verdict, numbers, evidence, setting, notes, {"points": pts})


@superseded(
    "deep_no_norm",
    Rule(
        """
        Runs: residual ResNets of any depth, init scale 1, augmentation, batch 128, lr 0.1;
        four arms: bn (He init), none (He init), fixup and skipinit (no norm, each residual
        branch zero at init). Final test accuracy, a diverged run counting as chance
        ({chance}), mean over seeds. Decided at the deepest depth tried with all four arms:
        an arm trains there if no seed diverged and it reaches {learns}. SUPPORTED if Fixup
        and SkipInit both train and both beat none by more than the margin; NOT SUPPORTED
        if neither trains; INCONCLUSIVE otherwise or when an arm is missing. Shown beside:
        each no-norm arm's gap to BN at every depth. {noise}
        """,
        RULE_VALUES,
        version=1,
    ),
    figures=("deep_no_norm_accuracy",),
)
def deep_no_norm_section_v1(tables: RunTables) -> Finding:
    runs = tables.runs
    fixed = {k: v for k, v in STANDARD.items() if k not in ("model.depth", "model.init")}
    init = runs.get("model.init", pd.Series("kaiming", index=runs.index)).fillna("kaiming")
    kind = runs["norm.kind"]
    arms = kind.eq("bn") & init.eq("kaiming") | kind.eq("none") & init.isin(
        ["kaiming", "fixup", "skipinit"]
    )
    sel, setting, notes = select(runs, fixed, None, arms, vary=("model.init",))
    if sel.empty:
        return no_data(notes)
    key = "model.depth"
    per_run = with_acc(sel).assign(
        arm=np.where(sel["model.init"].eq("kaiming"), sel["norm.kind"], sel["model.init"]),
        diverged=sel["status"].eq("diverged"),
    )
    pts = aggregate(per_run, ["arm", key], "acc")
    pts["diverged"] = aggregate_aligned(per_run, ["arm", key], "diverged", pts, "sum")
    depths = sorted(set.intersection(*(values_of(pts, a, key, "arm") for a in DEEP_ARMS)))
    numbers: dict[str, Any] = {"depths_with_all_arms": [int(d) for d in depths]}
    for arm in ("none", "fixup", "skipinit"):
        for depth in sorted(values_of(pts, arm, key, "arm") & values_of(pts, "bn", key, "arm")):
            gap = (
                point(pts, arm, depth, key, "arm")["mean"]
                - point(pts, "bn", depth, key, "arm")["mean"]
            )
            numbers[f"{arm}_minus_bn_depth_{int(depth)}_pp"] = pct(gap)
    verdict = INCONCLUSIVE
    if not depths:
        notes.append(f"needs {', '.join(DEEP_ARMS)} at one depth, found {sorted(set(pts['arm']))}")
    else:
        depth = depths[-1]
        numbers["deciding_depth"] = int(depth)
        at = {a: point(pts, a, depth, key, "arm") for a in DEEP_ARMS}
        trains = {a: bool(at[a]["diverged"] == 0 and at[a]["mean"] >= LEARNS) for a in DEEP_ARMS}
        numbers |= {f"{a}_trains": trains[a] for a in DEEP_ARMS}
        numbers |= {f"{a}_acc_pct": pct(at[a]["mean"]) for a in DEEP_ARMS}
        beats = []
        for arm in ("fixup", "skipinit"):
            comp = compare(
                at[arm]["mean"] - at["none"]["mean"], [at[arm]["std"], at["none"]["std"]]
            )
            numbers |= comparison_numbers(f"{arm}_vs_none", comp)
            beats.append(trains[arm] and comp.outcome == GREATER)
        if all(beats):
            verdict = SUPPORTED
        elif not trains["fixup"] and not trains["skipinit"]:
            verdict = NOT_SUPPORTED
    evidence = pivot(pts, key, "depth", by="arm", order=DEEP_ARMS)
    return Finding(verdict, numbers, evidence, setting, notes, {"points": pts})


# ----------------------------------------------------------------------------- helpers


def _epochs_to(runs: pd.DataFrame, curves: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per run: the first epoch at or above `target`, else planned epochs + 1 (censored)."""
    out = []
    for _, run in runs.iterrows():
        curve = curves[curves["run_id"].eq(run["run_id"])]
        hit = curve.loc[curve["test_acc"] >= target, "epoch"]
        reached = not hit.empty
        first = int(hit.min()) if reached else int(run["train.epochs"]) + 1
        out.append({"norm.kind": run["norm.kind"], "epochs_to": first, "reached": reached})
    return pd.DataFrame(out)


def _suffix(column: str, value: str, keys: list[str]) -> str:
    return column if column in keys else f"{column}_{value}"


# The rules amended by a guard: versions 2 and 1 of each, decided by one function.
AMENDED = {
    key: _amended_sections(key, rules, figures, decide)
    for key, rules, figures, decide in (
        ("lr", LR_RULES, ("lr_accuracy",), _lr_claim),
        ("convergence", CONVERGENCE_RULES, ("training_curves",), _convergence_claim),
        ("batch", BATCH_RULES, ("batch_accuracy",), _batch_claim),
        ("alternatives", ALTERNATIVES_RULES, ("alternatives_accuracy",), _alternatives_section),
    )
}
lr_claim_v2, lr_claim_v1 = AMENDED["lr"]
convergence_claim_v2, convergence_claim_v1 = AMENDED["convergence"]
batch_claim_v2, batch_claim_v1 = AMENDED["batch"]
alternatives_section_v2, alternatives_section_v1 = AMENDED["alternatives"]
