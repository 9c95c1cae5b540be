"""Superseded rule versions, kept computable: the report decides each on the same runs
and shows its verdict beside the current rule's (bnlab.report.core.superseded).

Which versions stay, and why. The committed reports (results/cpu, results/gpu) show
every one of them beside the current rule, on today's runs. The newest of each --
version 2 of lr, convergence, batch and alternatives, version 1 of the others -- judged
the first, one-seed results (commit bd7e589, results/cpu: BN against the He-init net
without normalisation, an assumed 1 pp noise floor). Those four had been changed after
their CPU-scale data was seen (version 2 added a guard), so their version 1 stays
whatever becomes of the results; it is version 2's code with the guard off
(`_amended`). Any other version goes (git keeps it) once the committed results are
regenerated without it; tests/test_report_registry.py holds the versions kept here and
the versions the committed reports show to one list.

Only what the report shows of an earlier version is kept: its rule as it was worded,
its verdict, the numbers that decided it and notes on the runs it left out. The
evidence tables, figures and side numbers it printed when it was current are in git.
Nothing here decides a headline verdict.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bnlab.config import RESIDUAL_INITS
from bnlab.report.arms import select_arms
from bnlab.report.cells import pct, round2, sig4
from bnlab.report.claims import with_curves
from bnlab.report.core import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Finding,
    Rule,
    Section,
    SectionFn,
    no_data,
    superseded,
)
from bnlab.report.keys import (
    BEST_TEST_ACC,
    BN_EVAL_RUNNING,
    COMPLETED,
    DIVERGED,
    EPOCH,
    METRIC,
    PROBE,
    RUN_ID,
    STATUS,
    STEP,
    TEST_ACC,
    TRAIN_ACC,
    K,
)
from bnlab.report.load import RunTables
from bnlab.report.points import (
    CHANCE_ACC,
    LEARNS,
    aggregate_aligned,
    comparison_numbers,
    flag,
    point,
    values_of,
    with_acc,
)
from bnlab.report.probe_maths import bn_eval_long, common_steps, mean_of_medians, shift_by_run
from bnlab.report.select import (
    Setting,
    arm_labels,
    bn_eval_probed,
    linear_lr,
    recipe_without,
    select,
)
from bnlab.report.stats import (
    GREATER,
    LESS,
    MIN_MARGIN,
    NOISE_RULE,
    Comparison,
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
CONV_CURVE_LR = 0.1  # the lr whose training curves were drawn (nearest shared one)
BN_NONE = ("bn", "none")
ICS_SAME_MARGIN = 0.05  # noisy BN trains "about as well" as BN: at most 5 pp below it
SMOOTHER_RATIO = 1.1  # a landscape quantity is lower when the other is >= 1.1x it
NOISY_NORMS = ("bn", "bn_noisy", "none", "none_noisy")
# Batch-independent, or BN corrected for small batches (every renorm warm-up an arm).
ALTERNATIVES = ("gn", "ln", "batch_renorm")
DEEP_ARMS = ("bn", "none", "fixup", "skipinit")
LANDSCAPE_METRICS = ("loss_variation", "grad_change_max", "beta_smoothness")  # probes.csv

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


def _bn_none(
    runs: pd.DataFrame, *vary: str, extra: pd.Series | None = None
) -> tuple[pd.DataFrame, Setting | None, list[str]]:
    """Runs of BN and of the He-init net without normalisation in the standard recipe but
    for the `vary` keys: what most earlier versions compared."""
    return select(runs, recipe_without(*vary), BN_NONE, extra)


def _shared(pts: pd.DataFrame, key: str, who: Sequence[str], by: str = K.norm.kind) -> list[Any]:
    """The `key` values tried with every one of `who` (norms, or arms: `by`), sorted."""
    return sorted(set.intersection(*(values_of(pts, w, key, by) for w in who)))


def _diff(a: pd.Series, b: pd.Series, floor: float = MIN_MARGIN) -> Comparison:
    """Point a's mean minus point b's, against the seed spread of both (stats.compare)."""
    return compare(a["mean"] - b["mean"], [a["std"], b["std"]], floor)


def _change(
    pts: pd.DataFrame, who: str, at: Any, to: Any, key: str, by: str = K.norm.kind
) -> tuple[float, list[float]]:
    """`who`'s mean at `key` = `at` minus at `to`, and the two points' seed spreads."""
    a, b = point(pts, who, at, key, by), point(pts, who, to, key, by)
    return a["mean"] - b["mean"], [a["std"], b["std"]]


def _v1(key: str, text: str) -> Callable[[SectionFn], Section]:
    """Register version 1 of section `key`'s rule, worded `text` (RULE_VALUES filled in)."""
    return superseded(key, Rule(text, RULE_VALUES, version=1))


