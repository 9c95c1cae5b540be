"""The lr claim, rule version 4 (issue 24): "BN allows higher learning rates".

Ioffe & Szegedy (2015) claim it; Bjorck et al. (2018) measure it as the largest lr at
which a net still trains. Decided per arm from its runs at the reference batch, against
three nets without BN: Fixup and SkipInit (does BN do more than a good init?) and the
He-init net (the naive "without BN"). Each arm keeps its own window of lrs on the x2
lattice, and two things are compared per arm:

- the largest lr that trains (a run that diverged or finished stuck at chance,
  `points.outcome`, did not train), per seed, in log2 steps;
- the accuracy each arm reaches at its own best lr, picked leave-one-out over seeds
  (`own_lr.own_lr`).

A limit measured at the edge of a window is censored: the verdict a wider window could
overturn is withheld, and the row says which way to extend the window. The headline is
`core.headline`: the measured comparisons must agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bnlab.report.arms import AGAINST, BN, NO_BN_ARMS, in_pp, select_arms
from bnlab.report.cells import pct, pct_ci, round2
from bnlab.report.claims import RULE_VALUES
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
from bnlab.report.figure_kit import arm_label, chance_line, finish, legend, log_x, norm_colour
from bnlab.report.intervals import MIN_SEEDS, Estimate, difference, estimate, verdict_row
from bnlab.report.keys import DIVERGED, TEST_ACC, K
from bnlab.report.load import RunTables
from bnlab.report.own_lr import EdgeWords, Point, edge_of, own_lr
from bnlab.report.points import STUCK, STUCK_BELOW, TRAINED, outcome
from bnlab.report.select import Setting

LR_MIN_STEPS = 1.0  # BN's largest trainable lr at least one x2 step above the arm's
ACC_MIN_PP = 1.0  # BN's accuracy at its own best lr at least 1 pp above the arm's
LR_UNIT = "log2 lr"
ARMS = (BN, *NO_BN_ARMS)
NAMES = {BN: "BN", "fixup": "Fixup", "skipinit": "SkipInit", "none": "the He-init net"}

VALUES = {
    **RULE_VALUES,
    "stuck": f"{100 * STUCK_BELOW:g}%",
    "lr_min": f"{LR_MIN_STEPS:g}",
    "acc_min": f"{ACC_MIN_PP:g} pp",
}
LR_RULE = Rule(
    """
    Runs: ResNet-20, residual, init scale 1, augmentation, in one setting (dataset,
    preset, epochs, training images, lr schedule and warm-up: every arm trains with the
    same schedule, so the same warm-up), at the reference batch: the largest
    data.batch_size among these runs (runs at smaller batches are the small-batch
    claim's and are left out). Arms: bn; fixup and skipinit (no norm, each residual
    branch starting at zero: does BN do more than a good init?); none (He init, the
    naive net without a norm: the claim's 'without BN'). Each arm has its own window:
    the lrs tried with it. A run trains when it neither diverged nor got stuck (finished
    with a final test accuracy below {stuck}; chance is {chance}): a stuck run never
    counts as trained. For each arm and seed, its largest trainable lr is the largest lr
    tried with that seed at which the run trains. Against each no-BN arm, two
    comparisons. (1) Largest trainable lr: the effect is the mean over seeds of log2 of
    BN's largest trainable lr minus the same mean for the arm (in x2 steps; 2^effect is
    the ratio of their geometric means), minimum {lr_min} step (a factor of 2). It is
    not measured when no seed of a side trains at any lr tried (the row counts that
    side's diverged and stuck runs). The effect is shown but decides nothing
    (INCONCLUSIVE) when some seed of a side trains at no lr tried, or when a seed's
    smallest lr tried diverges (its limit lies below the window): extend that window
    down; when a seed of BN trains at the largest lr it tried (BN's limit is only a
    lower bound: extend BN's window up) unless the comparison is SUPPORTED anyway; when
    a seed of the arm trains at the largest lr it tried (the arm's limit is only a lower
    bound) unless the comparison is NOT SUPPORTED anyway. (2) Accuracy, each arm at its
    own best lr: each seed's final test accuracy (a diverged run counting as chance) at
    the lr with the highest mean over the other seeds (its own best with one seed; ties
    go to the smaller lr), so no run both picks its lr and measures it; the effect is
    BN's mean minus the arm's (pp), minimum {acc_min}. Not measured when a side trains
    at no lr tried; shown but undecided when a side's best lr (the highest mean over all
    seeds) is the smallest or largest lr of its window and a wider window could
    overturn the verdict (the arm's edge for SUPPORTED, BN's for NOT SUPPORTED, either
    for an undecided comparison). Each comparison is SUPPORTED when its 95% interval
    (Student t over seeds, Welch-Satterthwaite for the two sides) lies above zero and
    the effect reaches its minimum, NOT SUPPORTED when the whole interval lies below the
    minimum, INCONCLUSIVE otherwise; with fewer than {seeds} seeds on a side it is
    exploratory and never decides. The headline is decided by the largest-trainable-lr
    comparisons (1) alone -- the claim is about which lrs train; the accuracy rows (2)
    are shown beside them and decide nothing in it -- counting only the measured ones
    (an effect with an interval, nothing withholding it): SUPPORTED or NOT SUPPORTED
    when all of them say so, MIXED when they disagree (an undecided one beside a
    decided one included), INCONCLUSIVE when none is decided.
    """,
    VALUES,
    version=4,
)


# ----------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Limits:
    """One arm's largest trainable lr per seed, and what censors it."""

    arm: str
    per_seed: dict[int, float | None]  # None: the seed trains at no lr tried
    top: dict[int, float]  # the largest lr tried with each seed
    bottom_diverged: dict[int, float]  # seed -> its smallest lr tried, where that diverged
    counts: dict[str, int]  # the arm's runs by outcome (trained, diverged, stuck)

    @property
    def name(self) -> str:
        return NAMES.get(self.arm, self.arm)

    @property
    def log2(self) -> Estimate:
        return estimate(math.log2(v) for v in self.per_seed.values() if v is not None)

    @property
    def trains(self) -> bool:
        return any(v is not None for v in self.per_seed.values())

    @property
    def never(self) -> list[int]:
        return [s for s, v in self.per_seed.items() if v is None]

    @property
    def censored(self) -> dict[int, float]:
        """Seeds that train at the largest lr they tried: their limit is a lower bound."""
        return {s: v for s, v in self.per_seed.items() if v is not None and v >= self.top[s]}


def limits(runs: pd.DataFrame, arm: str) -> Limits:
    """`arm`'s limits from its runs (with an `outcome` column)."""
    per_seed: dict[int, float | None] = {}
    top: dict[int, float] = {}
    bottom: dict[int, float] = {}
    for seed, mine in runs.groupby(K.train.seed, sort=True):
        mine = mine.sort_values(K.optim.lr)
        trained = mine.loc[mine["outcome"].eq(TRAINED), K.optim.lr]
        per_seed[int(seed)] = float(trained.max()) if not trained.empty else None
        top[int(seed)] = float(mine[K.optim.lr].max())
        if mine["outcome"].iloc[0] == DIVERGED:
            bottom[int(seed)] = float(mine[K.optim.lr].iloc[0])
    counts = runs["outcome"].value_counts()
    return Limits(
        arm, per_seed, top, bottom, {k: int(counts.get(k, 0)) for k in (TRAINED, DIVERGED, STUCK)}
    )


def trains_at_no_lr(lim: Limits) -> str:
    c = lim.counts
    n = sum(c.values())
    return (
        f"{lim.name} trains at no lr tried (diverged {c[DIVERGED]}, stuck {c[STUCK]} of {n} runs)"
    )


def seeds_text(seeds: Iterable[int]) -> str:
    seeds = list(seeds)
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(str(s) for s in seeds)}"


