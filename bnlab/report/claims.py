"""One function per claim: select its runs, aggregate seeds, apply a written rule.

Each function takes the tidy tables (runs, epochs) and returns a ClaimResult.
Its docstring *is* the decision rule shown in the report (formatted with the
constants below), so the rule in words and the rule in code sit side by side.

Accuracies are fractions internally; `numbers` gives them in % and differences
in percentage points (pp), with the unit in the key name.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from bnlab.report.select import STANDARD, Setting, arm_labels, linear_lr, select
from bnlab.report.stats import (
    EQUAL,
    GREATER,
    LESS,
    MIN_MARGIN,
    UNRESOLVED,
    Comparison,
    aggregate,
    all_of,
    any_of,
    compare,
    verdict_of,
)

# ----------------------------------------------------------------------------- constants

CHANCE_ACC = 0.1  # 10 classes: a diverged run scores chance wherever accuracy is averaged
LR_TRAINS_MARGIN = 0.05  # an lr "trains" if its mean accuracy is within 5 pp of the norm's best
# ... and clearly above chance: a net stuck near 10% is within 5 pp of its own best
# when its best is chance too, yet it does not train (seen with norm=none at CPU scale).
LR_LEARNS_ABOVE_CHANCE = 0.10
CONV_TARGET_FRACTION = 0.9  # target = 90% of the lower of BN's and none's best accuracy
CONV_MIN_EPOCHS = 0.5  # epochs are whole numbers: any 1-epoch difference counts at one seed
CONV_CURVE_LR = 0.1  # the lr whose training curves are drawn (nearest shared one)

SUPPORTED, NOT_SUPPORTED = "SUPPORTED", "NOT SUPPORTED"
INCONCLUSIVE, NO_DATA = "INCONCLUSIVE", "NO DATA"
DESCRIPTIVE = "DESCRIPTIVE"  # the norms section compares, it tests no claim
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NO_DATA, DESCRIPTIVE)

NORM_ORDER = ("bn", "gn", "ln", "none")
# The ICS study's noise injections: instruments, not normalisers for the norms table.
NOISE_DEVICES = ("bn_noisy", "none_noisy")
BN_NONE = ("bn", "none")
MODEL = {
    k: STANDARD[k] for k in ("model.depth", "model.residual", "model.init", "model.init_scale")
}


def _without(*keys: str) -> dict[str, Any]:
    return {k: v for k, v in STANDARD.items() if k not in keys}


# The margins as the rules quote them.
RULE_VALUES = {
    "floor": f"{100 * MIN_MARGIN:g} pp",
    "lr_margin": f"{100 * LR_TRAINS_MARGIN:g} pp",
    "learns": f"{100 * (CHANCE_ACC + LR_LEARNS_ABOVE_CHANCE):g}%",
    "chance": f"{100 * CHANCE_ACC:g}%",
    "target": f"{100 * CONV_TARGET_FRACTION:g}%",
    "min_epochs": f"{CONV_MIN_EPOCHS:g}",
    "curve_lr": f"{CONV_CURVE_LR:g}",
}
NOISE = (
    "A difference counts when it exceeds the margin: the root-sum-square of the seed "
    "standard deviations of the means it compares, and at least {floor} (also the noise "
    "assumed at a single seed). Inside the margin it is 'equal' when the margin is "
    "{floor} and 'unresolved' when seed spread widened it."
).format(**RULE_VALUES)


# Claims whose verdict compares accuracies with the shared noise rule (stats.compare);
# lr uses its own tolerance and convergence a margin in epochs, both in their rules.
ACCURACY_MARGIN_CLAIMS = ("depth", "init", "regularization", "batch", "inference")


@dataclass
class ClaimResult:
    key: str
    title: str
    claim: str
    verdict: str  # one of VERDICTS
    rule: str
    numbers: dict[str, Any]  # the figures that decided the verdict
    evidence: pd.DataFrame  # formatted for the report's table
    figures: list[str]  # keys of bnlab.report.plots.FIGURES
    setting: Setting | None = None  # dataset, preset, scale of the runs used
    notes: list[str] = field(default_factory=list)  # runs left out and why
    data: dict[str, pd.DataFrame] = field(default_factory=dict)  # numeric points for plots


Claim = Callable[[pd.DataFrame, pd.DataFrame], ClaimResult]
Fn = TypeVar("Fn", bound=Callable[..., ClaimResult])

TEXT = {
    "lr": ("Learning rate", "BN allows higher learning rates."),
    "depth": ("Depth", "BN makes deep networks trainable."),
    "convergence": ("Convergence speed", "BN speeds up convergence."),
    "init": ("Initialisation", "BN reduces sensitivity to the weight initialisation scale."),
    "regularization": ("Regularisation", "BN regularises mildly."),
    "batch": (
        "Batch size",
        "BN degrades at small batch sizes; GroupNorm and LayerNorm do not.",
    ),
    "inference": (
        "Inference statistics",
        "BN needs its running averages at inference: normalising with the statistics of "
        "small eval batches costs accuracy.",
    ),
    "norms": (
        "Normalisers side by side",
        "BN, GroupNorm, LayerNorm, no normalisation, and any other norm kind found.",
    ),
}


def rule_filler(values: dict[str, str]) -> Callable[[Fn], Fn]:
    """A decorator filling `values` into the docstring, which the report shows as the rule."""

    def fill(fn: Fn) -> Fn:
        fn.__doc__ = (fn.__doc__ or "").format(**values)
        return fn

    return fill


_rule = rule_filler(RULE_VALUES)


def rule_text(fn: Callable[..., ClaimResult]) -> str:
    """The docstring after its first line, as one paragraph."""
    body = inspect.cleandoc(fn.__doc__ or "").split("\n", 1)
    return " ".join(body[1].split()) if len(body) > 1 else ""


def _result(fn: Claim, key: str, verdict: str, **kw: Any) -> ClaimResult:
    return make_result(fn, key, TEXT[key], verdict, key in ACCURACY_MARGIN_CLAIMS, **kw)


def make_result(
    fn: Callable[..., ClaimResult],
    key: str,
    text: tuple[str, str],
    verdict: str,
    noise: bool,
    **kw: Any,
) -> ClaimResult:
    """A section's result: its (title, claim) text, its rule from `fn`'s docstring,
    followed by the shared noise rule when the verdict compares accuracies (`noise`)."""
    title, claim = text
    rule = rule_text(fn)
    if noise:
        rule = f"{rule} {NOISE}"
    kw.setdefault("numbers", {})
    kw.setdefault("evidence", pd.DataFrame())
    kw.setdefault("figures", [])
    return ClaimResult(key=key, title=title, claim=claim, verdict=verdict, rule=rule, **kw)


# ----------------------------------------------------------------------------- claims


@_rule
def lr_claim(runs: pd.DataFrame, epochs: pd.DataFrame) -> ClaimResult:
    """BN allows higher learning rates.

    Runs: ResNet-20, residual, init scale 1, augmentation, batch 128, norm bn or none,
    any optim.lr. Only learning rates tried with both norms count. An lr "trains" for a
    norm when no seed diverged there, its mean final test accuracy is at least {learns}
    (clearly above chance) and within {lr_margin} of that norm's best mean. SUPPORTED
    if BN's largest lr that trains is larger than none's; NOT SUPPORTED if it is not
    larger. INCONCLUSIVE with fewer than 2 shared learning rates, when neither norm
    trains at any, or when both train at the largest lr tried (the grid stops before
    the limit).
    """
    sel, setting, notes = select(runs, _without("optim.lr"), BN_NONE)
    if sel.empty:
        return _result(lr_claim, "lr", NO_DATA, notes=notes)
    sel = sel.assign(diverged=sel["status"].eq("diverged"))
    keys = ["norm.kind", "optim.lr"]
    counts = sel.groupby(keys).agg(runs=("run_id", "size"), diverged=("diverged", "sum"))
    accs = aggregate(sel[~sel["diverged"]], keys, "test_acc")
    pts = counts.reset_index().merge(accs, on=keys, how="left")
    shared = sorted(_values(pts, "bn", "optim.lr") & _values(pts, "none", "optim.lr"))
    pts["trains"] = np.nan
    numbers: dict[str, Any] = {"shared_lrs": shared}
    largest: dict[str, float | None] = {}
    for norm in BN_NONE:
        rows = pts["norm.kind"].eq(norm) & pts["optim.lr"].isin(shared)
        clean = pts[rows & pts["diverged"].eq(0)]
        best = clean["mean"].max() if not clean.empty else math.nan
        learns = pts["mean"] >= CHANCE_ACC + LR_LEARNS_ABOVE_CHANCE
        trains = rows & pts["diverged"].eq(0) & learns & (pts["mean"] >= best - LR_TRAINS_MARGIN)
        pts.loc[rows, "trains"] = trains[rows].astype(float)
        good = pts.loc[trains, "optim.lr"]
        largest[norm] = float(good.max()) if not good.empty else None
        numbers[f"{norm}_largest_trainable_lr"] = largest[norm]
        numbers[f"{norm}_best_acc_pct"] = _pct(best)
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
            "test acc % (not diverged)": _acc_cells(pts),
            "trains": pts["trains"].map(_yes_no),
        }
    )
    return _result(
        lr_claim,
        "lr",
        verdict,
        numbers=numbers,
        evidence=evidence,
        figures=["lr_accuracy"],
        setting=setting,
        notes=notes,
        data={"points": pts},
    )


@_rule
def depth_claim(runs: pd.DataFrame, epochs: pd.DataFrame) -> ClaimResult:
    """BN makes deep networks trainable.

    Runs: init scale 1, augmentation, batch 128, lr 0.1, norm bn or none, any depth,
    residual and plain. Final test accuracy, a diverged run counting as chance
    ({chance}), mean over seeds. For each architecture (plain, residual) with at least 2
    depths tried with both norms, compare BN with none at its deepest such depth.
    SUPPORTED if BN is ahead there for at least one architecture and behind for neither;
    NOT SUPPORTED if behind for one and ahead for none, or equal for all; INCONCLUSIVE
    if it is ahead in one and behind in the other, or unresolved, or no architecture
    has 2 depths.
    """
    fixed = _without("model.depth", "model.residual")
    sel, setting, notes = select(runs, fixed, BN_NONE)
    if sel.empty:
        return _result(depth_claim, "depth", NO_DATA, notes=notes)
    keys = ["model.residual", "model.depth", "norm.kind"]
    pts = aggregate(_with_acc(sel), keys, "acc")
    numbers: dict[str, Any] = {}
    outcomes: list[str] = []
    rows = []
    for residual in (False, True):
        arch = "residual" if residual else "plain"
        sub = pts[pts["model.residual"].eq(residual)]
        shared = sorted(_values(sub, "bn", "model.depth") & _values(sub, "none", "model.depth"))
        for depth in shared:
            bn, none = (
                _point(sub, "bn", depth, "model.depth"),
                _point(sub, "none", depth, "model.depth"),
            )
            rows.append(
                {
                    "architecture": arch,
                    "depth": depth,
                    "bn acc %": _acc_cell(bn),
                    "none acc %": _acc_cell(none),
                    "BN - none (pp)": _pp_cell(bn["mean"] - none["mean"]),
                }
            )
        if len(shared) < 2:
            if shared or not sub.empty:
                notes.append(f"{arch}: needs 2 depths tried with both norms, found {shared}")
            continue
        deep = shared[-1]
        bn, none = _point(sub, "bn", deep, "model.depth"), _point(sub, "none", deep, "model.depth")
        comp = compare(bn["mean"] - none["mean"], [bn["std"], none["std"]])
        shallow = (
            _point(sub, "bn", shared[0], "model.depth")["mean"]
            - _point(sub, "none", shared[0], "model.depth")["mean"]
        )
        outcomes.append(comp.outcome)
        numbers |= {
            f"{arch}_deepest_depth": int(deep),
            f"{arch}_bn_acc_pct": _pct(bn["mean"]),
            f"{arch}_none_acc_pct": _pct(none["mean"]),
            **_comparison(f"{arch}_bn_advantage", comp),
            f"{arch}_bn_advantage_at_depth_{int(shared[0])}_pp": _pct(shallow),
        }
    verdict = any_of(outcomes) if outcomes else INCONCLUSIVE
    return _result(
        depth_claim,
        "depth",
        verdict,
        numbers=numbers,
        evidence=pd.DataFrame(rows),
        figures=["depth_accuracy"],
        setting=setting,
        notes=notes,
        data={"points": pts},
    )


@_rule
def convergence_claim(runs: pd.DataFrame, epochs: pd.DataFrame) -> ClaimResult:
    """BN speeds up convergence.

    Runs: ResNet-20, residual, init scale 1, augmentation, batch 128, norm bn or none,
    any lr tried with both norms, with per-epoch metrics. At each such lr the target is
    {target} of the lower of BN's and none's mean best test accuracy (over runs that did
    not diverge), so it is reachable at any scale, but at least {learns} (a target at
    chance level says nothing about convergence). An lr where no run reaches the target
    carries no information and is left out. A run's epochs-to-target is the
    first epoch whose test accuracy reaches it; a run that never does counts as its
    planned epochs + 1; images = epochs x training images per epoch. SUPPORTED if BN
    needs fewer epochs than none at every shared lr; NOT SUPPORTED if none is faster
    or they are equal at some lr; otherwise INCONCLUSIVE. A difference in mean epochs
    counts when it exceeds the root-sum-square of the two seed standard deviations and
    at least {min_epochs} epoch (so one whole epoch counts at a single seed); inside
    that it is 'equal' at the floor, else 'unresolved'. Curves are drawn at the shared
    lr nearest {curve_lr}.
    """
    sel, setting, notes = select(runs, _without("optim.lr"), BN_NONE)
    if sel.empty:
        return _result(convergence_claim, "convergence", NO_DATA, notes=notes)
    curves = epochs[epochs["run_id"].isin(sel["run_id"])]
    no_curve = ~sel["run_id"].isin(curves["run_id"])
    if no_curve.any():
        notes.append(f"left out {int(no_curve.sum())} run(s) without metrics.csv")
        sel = sel[~no_curve]
    shared = sorted(_values(sel, "bn", "optim.lr") & _values(sel, "none", "optim.lr"))
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
        target = max(CONV_TARGET_FRACTION * float(bests.min()), CHANCE_ACC + LR_LEARNS_ABOVE_CHANCE)
        reach = _epochs_to(at_lr, curves, target)
        if not reach["reached"].any():
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
            f"{tag}_target_acc_pct": _pct(target),
            f"{tag}_bn_epochs": _round(bn["mean"]),
            f"{tag}_none_epochs": _round(none["mean"]),
            f"{tag}_bn_images": _images(bn["mean"], setting),
            f"{tag}_none_images": _images(none["mean"], setting),
            f"{tag}_bn_saves_epochs": _round(comp.diff),
            f"{tag}_margin_epochs": _round(comp.margin),
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
                    "epochs to target": _num_cell(point, 1)
                    + ("" if reached.get(norm, 0) == point["n"] else " (censored)"),
                    "images to target": _images(point["mean"], setting),
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
        numbers |= {"curve_lr": lr, "curve_target_acc_pct": _pct(targets[lr])}
    return _result(
        convergence_claim,
        "convergence",
        verdict,
        numbers=numbers,
        evidence=pd.DataFrame(rows),
        figures=["training_curves"] if data else [],
        setting=setting,
        notes=notes,
        data=data,
    )


@_rule
def init_claim(runs: pd.DataFrame, epochs: pd.DataFrame) -> ClaimResult:
    """BN reduces sensitivity to the weight initialisation scale.

    Runs: ResNet-20, residual, augmentation, batch 128, lr 0.1, norm bn or none, any
    model.init_scale. Final test accuracy, a diverged run counting as chance
    ({chance}), mean over seeds. Over the init scales tried with both norms (at least
    2), each norm's spread is its best mean minus its worst mean. SUPPORTED if BN's
    spread is smaller than none's by more than the margin (from the four means that
    define the two spreads); NOT SUPPORTED if it is larger or equal; INCONCLUSIVE if
    unresolved or fewer than 2 shared scales.
    """
    sel, setting, notes = select(runs, _without("model.init_scale"), BN_NONE)
    if sel.empty:
        return _result(init_claim, "init", NO_DATA, notes=notes)
    key = "model.init_scale"
    pts = aggregate(_with_acc(sel), ["norm.kind", key], "acc")
    shared = sorted(_values(pts, "bn", key) & _values(pts, "none", key))
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
                f"{norm}_spread_pp": _pct(hi["mean"] - lo["mean"]),
                f"{norm}_best_scale": float(hi[key]),
                f"{norm}_worst_scale": float(lo[key]),
            }
        spread = {n: hi["mean"] - lo["mean"] for n, (hi, lo) in extremes.items()}
        stds = [p["std"] for pair in extremes.values() for p in pair]
        comp = compare(spread["none"] - spread["bn"], stds)
        numbers |= _comparison("spread_reduction", comp)
        verdict = verdict_of(comp.outcome)
    evidence = _pivot(pts, key, "init scale")
    return _result(
        init_claim,
        "init",
        verdict,
        numbers=numbers,
        evidence=evidence,
        figures=["init_accuracy"],
        setting=setting,
        notes=notes,
        data={"points": pts},
    )


@_rule
def regularization_claim(runs: pd.DataFrame, epochs: pd.DataFrame) -> ClaimResult:
    """BN regularises mildly.

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
    unresolved.
    """
    sel, setting, notes = select(runs, _without("data.augment"), BN_NONE)
    if sel.empty:
        return _result(regularization_claim, "regularization", NO_DATA, notes=notes)
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
            f"{tag}_bn_gap_pp": _pct(bn["mean"]),
            f"{tag}_none_gap_pp": _pct(none["mean"]),
            **_comparison(f"{tag}_gap_reduction", gap),
            f"{tag}_bn_test_acc_pct": _pct(bn["mean_test_acc"]),
            f"{tag}_none_test_acc_pct": _pct(none["mean_test_acc"]),
            **_comparison(f"{tag}_test_acc_gain", test),
            f"{tag}_outcome": outcome,
        }
    if not outcomes:
        verdict = INCONCLUSIVE
        notes.append("no augmentation setting has runs of both norms")
    else:
        decisive = False not in outcomes  # without augmentation whenever those runs exist
        numbers["decided_on"] = "augmentation" if decisive else "no augmentation"
        verdict = verdict_of(outcomes[decisive])
    evidence = pd.DataFrame(
        {
            "augment": pts["data.augment"].map(_yes_no),
            "norm": pts["norm.kind"],
            "train acc %": _acc_cells(pts, "_train_acc"),
            "test acc %": _acc_cells(pts, "_test_acc"),
            "gap (pp)": _acc_cells(pts),
        }
    )
    return _result(
        regularization_claim,
        "regularization",
        verdict,
        numbers=numbers,
        evidence=evidence,
        figures=["regularization_gap"],
        setting=setting,
        notes=notes,
        data={"points": pts},
    )


@_rule
def batch_claim(runs: pd.DataFrame, epochs: pd.DataFrame) -> ClaimResult:
    """BN degrades at small batch sizes; GroupNorm and LayerNorm do not.

    Runs: ResNet-20, residual, init scale 1, augmentation, norm bn, gn or ln, any batch
    size with the linearly scaled lr (0.1 x batch/128). Final test accuracy, a diverged
    run counting as chance ({chance}), mean over seeds. Over the batch sizes tried with
    every norm present (at least 2), a norm's drop is its accuracy at the largest minus
    at the smallest. SUPPORTED if BN really degrades (its own drop exceeds the margin
    from its two means) and its drop exceeds the drop of each of GN and LN present by
    more than the margin (from the four means involved); NOT SUPPORTED if BN does not
    degrade, or its drop is smaller or equal for one of them; INCONCLUSIVE otherwise,
    or without BN and at least one of GN/LN.
    """
    fixed = {**MODEL, "data.augment": True}
    sel, setting, notes = select(runs, fixed, ("bn", "gn", "ln"), linear_lr(runs))
    if sel.empty:
        return _result(batch_claim, "batch", NO_DATA, notes=notes)
    key = "data.batch_size"
    pts = aggregate(_with_acc(sel), ["norm.kind", key], "acc")
    present = [n for n in ("bn", "gn", "ln") if n in set(pts["norm.kind"])]
    others = [n for n in present if n != "bn"]
    shared = sorted(set.intersection(*(_values(pts, n, key) for n in present)))
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
            hi, lo = _point(pts, norm, big, key), _point(pts, norm, small, key)
            drops[norm] = (hi["mean"] - lo["mean"], [hi["std"], lo["std"]])
            numbers[f"{norm}_drop_pp"] = _pct(drops[norm][0])
        # First: does BN degrade at all? Beating GN/LN's drop means nothing when
        # every norm gains accuracy at the small batch (seen at CPU scale).
        own = compare(*drops["bn"])
        numbers |= _comparison("bn_drop", own)
        outcomes = [own.outcome]
        for other in others:
            comp = compare(drops["bn"][0] - drops[other][0], drops["bn"][1] + drops[other][1])
            outcomes.append(comp.outcome)
            numbers |= _comparison(f"bn_extra_drop_vs_{other}", comp)
        numbers |= {"largest_batch": int(big), "smallest_batch": int(small)}
        verdict = all_of(outcomes)
    evidence = _pivot(pts, key, "batch")
    return _result(
        batch_claim,
        "batch",
        verdict,
        numbers=numbers,
        evidence=evidence,
        figures=["batch_accuracy"],
        setting=setting,
        notes=notes,
        data={"points": pts},
    )


@_rule
def inference_claim(runs: pd.DataFrame, epochs: pd.DataFrame) -> ClaimResult:
    """BN needs its running averages at inference.

    Runs: ResNet-20 with BN, residual, init scale 1, augmentation, linearly scaled lr,
    completed, with the bn_eval probe (probe.bn_eval_batch_sizes). For each training
    batch size: test accuracy with the running statistics, and with each eval batch's
    own statistics at each eval batch size, means over seeds. SUPPORTED if, for every
    training batch size, batch-statistics accuracy at the smallest eval batch size is
    below running-statistics accuracy by more than the margin; NOT SUPPORTED if it is
    above or equal for one; otherwise INCONCLUSIVE.
    """
    has_probe = runs.get("bn_eval.running_stats_acc", pd.Series(np.nan, index=runs.index))
    extra = linear_lr(runs) & has_probe.notna() & runs["status"].eq("completed")
    sel, setting, notes = select(runs, {**MODEL, "data.augment": True}, ("bn",), extra)
    if sel.empty:
        return _result(inference_claim, "inference", NO_DATA, notes=notes)
    prefix = "bn_eval.batch_stats_acc."
    size_cols = [c for c in sel.columns if c.startswith(prefix)]
    long = sel.melt(
        id_vars=["run_id", "data.batch_size"],
        value_vars=size_cols,
        var_name="eval_batch",
        value_name="acc",
    ).dropna(subset=["acc"])
    long["eval_batch"] = long["eval_batch"].str.removeprefix(prefix).astype(int)
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
                    "batch-stats acc %": _acc_cell(p),
                    "running-stats acc %": _acc_cell(run_pt),
                    "running - batch (pp)": _pp_cell(run_pt["mean"] - p["mean"]),
                }
            )
        smallest = sub.loc[sub["eval_batch"].idxmin()]
        comp = compare(run_pt["mean"] - smallest["mean"], [run_pt["std"], smallest["std"]])
        outcomes.append(comp.outcome)
        tag = f"train_batch_{int(train_batch)}"
        numbers |= {
            f"{tag}_running_acc_pct": _pct(run_pt["mean"]),
            f"{tag}_smallest_eval_batch": int(smallest["eval_batch"]),
            f"{tag}_batch_stats_acc_pct": _pct(smallest["mean"]),
            **_comparison(f"{tag}_running_advantage", comp),
        }
    verdict = all_of(outcomes) if outcomes else INCONCLUSIVE
    data = {"points": pts, "running": running.reset_index()}
    return _result(
        inference_claim,
        "inference",
        verdict,
        numbers=numbers,
        evidence=pd.DataFrame(rows),
        figures=["inference_accuracy"],
        setting=setting,
        notes=notes,
        data=data,
    )


@_rule
def norms_section(runs: pd.DataFrame, epochs: pd.DataFrame) -> ClaimResult:
    """The normalisers side by side (descriptive: no verdict).

    Runs: ResNet-20, residual, init scale 1, augmentation, linearly scaled lr, every
    norm kind (Ghost BN per virtual batch, Batch Renorm per warm-up; not the ICS
    study's noise injections bn_noisy/none_noisy) and batch size found. Final test
    accuracy (a diverged run counting as chance, {chance}), mean over seeds; for each
    batch size the best norm is named.
    """
    fixed = {**MODEL, "data.augment": True}
    normalisers = ~runs["norm.kind"].isin(NOISE_DEVICES)
    sel, setting, notes = select(runs, fixed, None, linear_lr(runs) & normalisers)
    if sel.empty:
        return _result(norms_section, "norms", NO_DATA, notes=notes)
    key = "data.batch_size"
    # Each Ghost BN virtual batch is its own normaliser (ghost_bn/4).
    labelled = _with_acc(sel).assign(**{"norm.kind": arm_labels(sel)})
    pts = aggregate(labelled, ["norm.kind", key], "acc")
    numbers: dict[str, Any] = {}
    for batch, sub in pts.dropna(subset=["mean"]).groupby(key):
        best = sub.loc[sub["mean"].idxmax()]
        numbers[f"batch_{int(batch)}_best_norm"] = best["norm.kind"]
        numbers[f"batch_{int(batch)}_best_acc_pct"] = _pct(best["mean"])
    return _result(
        norms_section,
        "norms",
        DESCRIPTIVE,
        numbers=numbers,
        evidence=_pivot(pts, key, "batch"),
        figures=["norms_accuracy"],
        setting=setting,
        notes=notes,
        data={"points": pts},
    )


CLAIMS: dict[str, Claim] = {
    "lr": lr_claim,
    "depth": depth_claim,
    "convergence": convergence_claim,
    "init": init_claim,
    "regularization": regularization_claim,
    "batch": batch_claim,
    "inference": inference_claim,
    "norms": norms_section,
}


def evaluate_claims(
    runs: pd.DataFrame, epochs: pd.DataFrame, keys: Iterable[str] | None = None
) -> list[ClaimResult]:
    return [CLAIMS[k](runs, epochs) for k in (keys or CLAIMS)]


# ----------------------------------------------------------------------------- helpers


def _with_acc(runs: pd.DataFrame, column: str = "test_acc", name: str = "acc") -> pd.DataFrame:
    """`name`: the final `column` accuracy, chance for a diverged run (it learned nothing
    usable)."""
    return runs.assign(**{name: runs[column].where(runs["status"].ne("diverged"), CHANCE_ACC)})


def _values(pts: pd.DataFrame, norm: str, key: str, by: str = "norm.kind") -> set[Any]:
    """The `key` values tried with `norm` (an arm label when `by` is "arm")."""
    return set(pts.loc[pts[by].eq(norm), key].dropna())


def _point(pts: pd.DataFrame, norm: str, value: Any, key: str, by: str = "norm.kind") -> pd.Series:
    return pts[pts[by].eq(norm) & pts[key].eq(value)].iloc[0]


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


def _comparison(name: str, comp: Comparison) -> dict[str, Any]:
    return {
        f"{name}_pp": _pct(comp.diff),
        f"{name}_margin_pp": _pct(comp.margin),
        f"{name}_outcome": comp.outcome,
    }


def _suffix(column: str, value: str, keys: list[str]) -> str:
    return column if column in keys else f"{column}_{value}"


def _pivot(
    pts: pd.DataFrame,
    key: str,
    label: str,
    by: str = "norm.kind",
    order: Sequence[str] = NORM_ORDER,
) -> pd.DataFrame:
    """Norms (or arms: `by`) as rows, in `order` then by name; `key` values as columns;
    "mean ± std" cells (n in the header)."""

    def rank(name: str) -> tuple[int, str]:
        return (order.index(name) if name in order else len(order), name)

    rows = sorted(set(pts[by]), key=rank)
    table = pd.DataFrame({"norm" if by == "norm.kind" else by: rows})
    for value in sorted(set(pts[key])):
        sub = pts[pts[key].eq(value)].set_index(by)
        table[f"{label} {value:g} acc %"] = [
            _acc_cell(sub.loc[n]) if n in sub.index else "–" for n in rows
        ]
    return table


def _pct(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(100 * float(x), 2)


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 2)


def _images(epochs: float, setting: Setting | None) -> int | None:
    if setting is None or not setting.train_images or math.isnan(epochs):
        return None
    return int(round(epochs * setting.train_images))


def _acc_cell(p: pd.Series, suffix: str = "") -> str:
    mean, std, n = p[f"mean{suffix}"], p[f"std{suffix}"], p.get("n", 1)
    if pd.isna(mean):
        return "–"
    if n > 1 and not pd.isna(std):
        return f"{100 * mean:.1f} ± {100 * std:.1f} (n={int(n)})"
    return f"{100 * mean:.1f}"


def _acc_cells(pts: pd.DataFrame, suffix: str = "") -> list[str]:
    return [_acc_cell(p, suffix) for _, p in pts.iterrows()]


def _num_cell(p: pd.Series, digits: int) -> str:
    if p["n"] > 1 and not pd.isna(p["std"]):
        return f"{p['mean']:.{digits}f} ± {p['std']:.{digits}f}"
    return f"{p['mean']:.{digits}f}"


def _pp_cell(diff: float) -> str:
    return "–" if pd.isna(diff) else f"{100 * diff:+.1f}"


def _yes_no(v: Any) -> str:
    return "–" if pd.isna(v) else ("yes" if v else "no")


# Outcome names re-exported for tests and the renderer.
OUTCOMES = (GREATER, LESS, EQUAL, UNRESOLVED)