def _amended(template: str, slots: dict[str, tuple[str, str]]) -> dict[int, Rule]:
    """A rule's version 2 and the version 1 it amended, written once: each `{slot}` of
    `template` holds version 1's words and version 2's (the guard version 2 added)."""

    def filled(version: int) -> dict[str, str]:
        words = {k: pair[version - 1].format(**RULE_VALUES) for k, pair in slots.items()}
        return {**RULE_VALUES, **words}

    return {v: Rule(template, filled(v), version=v) for v in (1, 2)}


def _amended_sections(
    key: str, rules: dict[int, Rule], decide: Callable[..., Finding]
) -> tuple[Section, Section]:
    """Register versions 2 and 1 of section `key`, both decided by
    `decide(tables, guarded)`: version 1 is the same rule before the guard version 2 added."""
    v2 = superseded(key, rules[2])(functools.partial(decide, guarded=True))
    v1 = superseded(key, rules[1])(functools.partial(decide, guarded=False))
    return v2, v1


# ----------------------------------------------------------------------------- lr

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
    sel, setting, notes = _bn_none(tables.runs, K.optim.lr)
    if sel.empty:
        return no_data(notes)
    lr, keys = K.optim.lr, [K.norm.kind, K.optim.lr]
    shared = _shared(sel, lr, BN_NONE)
    # The grid points (norm, lr) where no seed diverged, with their mean accuracy.
    diverged = sel.assign(diverged=sel[STATUS].eq(DIVERGED)).groupby(keys)["diverged"]
    clean = sel[~diverged.transform("any")]
    means = clean.groupby(keys)[TEST_ACC].mean().reset_index()
    numbers: dict[str, Any] = {"shared_lrs": shared}
    largest: dict[str, float | None] = {}
    for norm in BN_NONE:
        mine = means[means[K.norm.kind].eq(norm) & means[lr].isin(shared)]
        best = mine[TEST_ACC].max()
        trains = mine[TEST_ACC] >= best - LR_TRAINS_MARGIN
        if guarded:
            trains &= mine[TEST_ACC] >= LEARNS
        good = mine.loc[trains, lr]
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
    return Finding(verdict, numbers, setting=setting, notes=notes)


# ----------------------------------------------------------------------------- depth


@_v1(
    "depth",
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
)
def depth_claim_v1(tables: RunTables) -> Finding:
    sel, setting, notes = _bn_none(tables.runs, K.model.depth, K.model.residual)
    if sel.empty:
        return no_data(notes)
    depth = K.model.depth
    pts = aggregate(with_acc(sel), [K.model.residual, depth, K.norm.kind], "acc")
    numbers: dict[str, Any] = {}
    outcomes: list[str] = []
    for residual in (False, True):
        arch = "residual" if residual else "plain"
        sub = pts[pts[K.model.residual].eq(residual)]
        shared = _shared(sub, depth, BN_NONE)
        if len(shared) < 2:
            if not sub.empty:
                notes.append(f"{arch}: needs 2 depths tried with both norms, found {shared}")
            continue
        deep = shared[-1]
        comp = _diff(point(sub, "bn", deep, depth), point(sub, "none", deep, depth))
        outcomes.append(comp.outcome)
        numbers[f"{arch}_deepest_depth"] = int(deep)
        numbers |= comparison_numbers(f"{arch}_bn_advantage", comp)
    verdict = any_of(outcomes) if outcomes else INCONCLUSIVE
    return Finding(verdict, numbers, setting=setting, notes=notes)