def below_window(lim: Limits) -> str:
    """Why `lim` may lie below its window ("" when it does not)."""
    if lim.never:
        verb = "train" if len(lim.never) > 1 else "trains"
        return f"{lim.name} {seeds_text(lim.never)} {verb} at no lr tried: extend its window down"
    if lim.bottom_diverged:
        seed, lr = next(iter(lim.bottom_diverged.items()))
        return (
            f"{lim.name} seed {seed} diverges at its smallest lr ({lr:g}): its limit is "
            "below the window: extend it down"
        )
    return ""


def censored_why(lim: Limits) -> str:
    seeds = lim.censored
    top = max(seeds.values())
    return (
        f"{lim.name} trains at the top of its window ({seeds_text(seeds)}, up to "
        f"{top:g}): extend {lim.name}'s window above {top:g}"
    )


def lr_row(bn: Limits, arm: Limits) -> Verdict:
    """Comparison (1): BN's largest trainable lr over the arm's, in log2 steps."""
    against = AGAINST[arm.arm]
    for side in (arm, bn):
        if not side.trains:
            return verdict_row(against, None, LR_MIN_STEPS, LR_UNIT, trains_at_no_lr(side))
    effect = difference(bn.log2, arm.log2)
    why = below_window(bn) or below_window(arm)
    if why:
        return verdict_row(against, effect, LR_MIN_STEPS, LR_UNIT, why)
    row = verdict_row(against, effect, LR_MIN_STEPS, LR_UNIT)
    # A censored limit is a lower bound: BN's can only raise the effect, the arm's lower it.
    if bn.censored and row.verdict != SUPPORTED:
        return verdict_row(against, effect, LR_MIN_STEPS, LR_UNIT, censored_why(bn))
    if arm.censored and row.verdict != NOT_SUPPORTED:
        return verdict_row(against, effect, LR_MIN_STEPS, LR_UNIT, censored_why(arm))
    return row


