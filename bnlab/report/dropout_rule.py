"""Issue 24: the dropout claim (rule v1) and convergence speed in optimiser steps (rule v4).

Two sections, registered like the claims (bnlab.report.core) and decided with the same
intervals (bnlab.report.intervals):

- convergence:  "BN speeds up convergence", version 4 (version 3 stays computable in
                claims.py): the optimiser steps each arm takes to a fixed accuracy
                that every seed of both arms reaches.
- dropout:      "BN reduces the need for dropout": without augmentation, dropout's gain
                (accuracy with model.dropout = p minus without) for a no-BN arm minus
                its gain for BN.

What they share, as the sequence rules do (bnlab.report.sequence):

- runs at the reference batch only: the largest data.batch_size selected (the runs at
  other batches are the small-batch claim's);
- every point (an arm, for dropout an arm at one dropout value) at its own lr, chosen
  leave-one-seed-out (`own_lr`), and a best lr at an edge of its ladder blocks a
  verdict that a wider ladder could overturn (`decide`);
- a comparison with an arm that does not train is not measured; a run that diverged or
  finished stuck at chance (bnlab.report.points.outcome) never counts as trained.

`own_lr` is bnlab.report.own_lr's choice (shared with the sequence, lr and depth rules),
its points `Tuned`: training judged on test accuracy, the edge worded as a ladder.

Accuracies are fractions internally; `numbers` gives them in % and differences in pp.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bnlab.report.arms import AGAINST, BN, NO_BN_ARMS, TRAINS_AT, in_pp, select_arms
from bnlab.report.cells import num_ci, pct, pct_ci
from bnlab.report.claims import RULE_VALUES, with_curves
from bnlab.report.core import (
    NOT_SUPPORTED,
    SUPPORTED,
    ClaimResult,
    Finding,
    Rule,
    Verdict,
    figure,
    headline,
    no_data,
    section,
)
from bnlab.report.figure_kit import (
    ONE_PANEL,
    arm_label,
    chance_line,
    finish,
    legend,
    new_figure,
    norm_colour,
    norms_in,
)
from bnlab.report.intervals import (
    MIN_SEEDS,
    Effect,
    Estimate,
    contrast,
    difference,
    estimate,
    verdict_row,
)
from bnlab.report.keys import DIVERGED, EPOCH, RUN_ID, TEST_ACC, TRAIN_IMAGES, TRAIN_LOSS, K
from bnlab.report.load import RunTables
from bnlab.report.own_lr import EdgeWords, Point
from bnlab.report.points import CHANCE_ACC, STUCK, STUCK_BELOW, TRAINED, epochs_to, outcome

# ----------------------------------------------------------------------------- constants

DROPOUT_MIN_PP = 1.0  # dropout helps the no-BN arm by at least 1 pp more than it helps BN
# Convergence targets: fixed accuracies, 20% to 90% in 5 pp steps. 20% is clearly above
# chance (points.LEARNS); the largest one every seed of both arms reaches is used.
TARGET_LADDER = tuple(round(0.20 + 0.05 * i, 2) for i in range(15))
MIN_EPOCH_FRACTION = 0.5  # convergence minimum: half an epoch's optimiser steps
# The new suite's setting, to quote the convergence minimum in steps.
EXAMPLE_IMAGES, EXAMPLE_BATCH = 5_000, 64

VALUES = {
    **RULE_VALUES,
    "stuck": f"{100 * STUCK_BELOW:g}%",
    "dropout_min": f"{DROPOUT_MIN_PP:g} pp",
    "ladder": (
        f"the fixed ladder {100 * TARGET_LADDER[0]:g}%, {100 * TARGET_LADDER[1]:g}%, ..., "
        f"{100 * TARGET_LADDER[-1]:g}% (5 pp apart)"
    ),
    "lowest": f"{100 * TARGET_LADDER[0]:g}%",
    "min_fraction": "half" if MIN_EPOCH_FRACTION == 0.5 else f"{MIN_EPOCH_FRACTION:g}",
    "example": (
        f"{MIN_EPOCH_FRACTION * (EXAMPLE_IMAGES // EXAMPLE_BATCH):g} at "
        f"{EXAMPLE_IMAGES:,} images and batch {EXAMPLE_BATCH}"
    ),
}
TUNING = (
    "A point's lr is its own and is chosen without the seed it is measured on: for each "
    "seed, the lr with the highest mean final test accuracy over the other seeds (a "
    "diverged run counting as chance, {chance}; ties to the smaller lr; with one seed, its "
    "own best), and that seed's run at that lr gives its value, so no run both picks its "
    "lr and measures it. The point's best lr, shown, is the highest mean over all seeds; "
    "when it is the smallest or the largest lr tried with that point (or the only one), a "
    "verdict that this point being under-tuned would overturn is not given: INCONCLUSIVE, "
    "extend its ladder. An arm trains when its best mean final test accuracy reaches "
    "{trains}; a comparison with an arm that does not is not measured (INCONCLUSIVE, left "
    "out of the headline). A run that diverged, or finished below {stuck} ('stuck'), did "
    "not train; the tables count both."
).format(**VALUES)
DECISION = (
    "Effects have 95% intervals over seeds (Student t, Welch-Satterthwaite across the "
    "points combined); fewer than {seeds} seeds in a point is exploratory and never "
    "decides. A comparison is SUPPORTED when its interval excludes zero in the claimed "
    "direction and the effect reaches its minimum, NOT SUPPORTED when the whole interval "
    "lies below the minimum, INCONCLUSIVE otherwise. The headline is the common verdict "
    "of the measured, unblocked comparisons: MIXED when they disagree, INCONCLUSIVE when "
    "none decides."
).format(**VALUES)
VALUES |= {"tuning": TUNING, "decision": DECISION}


# ----------------------------------------------------------------------------- points


# The edge as this module's rules word it: the lrs tried with a point are its ladder.
LADDER_EDGES = EdgeWords(
    only="best lr is the only lr tried ({lr})",
    bottom="best lr at the bottom of its ladder ({lr})",
    top="best lr at the top of its ladder ({lr})",
)


@dataclass(frozen=True)
class Tuned(Point):
    """One point (an arm, or an arm at one dropout value) at its own lr (`own_lr`), its
    `fit` its final test accuracy; label e.g. "Fixup (no norm), dropout 0.3"."""

    EDGES: ClassVar[EdgeWords] = LADDER_EDGES

    @property
    def best_mean(self) -> float:
        """The highest mean final test accuracy over the lrs (at `best_lr`)."""
        return self.best_fit

    @property
    def lr_used(self) -> str:
        """The lr the seeds were measured at: one value, or one per seed."""
        lrs = [f"{v:g}" for v in self.runs[K.optim.lr]]
        return lrs[0] if len(set(lrs)) == 1 else ", ".join(lrs)

    def failed(self, kind: str) -> str:
        """How many of the measured runs ended `kind` (DIVERGED or STUCK), "k/n"."""
        return f"{int(outcome(self.runs).eq(kind).sum())}/{len(self.runs)}"


def own_lr(part: pd.DataFrame, arm: str, label: str) -> Tuned:
    """The Tuned point of `part` (one point's runs, with `acc`): each seed at the lr with
    the best mean `acc` over the other seeds (its own best with one seed); ties go to
    the smaller lr."""
    return Tuned.tuned(part, arm, label, fit="acc")


def did_not_train(p: Tuned) -> str:
    return (
        f"{p.label} does not train (best mean {100 * p.best_mean:.1f}% < "
        f"{100 * TRAINS_AT:g}%): not measured"
    )


def decide(
    against: str, effect: Effect, terms: Sequence[tuple[int, Tuned]], minimum: float, unit: str
) -> Verdict:
    """A verdict row for `effect` (claimed positive) and its `minimum`. `terms`: (sign,
    point) for each point combined, the sign with which the point's *performance*
    enters the effect: a point at an edge of its lr ladder blocks a verdict that its
    being better tuned would overturn."""
    row = verdict_row(against, effect, minimum, unit)
    if row.verdict not in (SUPPORTED, NOT_SUPPORTED):
        return row
    overturning = -1 if row.verdict == SUPPORTED else 1
    for sign, p in terms:
        if sign == overturning and p.edge:
            why = f"{p.label}: {p.edge}: extend it (a wider ladder could overturn this)"
            return verdict_row(against, effect, minimum, unit, why)
    return row


def at_reference_batch(sel: pd.DataFrame, notes: list[str]) -> tuple[pd.DataFrame, int]:
    """The runs at the largest batch size selected (the reference batch)."""
    batch = int(sel[K.data.batch_size].max())
    other = sel[K.data.batch_size].ne(batch)
    if other.any():
        notes.append(
            f"left out {int(other.sum())} run(s) at a batch size below the reference batch "
            f"{batch} (the small-batch claim's)"
        )
    return sel[~other], batch


def dropout_of(runs: pd.DataFrame) -> pd.Series:
    """model.dropout per run (0 where a run predates the key: it had no dropout)."""
    col = runs.get(K.model.dropout, pd.Series(0.0, index=runs.index))
    return pd.to_numeric(col, errors="coerce").fillna(0.0).astype(float)


def failure_cells(p: Tuned) -> dict[str, str]:
    return {"diverged": p.failed(DIVERGED), "stuck": p.failed(STUCK)}


# ----------------------------------------------------------------------------- convergence


@section(
    "convergence",
    "Convergence speed",
    "BN speeds up convergence.",
    Rule(
        """
        Runs: ResNet-20, residual, init scale 1, augmentation, no dropout, at the
        reference batch B (the largest data.batch_size among the selected runs; runs at
        other batches are left out), with per-epoch metrics, every lr tried; arms bn,
        fixup, skipinit and none (He init). A point is one arm. {tuning} A run's epochs to
        an accuracy: where its per-epoch test accuracy (on the fixed evaluation subset, if
        the runs used one) first reaches it, interpolated linearly between epochs (epoch 0
        counting as chance); its steps to it: those epochs times the optimiser steps per
        epoch, floor(training images / B) (training drops the last partial batch).
        Against an arm, the target is a fixed accuracy both arms reach: the largest of
        {ladder} that every seed's measured run of both arms reaches (a diverged or stuck
        run reaches none); without one (some run never reaches {lowest}) the comparison
        is not measured. The effect is the arm's mean steps to the target minus BN's
        (steps), minimum {min_fraction} an epoch's steps (floor(training images / B) / 2:
        {example}). {decision}
        """,
        VALUES,
        version=4,
    ),
    figures=("convergence_steps", "training_curves"),
)
def convergence_steps_claim(tables: RunTables) -> Finding:
    sel, setting, notes = select_arms(
        tables.runs,
        [K.optim.lr, K.data.batch_size],
        (BN, *NO_BN_ARMS),
        dropout_of(tables.runs).eq(0.0),
    )
    sel, curves = with_curves(sel, tables.epochs, notes)
    if sel.empty or BN not in set(sel["arm"]):
        return no_data(notes)
    sel, batch = at_reference_batch(sel, notes)
    per_epoch = int(sel[TRAIN_IMAGES].mode().iloc[0]) // batch
    minimum = MIN_EPOCH_FRACTION * per_epoch
    points = {arm: own_lr(part, arm, arm_label(arm)) for arm, part in sel.groupby("arm")}
    bn = points[BN]
    numbers: dict[str, Any] = {
        "reference_batch": batch,
        "steps_per_epoch": per_epoch,
        "minimum_steps": minimum,
    }
    numbers |= {f"{a}_best_lr": p.best_lr for a, p in points.items()}
    rows: list[Verdict] = []
    reach: list[dict[str, Any]] = []
    for arm in [a for a in NO_BN_ARMS if a in points]:
        p, against = points[arm], AGAINST[arm]
        untrained = [t for t in (bn, p) if not t.trained]
        target, why = common_target((bn, p), curves)
        if untrained or target is None:
            why = did_not_train(untrained[0]) if untrained else why
            rows.append(verdict_row(against, None, minimum, "steps", why))
            reach += [reach_row(against, t, None, None) for t in (bn, p)]
            continue
        steps = {t.arm: steps_to(t, curves, target, per_epoch) for t in (bn, p)}
        effect = difference(steps[arm], steps[BN])
        # Slower is worse: the arm's performance lowers its steps, so enters with -1.
        rows.append(decide(against, effect, [(1, bn), (-1, p)], minimum, "steps"))
        numbers |= {
            f"{arm}_target_acc_pct": pct(target),
            f"{arm}_steps_to_target": num_ci(steps[arm]),
            f"bn_steps_to_target_vs_{arm}": num_ci(steps[BN]),
        }
        reach += [reach_row(against, t, target, steps[t.arm]) for t in (bn, p)]
    targets = {r["target"] for r in reach if r["target"] is not None}
    if len(targets) == 1:  # one target line for the per-epoch curves (training_curves)
        numbers["curve_target_acc_pct"] = pct(targets.pop())
    numbers["curve_lr"] = "each arm at its own lr"
    data = curve_data(points.values(), curves, per_epoch) | {"reach": pd.DataFrame(reach)}
    evidence = convergence_evidence(reach, points)
    return Finding(headline(rows), numbers, evidence, setting, notes, data, None, rows)


def common_target(points: Sequence[Tuned], curves: pd.DataFrame) -> tuple[float | None, str]:
    """The largest target of the ladder that every measured run of `points` reaches (a
    diverged or stuck run reaches none), or None and why not."""
    peaks = []
    for p in points:
        ok = outcome(p.runs).eq(TRAINED)
        if not ok.all():
            return None, (
                f"{p.label}: {int((~ok).sum())} of {len(ok)} measured run(s) diverged or "
                f"stuck, so no target is reached by every seed: not measured"
            )
        mine = curves[curves[RUN_ID].isin(p.runs[RUN_ID])]
        peak = float(mine.groupby(RUN_ID)[TEST_ACC].max().min())
        if peak < TARGET_LADDER[0]:
            return None, (
                f"{p.label}: a seed's run peaks at {100 * peak:.1f}%, below the lowest "
                f"target ({100 * TARGET_LADDER[0]:g}%): not measured"
            )
        peaks.append(peak)
    return max(t for t in TARGET_LADDER if t <= min(peaks)), ""


def steps_to(p: Tuned, curves: pd.DataFrame, target: float, per_epoch: int) -> Estimate:
    """The optimiser steps each measured run of `p` takes to `target`."""
    return estimate(epochs_to(p.runs, curves, target)["epochs"] * per_epoch)


def reach_row(
    against: str, p: Tuned, target: float | None, steps: Estimate | None
) -> dict[str, Any]:
    nan = math.nan
    return {
        "against": against,
        "arm": p.arm,
        "target": target,
        "mean": steps.mean if steps else nan,
        "low": steps.low if steps else nan,
        "high": steps.high if steps else nan,
        "n": steps.n if steps else 0,
        "cell": num_ci(steps) if steps else "–",
    }


def curve_data(
    points: Iterable[Tuned], curves: pd.DataFrame, per_epoch: int
) -> dict[str, pd.DataFrame]:
    """The measured runs' per-epoch curves (runs that trained; with `steps` and the arm
    as norm.kind, as training_curves reads them) and the runs that did not train."""
    trained, failed = [], []
    for p in points:
        kind = outcome(p.runs)
        ids = p.runs.loc[kind.eq(TRAINED), RUN_ID]
        mine = curves[curves[RUN_ID].isin(ids)]
        trained.append(mine.assign(**{K.norm.kind: p.arm, "steps": mine[EPOCH] * per_epoch}))
        for run_id, how in zip(p.runs[RUN_ID], kind, strict=True):
            if how != TRAINED:
                last = curves.loc[curves[RUN_ID].eq(run_id), EPOCH].max()
                failed.append({"arm": p.arm, "outcome": how, "steps": last * per_epoch})
    columns = [RUN_ID, EPOCH, TEST_ACC, TRAIN_LOSS, K.norm.kind, "steps"]
    return {
        "curves": pd.concat(trained, ignore_index=True).reindex(columns=columns),
        "failed": pd.DataFrame(failed, columns=["arm", "outcome", "steps"]),
    }


def convergence_evidence(reach: list[dict[str, Any]], points: dict[str, Tuned]) -> pd.DataFrame:
    rows = []
    for r in reach:
        p = points[r["arm"]]
        rows.append(
            {
                "against": r["against"],
                "arm": arm_label(p.arm),
                "lrs tried": ", ".join(f"{v:g}" for v in p.grid),
                "lr used": p.lr_used + (" (edge)" if p.edge else ""),
                "final test acc % [95% CI]": pct_ci(p.acc),
                **failure_cells(p),
                "target acc %": "–" if r["target"] is None else f"{100 * r['target']:g}",
                "steps to target [95% CI]": r["cell"],
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- dropout


@section(
    "dropout",
    "Dropout",
    "BN reduces the need for dropout.",
    Rule(
        """
        Runs: ResNet-20, residual, init scale 1, without augmentation (data.augment false:
        a net that can overfit, where dropout can help; runs with augmentation are
        ignored), at the reference batch (the largest data.batch_size among the selected
        runs; runs at other batches are left out), every lr tried; arms bn and the no-BN
        arms fixup, skipinit and none (He init), each with model.dropout 0 (no dropout
        layer) and with p, the largest model.dropout above 0 tried (dropout before the
        classifier; runs at other values are left out). A point is one arm at one dropout
        value. {tuning} Here an arm trains when its point without dropout does (failing
        to train with dropout is dropout's cost, and counts). An arm's gain from dropout
        is its final test accuracy with dropout p minus without (pp, each point at its own
        lr). The effect against a no-BN arm is its gain minus BN's gain (pp, from the four
        points), minimum {dropout_min}: BN reduces the need for dropout when dropout helps
        the arm without BN by more than it helps BN. {decision}
        """,
        VALUES,
        version=1,
    ),
    figures=("dropout_gain",),
)
def dropout_claim(tables: RunTables) -> Finding:
    runs = tables.runs
    no_aug = runs[K.data.augment].eq(False)
    sel, setting, notes = select_arms(
        runs, [K.optim.lr, K.data.batch_size, K.data.augment], (BN, *NO_BN_ARMS), no_aug
    )
    augmented = int((dropout_of(runs).gt(0) & ~no_aug).sum())
    if augmented:
        notes.append(f"ignored {augmented} run(s) with dropout and augmentation")
    if sel.empty or BN not in set(sel["arm"]):
        return no_data(notes)
    sel, batch = at_reference_batch(sel, notes)
    sel = sel.assign(dropout=dropout_of(sel))
    tried = sorted(set(sel.loc[sel["dropout"].gt(0), "dropout"]))
    if not tried:
        return no_data(notes + ["no run with model.dropout above 0 without augmentation yet"])
    p = tried[-1]
    other = ~sel["dropout"].isin([0.0, p])
    if other.any():
        notes.append(f"left out {int(other.sum())} run(s) at a dropout other than 0 and {p:g}")
        sel = sel[~other]
    points = {
        (arm, d): own_lr(part, arm, f"{arm_label(arm)}, dropout {d:g}")
        for (arm, d), part in sel.groupby(["arm", "dropout"], sort=True)
    }
    numbers: dict[str, Any] = {"reference_batch": batch, "dropout_p": p}
    for (arm, d), pt in points.items():
        numbers[f"{arm}_dropout_{d:g}_acc_pct"] = pct(pt.acc.mean)
        numbers[f"{arm}_dropout_{d:g}_best_lr"] = pt.best_lr
    gains = {arm: gain(points, arm, p) for arm in (BN, *NO_BN_ARMS)}
    numbers |= {f"{a}_gain_pp": round(g.value, 2) for a, g in gains.items() if g is not None}
    arms = set(sel["arm"])
    rows = [dropout_row(points, arm, p) for arm in NO_BN_ARMS if arm in arms]
    data = {"gains": gain_table(points, gains, p)}
    evidence = dropout_evidence(points, gains, p)
    return Finding(headline(rows), numbers, evidence, setting, notes, data, None, rows)


def gain(points: dict[tuple[str, float], Tuned], arm: str, p: float) -> Effect | None:
    """Dropout's gain for `arm`: accuracy with dropout p minus without (pp)."""
    with_p, without = points.get((arm, p)), points.get((arm, 0.0))
    if with_p is None or without is None:
        return None
    return in_pp(difference(with_p.acc, without.acc))