# ----------------------------------------------------------------------------- convergence

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
    sel, setting, notes = _bn_none(tables.runs, K.optim.lr)
    if sel.empty:
        return no_data(notes)
    sel, curves = with_curves(sel, tables.epochs, notes)
    shared = _shared(sel, K.optim.lr, BN_NONE)
    numbers: dict[str, Any] = {"shared_lrs": shared}
    outcomes: list[str] = []
    for lr in shared:
        at_lr = sel[sel[K.optim.lr].eq(lr)]
        ok = at_lr[at_lr[STATUS].eq(COMPLETED)]
        bests = ok.groupby(K.norm.kind)[BEST_TEST_ACC].mean().dropna()
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
        agg = aggregate(reach, [K.norm.kind], "epochs_to").set_index(K.norm.kind)
        bn, none = agg.loc["bn"], agg.loc["none"]
        comp = _diff(none, bn, floor=CONV_MIN_EPOCHS)
        outcomes.append(comp.outcome)
        tag = f"lr_{lr:g}"
        numbers |= {
            f"{tag}_target_acc_pct": pct(target),
            f"{tag}_bn_epochs": round2(bn["mean"]),
            f"{tag}_none_epochs": round2(none["mean"]),
            f"{tag}_bn_saves_epochs": round2(comp.diff),
            f"{tag}_margin_epochs": round2(comp.margin),
            f"{tag}_outcome": comp.outcome,
        }
    verdict = all_of(outcomes) if outcomes else INCONCLUSIVE
    if not shared:
        notes.append("no learning rate was tried with both norms")
    return Finding(verdict, numbers, setting=setting, notes=notes)