# ----------------------------------------------------------------------------- accuracy


# The edge as this rule words it: the lrs tried with an arm are its window.
WINDOW_EDGES = EdgeWords(
    only="its only lr ({lr}): extend its window",
    bottom="at the bottom of its window ({lr}): extend it down",
    top="at the top of its window ({lr}): extend it up",
)


def edge(p: Point) -> str:
    """Where `p`'s best lr sits when a wider window could beat it ("" inside it)."""
    return edge_of(p.grid, p.best_lr, WINDOW_EDGES)


def acc_against(arm: str) -> str:
    return f"{AGAINST[arm]}: accuracy at own best lr"


def acc_row(bn: Point, arm: Point, lims: dict[str, Limits]) -> Verdict:
    """Comparison (2): BN's accuracy minus the arm's, each at its own best lr (pp)."""
    against = acc_against(arm.arm)
    for side in (arm.arm, bn.arm):
        if not lims[side].trains:
            return verdict_row(against, None, ACC_MIN_PP, "pp", trains_at_no_lr(lims[side]))
    effect = in_pp(difference(bn.acc, arm.acc))
    row = verdict_row(against, effect, ACC_MIN_PP, "pp")
    # A better-tuned arm lowers the effect, a better-tuned BN raises it.
    could_overturn = {SUPPORTED: (arm,), NOT_SUPPORTED: (bn,)}.get(row.verdict, (bn, arm))
    for p in could_overturn:
        if edge(p):
            why = f"{p.label}'s best lr is {edge(p)}"
            return verdict_row(against, effect, ACC_MIN_PP, "pp", why)
    return row


# ----------------------------------------------------------------------------- selection


def reference_runs(
    runs: pd.DataFrame,
) -> tuple[pd.DataFrame, Setting | None, list[str], int | None]:
    """The arms' runs at the reference batch (the largest), with `acc` and `outcome`."""
    sel, setting, notes = select_arms(runs, [K.optim.lr, K.data.batch_size], ARMS)
    if sel.empty:
        return sel, setting, notes, None
    batch = sel[K.data.batch_size].astype(float)
    reference = float(batch.max())
    smaller = ~np.isclose(batch, reference)
    if smaller.any():
        notes.append(
            f"left out {int(smaller.sum())} run(s) at a batch below the reference batch "
            f"{reference:g} (the small-batch claim's)"
        )
    sel = sel[~smaller]
    return sel.assign(outcome=outcome(sel)), setting, notes, int(reference)


# ----------------------------------------------------------------------------- section


@section(
    "lr",
    "Learning rate",
    "BN allows higher learning rates.",
    LR_RULE,
    figures=("lr_limit",),
)
def lr_limit_claim(tables: RunTables) -> Finding:
    sel, setting, notes, batch = reference_runs(tables.runs)
    if sel.empty or BN not in set(sel["arm"]):
        return no_data(notes)
    arms = [a for a in ARMS if a in set(sel["arm"])]
    parts = {a: sel[sel["arm"].eq(a)] for a in arms}
    lims = {a: limits(parts[a], a) for a in arms}
    points = {a: own_lr(parts[a], a, NAMES[a], fit="acc") for a in arms}
    rows: list[Verdict] = []
    limit_rows: list[Verdict] = []  # the headline's: the claim is about which lrs train
    numbers: dict[str, Any] = {"reference_batch": batch}
    for a in arms:
        numbers |= arm_numbers(parts[a], lims[a], points[a])
    for a in arms[1:]:
        lr_verdict = lr_row(lims[BN], lims[a])
        rows += [lr_verdict, acc_row(points[BN], points[a], lims)]
        limit_rows.append(lr_verdict)
        if lr_verdict.effect is not None:
            numbers[f"bn_over_{a}_largest_lr_factor"] = round2(2**lr_verdict.effect)
    if len(arms) == 1:
        notes.append("no run of a no-BN arm (fixup, skipinit, none) in this setting")
    data = {
        "runs": sel[["arm", K.optim.lr, K.train.seed, TEST_ACC, "acc", "outcome"]],
        "limits": limits_table(lims),
        "chosen": chosen_table(points, lims),
    }
    evidence = evidence_table(parts, lims, points)
    return Finding(headline(limit_rows), numbers, evidence, setting, notes, data, None, rows)