def dropout_row(points: dict[tuple[str, float], Tuned], arm: str, p: float) -> Verdict:
    against = AGAINST[arm]
    keys = [(BN, 0.0), (BN, p), (arm, 0.0), (arm, p)]
    if any(k not in points for k in keys):
        needs = f"needs bn and {arm}, each without dropout and with dropout {p:g}"
        return verdict_row(against, None, DROPOUT_MIN_PP, "pp", needs)
    untrained = [points[a, 0.0] for a in (BN, arm) if not points[a, 0.0].trained]
    if untrained:
        return verdict_row(against, None, DROPOUT_MIN_PP, "pp", did_not_train(untrained[0]))
    # Each point's sign in the effect: the arm's gain minus BN's.
    signs = {(arm, p): 1, (arm, 0.0): -1, (BN, p): -1, (BN, 0.0): 1}
    terms = [(s, points[k]) for k, s in signs.items()]
    effect = in_pp(contrast([(float(s), t.acc) for s, t in terms]))
    return decide(against, effect, terms, DROPOUT_MIN_PP, "pp")


def gain_table(
    points: dict[tuple[str, float], Tuned], gains: dict[str, Effect | None], p: float
) -> pd.DataFrame:
    """Per arm with both points: its gain (pp) with interval, for the figure."""
    rows = []
    for arm, g in gains.items():
        if g is None:
            continue
        both = (points[arm, 0.0], points[arm, p])
        rows.append(
            {
                "arm": arm,
                "mean": g.value,
                "low": g.low,
                "high": g.high,
                "n": min(g.seeds),
                "trained": points[arm, 0.0].trained,
                "diverged": sum(int(outcome(t.runs).eq(DIVERGED).sum()) for t in both),
                "stuck": sum(int(outcome(t.runs).eq(STUCK).sum()) for t in both),
            }
        )
    columns = ["arm", "mean", "low", "high", "n", "trained", "diverged", "stuck"]
    return pd.DataFrame(rows, columns=columns).assign(dropout=p)