def _epochs_to(runs: pd.DataFrame, curves: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per run: the first epoch at or above `target`, else planned epochs + 1 (censored)."""
    out = []
    for _, run in runs.iterrows():
        curve = curves[curves[RUN_ID].eq(run[RUN_ID])]
        hit = curve.loc[curve[TEST_ACC] >= target, EPOCH]
        reached = not hit.empty
        first = int(hit.min()) if reached else int(run[K.train.epochs]) + 1
        out.append({K.norm.kind: run[K.norm.kind], "epochs_to": first, "reached": reached})
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- init


@_v1(
    "init",
    """
    Runs: ResNet-20, residual, augmentation, batch 128, lr 0.1, norm bn or none, any
    model.init_scale. Final test accuracy, a diverged run counting as chance
    ({chance}), mean over seeds. Over the init scales tried with both norms (at least
    2), each norm's spread is its best mean minus its worst mean. SUPPORTED if BN's
    spread is smaller than none's by more than the margin (from the four means that
    define the two spreads); NOT SUPPORTED if it is larger or equal; INCONCLUSIVE if
    unresolved or fewer than 2 shared scales. {noise}
    """,
)
def init_claim_v1(tables: RunTables) -> Finding:
    sel, setting, notes = _bn_none(tables.runs, K.model.init_scale)
    if sel.empty:
        return no_data(notes)
    key = K.model.init_scale
    pts = aggregate(with_acc(sel), [K.norm.kind, key], "acc")
    shared = _shared(pts, key, BN_NONE)
    numbers: dict[str, Any] = {"shared_init_scales": shared}
    if len(shared) < 2:
        notes.append(f"needs 2 init scales tried with both norms, found {shared}")
        return Finding(INCONCLUSIVE, numbers, setting=setting, notes=notes)
    used = pts[pts[key].isin(shared)].dropna(subset=["mean"])
    spread: dict[str, float] = {}
    stds: list[float] = []
    for norm in BN_NONE:
        sub = used[used[K.norm.kind].eq(norm)]
        best, worst = sub.loc[sub["mean"].idxmax()], sub.loc[sub["mean"].idxmin()]
        spread[norm] = best["mean"] - worst["mean"]
        stds += [best["std"], worst["std"]]
        numbers[f"{norm}_spread_pp"] = pct(spread[norm])
    comp = compare(spread["none"] - spread["bn"], stds)
    numbers |= comparison_numbers("spread_reduction", comp)
    return Finding(verdict_of(comp.outcome), numbers, setting=setting, notes=notes)


# ----------------------------------------------------------------------------- regularization


@_v1(
    "regularization",
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
)
def regularization_claim_v1(tables: RunTables) -> Finding:
    sel, setting, notes = _bn_none(tables.runs, K.data.augment)
    if sel.empty:
        return no_data(notes)
    diverged = sel[STATUS].eq(DIVERGED)
    if diverged.any():
        notes.append(f"left out {int(diverged.sum())} diverged run(s)")
    ok = sel[~diverged].assign(gap=lambda d: d[TRAIN_ACC] - d[TEST_ACC])
    keys = [K.data.augment, K.norm.kind]
    gaps, tests = aggregate(ok, keys, "gap"), aggregate(ok, keys, TEST_ACC)
    numbers: dict[str, Any] = {}
    outcomes: dict[bool, str] = {}
    for augment in (False, True):
        gap = gaps[gaps[K.data.augment].eq(augment)].set_index(K.norm.kind)
        test = tests[tests[K.data.augment].eq(augment)].set_index(K.norm.kind)
        if not {"bn", "none"} <= set(gap.index):
            continue
        narrower = _diff(gap.loc["none"], gap.loc["bn"])
        better = _diff(test.loc["bn"], test.loc["none"])
        outcome = narrower.outcome
        if outcome == GREATER and better.outcome == LESS:
            outcome = LESS  # narrower gap bought with test accuracy: underfitting
        outcomes[augment] = outcome
        tag = "augment" if augment else "no_augment"
        numbers |= {
            **comparison_numbers(f"{tag}_gap_reduction", narrower),
            **comparison_numbers(f"{tag}_test_acc_gain", better),
            f"{tag}_outcome": outcome,
        }
    if not outcomes:
        notes.append("no augmentation setting has runs of both norms")
        return Finding(INCONCLUSIVE, numbers, setting=setting, notes=notes)
    use_augmented = False not in outcomes  # without augmentation whenever those exist
    numbers["decided_on"] = "augmentation" if use_augmented else "no augmentation"
    return Finding(verdict_of(outcomes[use_augmented]), numbers, setting=setting, notes=notes)


# ----------------------------------------------------------------------------- batch

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
    fixed = recipe_without(K.optim.lr, K.data.batch_size)
    sel, setting, notes = select(runs, fixed, ("bn", "gn", "ln"), linear_lr(runs))
    if sel.empty:
        return no_data(notes)
    key = K.data.batch_size
    pts = aggregate(with_acc(sel), [K.norm.kind, key], "acc")
    present = [n for n in ("bn", "gn", "ln") if n in set(pts[K.norm.kind])]
    others = [n for n in present if n != "bn"]
    shared = _shared(pts, key, present)
    numbers: dict[str, Any] = {"shared_batch_sizes": [int(b) for b in shared]}
    if "bn" not in present or not others:
        notes.append(f"needs bn and gn or ln, found {present}")
        return Finding(INCONCLUSIVE, numbers, setting=setting, notes=notes)
    if len(shared) < 2:
        notes.append(f"needs 2 batch sizes tried with {present}, found {shared}")
        return Finding(INCONCLUSIVE, numbers, setting=setting, notes=notes)
    big, small = shared[-1], shared[0]
    drops = {norm: _change(pts, norm, big, small, key) for norm in present}
    numbers |= {f"{norm}_drop_pp": pct(drops[norm][0]) for norm in present}
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
    return Finding(all_of(outcomes), numbers, setting=setting, notes=notes)


# ----------------------------------------------------------------------------- inference


@_v1(
    "inference",
    """
    Runs: ResNet-20 with BN, residual, init scale 1, augmentation, linearly scaled lr,
    completed, with the bn_eval probe (probe.bn_eval_batch_sizes). For each training
    batch size: test accuracy with the running statistics, and with each eval batch's
    own statistics at each eval batch size, means over seeds. SUPPORTED if, for every
    training batch size, batch-statistics accuracy at the smallest eval batch size is
    below running-statistics accuracy by more than the margin; NOT SUPPORTED if it is
    above or equal for one; otherwise INCONCLUSIVE. {noise}
    """,
)
def inference_claim_v1(tables: RunTables) -> Finding:
    runs = tables.runs
    fixed = recipe_without(K.optim.lr, K.data.batch_size)
    sel, setting, notes = select(runs, fixed, ("bn",), bn_eval_probed(runs))
    if sel.empty:
        return no_data(notes)
    batch = K.data.batch_size
    pts = aggregate(bn_eval_long(sel), [batch, "eval_batch"], "acc")
    running = aggregate(sel, [batch], BN_EVAL_RUNNING).set_index(batch)
    numbers: dict[str, Any] = {}
    outcomes: list[str] = []
    for train_batch, sub in pts.groupby(batch):
        smallest = sub.loc[sub["eval_batch"].idxmin()]
        comp = _diff(running.loc[train_batch], smallest)
        outcomes.append(comp.outcome)
        tag = f"train_batch_{int(train_batch)}"
        numbers[f"{tag}_smallest_eval_batch"] = int(smallest["eval_batch"])
        numbers |= comparison_numbers(f"{tag}_running_advantage", comp)
    verdict = all_of(outcomes) if outcomes else INCONCLUSIVE
    return Finding(verdict, numbers, setting=setting, notes=notes)


# ----------------------------------------------------------------------------- ics


@_v1(
    "ics",
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
)
def ics_section_v1(tables: RunTables) -> Finding:
    runs, probes = tables.runs, tables.probes
    fixed = {**recipe_without(K.optim.lr), K.model.residual: False}
    extra = flag(runs, K.probe.ics) & flag(runs, K.probe.activations)
    sel, setting, notes = select(runs, fixed, NOISY_NORMS, extra)
    if sel.empty:
        return no_data(notes)
    mine = probes[probes[RUN_ID].isin(sel[RUN_ID])]
    per_run = with_acc(sel, TRAIN_ACC).assign(shift=sel[RUN_ID].map(shift_by_run(mine)))
    lr, keys = K.optim.lr, [K.norm.kind, K.optim.lr]
    pts = aggregate(per_run, keys, "acc")
    pts["shift"] = aggregate_aligned(per_run, keys, "shift", pts)
    need = ("bn", "bn_noisy", "none_noisy")
    lrs = _shared(pts, lr, need)
    if not lrs:
        notes.append(f"needs {', '.join(need)} at one lr, found {sorted(set(pts[K.norm.kind]))}")
        return Finding(INCONCLUSIVE, {}, setting=setting, notes=notes)
    best_lr = max(lrs, key=lambda v: point(pts, "bn", v, lr)["mean"])
    bn, noisy, noisy_none = (point(pts, n, best_lr, lr) for n in need)
    shift_ratio = noisy["shift"] / bn["shift"] if bn["shift"] > 0 else math.nan
    vs_bn = noisy["mean"] - bn["mean"]
    vs_none = _diff(noisy, noisy_none)
    numbers = {
        "lr": best_lr,
        "bn_noisy_minus_bn_pp": pct(vs_bn),
        **comparison_numbers("bn_noisy_vs_none_noisy", vs_none),
        "shift_ratio_noisy_over_bn": sig4(shift_ratio),
    }
    if not shift_ratio > 1.0:
        notes.append("the noise did not make noisy BN's distributions shift more than BN's")
        verdict = INCONCLUSIVE
    elif vs_bn >= -ICS_SAME_MARGIN and vs_none.outcome == GREATER:
        verdict = SUPPORTED
    else:
        verdict = NOT_SUPPORTED
    return Finding(verdict, numbers, setting=setting, notes=notes)


# ----------------------------------------------------------------------------- landscape


@_v1(
    "landscape",
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
)
def landscape_section_v1(tables: RunTables) -> Finding:
    runs, probes = tables.runs, tables.probes
    sel, setting, notes = _bn_none(runs, K.optim.lr, extra=flag(runs, K.probe.landscape))
    if sel.empty:
        return no_data(notes)
    mine = probes[probes[RUN_ID].isin(sel[RUN_ID]) & probes[PROBE].eq("landscape")]
    mine = mine.merge(sel[[RUN_ID, K.norm.kind, K.optim.lr]], on=RUN_ID)
    shared = _shared(sel, K.optim.lr, BN_NONE)
    numbers: dict[str, Any] = {"shared_lrs": shared}
    outcomes: list[str] = []
    for lr in shared:
        at_lr = mine[np.isclose(mine[K.optim.lr], lr)]
        steps = common_steps(at_lr, sel.loc[np.isclose(sel[K.optim.lr], lr), RUN_ID])
        numbers[f"lr_{lr:g}_steps_compared"] = len(steps)
        if not steps:
            notes.append(f"lr {lr:g}: no step was probed in every run")
            continue
        at_lr = at_lr[at_lr[STEP].isin(steps)]
        for metric in LANDSCAPE_METRICS:
            value = {
                norm: mean_of_medians(at_lr[at_lr[K.norm.kind].eq(norm) & at_lr[METRIC].eq(metric)])
                for norm in BN_NONE
            }
            ratio = value["none"] / value["bn"] if value["bn"] > 0 else math.nan
            if ratio >= SMOOTHER_RATIO:
                outcomes.append("BN smoother")
            elif ratio <= 1 / SMOOTHER_RATIO:
                outcomes.append("BN rougher")
            else:
                outcomes.append("similar")
            numbers[f"lr_{lr:g}_{metric}_none_over_bn"] = sig4(ratio)
    smoother = outcomes.count("BN smoother")
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
    return Finding(verdict, numbers, setting=setting, notes=notes)


# ----------------------------------------------------------------------------- alternatives

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
    fixed = recipe_without(K.optim.lr, K.data.batch_size)
    # Ghost BN was shown beside: its runs still count in choosing the setting compared.
    kinds = ("bn", "ghost_bn", *ALTERNATIVES)
    sel, setting, notes = select(runs, fixed, kinds, linear_lr(runs))
    if sel.empty:
        return no_data(notes)
    key = K.data.batch_size
    pts = aggregate(with_acc(sel).assign(arm=arm_labels(sel)), ["arm", key], "acc")
    numbers: dict[str, Any] = {}
    outcomes, bn_degrades = [], []
    for arm in sorted(a for a in set(pts["arm"]) if a.split("/")[0] in ALTERNATIVES):
        shared = _shared(pts, key, ("bn", arm), "arm")
        if len(shared) < 2:
            continue
        small, big = shared[0], shared[-1]
        bn, alt = (_change(pts, who, small, big, key, "arm") for who in ("bn", arm))
        comp = compare(alt[0] - bn[0], alt[1] + bn[1])
        outcomes.append(comp.outcome)
        bn_degrades.append(compare(*bn).outcome == LESS)
        numbers |= {
            f"{arm}_batches": [int(small), int(big)],
            f"{arm}_change_pp": pct(alt[0]),
            f"bn_change_over_{arm}_batches_pp": pct(bn[0]),
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
    return Finding(verdict, numbers, setting=setting, notes=notes)


# ----------------------------------------------------------------------------- deep_no_norm


@_v1(
    "deep_no_norm",
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
)
def deep_no_norm_section_v1(tables: RunTables) -> Finding:
    runs = tables.runs
    init = runs[K.model.init].fillna("kaiming")
    # bn and none with He init; fixup and skipinit are none with their own init.
    he = init.eq("kaiming") | runs[K.norm.kind].eq("none") & init.isin(RESIDUAL_INITS)
    sel, setting, notes = select_arms(runs, [K.model.depth], DEEP_ARMS, he)
    if sel.empty:
        return no_data(notes)
    key = K.model.depth
    pts = aggregate(sel, ["arm", key], "acc")
    pts["diverged"] = aggregate_aligned(sel, ["arm", key], "diverged", pts, "sum")
    depths = _shared(pts, key, DEEP_ARMS, "arm")
    numbers: dict[str, Any] = {"depths_with_all_arms": [int(d) for d in depths]}
    if not depths:
        notes.append(f"needs {', '.join(DEEP_ARMS)} at one depth, found {sorted(set(pts['arm']))}")
        return Finding(INCONCLUSIVE, numbers, setting=setting, notes=notes)
    depth = depths[-1]
    at = {a: point(pts, a, depth, key, "arm") for a in DEEP_ARMS}
    trains = {a: bool(at[a]["diverged"] == 0 and at[a]["mean"] >= LEARNS) for a in DEEP_ARMS}
    numbers["deciding_depth"] = int(depth)
    numbers |= {f"{a}_trains": trains[a] for a in DEEP_ARMS}
    beats = []
    for arm in ("fixup", "skipinit"):
        comp = _diff(at[arm], at["none"])
        numbers |= comparison_numbers(f"{arm}_vs_none", comp)
        beats.append(trains[arm] and comp.outcome == GREATER)
    verdict = INCONCLUSIVE
    if all(beats):
        verdict = SUPPORTED
    elif not trains["fixup"] and not trains["skipinit"]:
        verdict = NOT_SUPPORTED
    return Finding(verdict, numbers, setting=setting, notes=notes)


# The rules amended by a guard: versions 2 and 1 of each, decided by one function.
lr_claim_v2, lr_claim_v1 = _amended_sections("lr", LR_RULES, _lr_claim)
convergence_claim_v2, convergence_claim_v1 = _amended_sections(
    "convergence", CONVERGENCE_RULES, _convergence_claim
)
batch_claim_v2, batch_claim_v1 = _amended_sections("batch", BATCH_RULES, _batch_claim)
alternatives_section_v2, alternatives_section_v1 = _amended_sections(
    "alternatives", ALTERNATIVES_RULES, _alternatives_section
)