def arm_numbers(part: pd.DataFrame, lim: Limits, p: Point) -> dict[str, Any]:
    seeds = sorted(lim.per_seed)
    best = part[np.isclose(part[K.optim.lr].astype(float), p.best_lr)]
    return {
        f"{lim.arm}_largest_lr_per_seed": [lim.per_seed[s] for s in seeds],
        f"{lim.arm}_best_lr": p.best_lr,
        f"{lim.arm}_best_acc_pct": pct(float(best["acc"].mean())),
        f"{lim.arm}_acc_lr_per_seed": [float(v) for v in p.runs[K.optim.lr]],
        f"{lim.arm}_own_lr_acc_pct": pct(p.acc.mean),
    }


def evidence_table(
    parts: dict[str, pd.DataFrame], lims: dict[str, Limits], points: dict[str, Point]
) -> pd.DataFrame:
    """Per arm and lr: outcomes over seeds, accuracy, and which seeds' limit and
    accuracy comparison this lr is."""
    rows = []
    for arm, part in parts.items():
        lim, p = lims[arm], points[arm]
        used = p.runs.groupby(K.optim.lr)[K.train.seed].agg(list)
        for lr, at in part.groupby(K.optim.lr, sort=True):
            n = at["outcome"].value_counts()
            limit_seeds = [s for s, v in lim.per_seed.items() if v is not None and v == lr]
            rows.append(
                {
                    "arm": arm_label(arm),
                    "lr": f"{lr:g}" + (" (best mean)" if math.isclose(lr, p.best_lr) else ""),
                    "trained/diverged/stuck": "/".join(
                        str(int(n.get(k, 0))) for k in (TRAINED, DIVERGED, STUCK)
                    ),
                    "test acc % [95% CI] (diverged = chance)": pct_ci(estimate(at["acc"])),
                    "largest trainable lr of seeds": ", ".join(map(str, limit_seeds)) or "–",
                    "accuracy comparison uses seeds": ", ".join(
                        str(int(s)) for s in used.get(lr, [])
                    )
                    or "–",
                }
            )
    return pd.DataFrame(rows)


def limits_table(lims: dict[str, Limits]) -> pd.DataFrame:
    rows = [
        {"arm": a, "seed": s, "limit": v, "censored": s in lim.censored}
        for a, lim in lims.items()
        for s, v in lim.per_seed.items()
    ]
    return pd.DataFrame(rows, columns=["arm", "seed", "limit", "censored"])