def dropout_evidence(
    points: dict[tuple[str, float], Tuned], gains: dict[str, Effect | None], p: float
) -> pd.DataFrame:
    """One row per arm and dropout value: its lr, accuracy, failed runs, and the gain."""
    order = {a: i for i, a in enumerate((BN, *NO_BN_ARMS))}
    rows = []
    for (arm, d), pt in sorted(points.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        g = gains.get(arm)
        cell = gain_cell(g) if d == p and g is not None else "–"
        rows.append(
            {
                "arm": arm_label(arm),
                "dropout": f"{d:g}",
                "lrs tried": ", ".join(f"{v:g}" for v in pt.grid),
                "lr used": pt.lr_used + (" (edge)" if pt.edge else ""),
                "test acc % [95% CI]": pct_ci(pt.acc),
                **failure_cells(pt),
                "gain pp [95% CI]": cell,
            }
        )
    return pd.DataFrame(rows)


def gain_cell(g: Effect) -> str:
    if math.isnan(g.low):
        return f"{g.value:+.1f}"
    return f"{g.value:+.1f} [{g.low:+.1f}, {g.high:+.1f}]"


# ----------------------------------------------------------------------------- figures


@figure("convergence_steps")
def convergence_steps(result: ClaimResult) -> Figure:
    curves, reach, failed = result.data["curves"], result.data["reach"], result.data["failed"]
    fig = Figure(figsize=(ONE_PANEL[0], ONE_PANEL[1] + 1.0), layout="constrained")
    acc_ax, strip = fig.subplots(2, 1, sharex=True, height_ratios=(5, 1))
    for arm in norms_in(curves):
        steps_band(acc_ax, curves[curves[K.norm.kind].eq(arm)], arm)
    # No comparison measured (e.g. BN alone): no target column, nothing to mark.
    measured = reach.dropna(subset=["target"]) if "target" in reach else None
    groups = measured.groupby("target", sort=True) if measured is not None else []
    for target, part in groups:
        names = ", ".join(dict.fromkeys(part["against"]))
        label = f"target {100 * target:g}% ({names})"
        acc_ax.axhline(100 * target, color="0.3", ls="--", lw=1, label=label)
        for i, (_, r) in enumerate(part.drop_duplicates(["arm"]).iterrows()):
            steps_mark(acc_ax, r, 100 * target + 0.8 * i)
    chance_line(acc_ax)
    acc_ax.set_xlim(left=0)
    acc_ax.set_ylim(0, 100)
    acc_ax.set_ylabel("test accuracy (%), mean ± std over seeds\n(runs that trained)")
    acc_ax.set_title(
        "marks: mean steps to each target, 95% interval (hollow: < 3 seeds)", fontsize=9
    )
    legend(acc_ax, loc="upper center", ncols=2)
    failure_strip(strip, failed)
    strip.set_xlabel("optimiser steps (each arm at its own lr, reference batch)")
    return finish(fig, result, "test accuracy vs optimiser steps")


def steps_band(ax: Axes, curves: pd.DataFrame, arm: str) -> None:
    """Mean test accuracy over seeds per epoch, against steps, with a ±std band; from
    chance at step 0, as the steps to a target are interpolated."""
    stats = curves.groupby("steps")[TEST_ACC].agg(["mean", "std"]).reset_index()
    start = pd.DataFrame({"steps": [0], "mean": [CHANCE_ACC], "std": [0.0]})
    stats = pd.concat([start, stats], ignore_index=True)
    mean, std = 100 * stats["mean"], 100 * stats["std"].fillna(0)
    n = curves[RUN_ID].nunique()
    colour = norm_colour(arm)
    label = f"{arm_label(arm)} ({n} seed{'s' if n != 1 else ''})"
    ax.plot(stats["steps"], mean, color=colour, marker="o", ms=3, label=label)
    ax.fill_between(stats["steps"], mean - std, mean + std, color=colour, alpha=0.2, lw=0)


def steps_mark(ax: Axes, r: pd.Series, y: float) -> None:
    """One arm's mean steps to a target, with its 95% interval."""
    half = 0.0 if pd.isna(r["high"]) else float(r["high"] - r["mean"])
    hollow = int(r["n"]) < MIN_SEEDS
    colour = norm_colour(r["arm"])
    ax.errorbar(
        [r["mean"]],
        [y],
        xerr=[[half], [half]],
        fmt="D",
        color=colour,
        mfc="white" if hollow else colour,
        ms=6,
        capsize=3,
    )


def failure_strip(ax: Axes, failed: pd.DataFrame) -> None:
    """Measured runs that diverged or got stuck, off the accuracy axis: a mark at the
    last step each one ran, in its arm's colour."""
    rows = {DIVERGED: 1, STUCK: 0}
    for (arm, how), part in failed.groupby(["arm", "outcome"], sort=True):
        jitter = np.linspace(-0.15, 0.15, len(part))
        ax.plot(part["steps"], rows[how] + jitter, "x", color=norm_colour(arm), ms=7, mew=2)
    ax.set_yticks([0, 1], ["stuck", "diverged"])
    ax.set_ylim(-0.6, 1.6)
    ax.grid(alpha=0.3, axis="x")
    if failed.empty:
        ax.text(0.5, 0.5, "none", transform=ax.transAxes, ha="center", va="center", fontsize=8)


@figure("dropout_gain")
def dropout_gain(result: ClaimResult) -> Figure:
    gains = result.data["gains"]
    fig, ax = new_figure(ONE_PANEL)
    names = []
    for i, (_, r) in enumerate(gains.iterrows()):
        failed = f"\nmeasured: {int(r['diverged'])} diverged, {int(r['stuck'])} stuck"
        if not r["trained"]:
            names.append(f"{arm_label(r['arm'])}\n(does not train){failed}")
            continue
        names.append(f"{arm_label(r['arm'])}{failed}")
        half = 0.0 if pd.isna(r["high"]) else float(r["high"] - r["mean"])
        colour = norm_colour(r["arm"])
        ax.errorbar(
            [i],
            [r["mean"]],
            yerr=[[half], [half]],
            fmt="o",
            color=colour,
            mfc="white" if int(r["n"]) < MIN_SEEDS else colour,
            ms=8,
            capsize=4,
        )
        ax.annotate(
            f"{r['mean']:+.1f}",
            (i, r["mean"] + half),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_xlim(-0.6, max(len(names), 1) - 0.4)
    ax.grid(alpha=0.3, axis="y")
    ax.set_ylabel(
        "gain from dropout (pp): final test accuracy with\n"
        "dropout minus without, 95% interval (hollow: < 3 seeds)"
    )
    p = result.numbers.get("dropout_p")
    what = f"dropout {p:g}" if isinstance(p, int | float) else "dropout"
    return finish(fig, result, f"gain from {what} per arm, each at its own lr, no augmentation")