def chosen_table(points: dict[str, Point], lims: dict[str, Limits]) -> pd.DataFrame:
    """Per arm: its window, its limit per seed, its best lr and the lr each seed's
    accuracy was measured at."""
    rows = []
    for a, p in points.items():
        seeds = sorted(lims[a].per_seed)
        rows.append(
            {
                "arm": a,
                "window": ", ".join(f"{v:g}" for v in p.grid),
                "largest trainable lr per seed": ", ".join(
                    "none" if lims[a].per_seed[s] is None else f"{lims[a].per_seed[s]:g}"
                    for s in seeds
                ),
                "best lr": p.best_lr,
                "lr per seed (accuracy)": p.chosen,
                "acc %": pct(p.acc.mean),
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- figure

# How the strip below the accuracy axis draws a run that did not train.
FAILED_MARKS = ((DIVERGED, "x", 0.2, "diverged"), (STUCK, "o", -0.2, "stuck at chance"))


@figure("lr_limit")
def lr_limit_figure(result: ClaimResult) -> Figure:
    runs, lims = result.data["runs"], result.data["limits"]
    fig = Figure(figsize=(8.5, 6.4), layout="constrained")
    acc_ax, strip = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    arms = [a for a in ARMS if a in set(runs["arm"])]
    for i, arm in enumerate(arms):
        mine, lim = runs[runs["arm"].eq(arm)], lims[lims["arm"].eq(arm)]
        accuracy_line(acc_ax, mine, lim, arm)
        failure_row(strip, mine, lim, arm, len(arms) - 1 - i)
    chance_line(acc_ax)
    acc_ax.set_ylim(0, 100)
    acc_ax.set_ylabel("final test accuracy (%), runs that trained\n(line: mean; dots: seeds)")
    acc_ax.plot(
        [], [], "D", mfc="none", color="0.3", ms=8, ls="none", label="largest lr that trains"
    )
    legend(acc_ax, loc="best")
    strip_axis(strip, runs, arms)
    seeds = int(runs.groupby("arm")[K.train.seed].nunique().max())
    return finish(fig, result, f"accuracy vs lr and the largest lr that trains ({seeds} seeds)")


def accuracy_line(ax: Axes, mine: pd.DataFrame, lim: pd.DataFrame, arm: str) -> None:
    """The trained runs only: the mean per lr (hollow with fewer than 3 trained seeds),
    each seed as a dot, and each seed's largest trainable lr ringed."""
    ok = mine[mine["outcome"].eq(TRAINED)]
    colour = norm_colour(arm)
    stats = ok.groupby(K.optim.lr)[TEST_ACC].agg(["mean", "count"])
    ax.plot(stats.index, 100 * stats["mean"], color=colour, label=arm_label(arm))
    for full, face in ((True, colour), (False, "white")):
        sub = stats[(stats["count"] >= MIN_SEEDS) == full]
        ax.plot(sub.index, 100 * sub["mean"], "o", color=colour, mfc=face, ms=5, ls="none")
    ax.plot(ok[K.optim.lr], 100 * ok[TEST_ACC], ".", color=colour, alpha=0.5, ms=4)
    seed_limit = ok[K.train.seed].map(lim.set_index("seed")["limit"]).astype(float)
    at_limit = ok[np.isclose(ok[K.optim.lr].astype(float), seed_limit)]
    ax.plot(at_limit[K.optim.lr], 100 * at_limit[TEST_ACC], "D", mfc="none", color=colour, ms=9)


def failure_row(ax: Axes, mine: pd.DataFrame, lim: pd.DataFrame, arm: str, y: float) -> None:
    """One arm's row of the strip: its diverged and stuck runs per lr (k of n seeds),
    and a bar at each seed's largest trainable lr."""
    colour = norm_colour(arm)
    n = mine.groupby(K.optim.lr)[K.train.seed].nunique()
    for kind, marker, dy, _ in FAILED_MARKS:
        bad = mine[mine["outcome"].eq(kind)].groupby(K.optim.lr).size()
        face = colour if marker == "x" else "white"
        ax.plot(bad.index, [y + dy] * len(bad), marker, color=colour, mfc=face, ms=6, ls="none")
        for lr, k in bad.items():
            ax.annotate(
                f"{k}/{n[lr]}",
                (lr, y + dy),
                xytext=(5, -3),
                textcoords="offset points",
                fontsize=6,
                color=colour,
            )
    limit = lim["limit"].dropna().astype(float)
    ax.plot(limit, [y] * len(limit), "|", color=colour, ms=14, mew=2.5, ls="none")


def strip_axis(ax: Axes, runs: pd.DataFrame, arms: list[str]) -> None:
    """The strip below the accuracy axis: one row per arm, the lr axis under it."""
    ax.set_yticks(range(len(arms)), [arm_label(a) for a in reversed(arms)], fontsize=8)
    ax.set_ylim(-0.6, len(arms) - 0.4)
    for _, marker, _, label in FAILED_MARKS:
        face = "0.3" if marker == "x" else "white"
        ax.plot([], [], marker, color="0.3", mfc=face, ls="none", label=label)
    ax.plot([], [], "|", color="0.3", ms=10, mew=2.5, ls="none", label="largest lr that trains")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(
        f"did not train (k of n seeds; stuck: below {100 * STUCK_BELOW:g}% at the end)",
        fontsize=9,
    )
    log_x(ax, runs[K.optim.lr], 2)
    ax.tick_params(axis="x", labelrotation=45)
    ax.set_xlabel("peak learning rate (log2 scale)")
    ax.grid(axis="x", alpha=0.3)
