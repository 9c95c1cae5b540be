"""The depth claim, rule version 3: BN makes deep networks trainable (issue 24).

He et al. (2016) trained plain nets that got worse with depth and residual nets that
did not; Fixup (Zhang et al. 2019) and SkipInit (De & Smith 2020) train deep residual
nets without normalisation by scaling the residual branches. The claim is decided on
the depth cost: what an arm loses from its shallowest to its deepest depth, against
what BN loses over the same depths, in each architecture (plain, residual).

What version 3 adds to version 2 (bnlab.report.claims, kept computable):

- every (architecture, arm, depth) at its own lr from the lrs tried with it there,
  chosen across seeds (`own_lr.own_lr`: each seed measured at the lr the *other*
  seeds chose), so a deep net may use a smaller lr than a shallow one;
- a point whose best lr is at the edge of its lrs blocks a verdict that a better lr
  there could overturn (the edge semantics of `sequence.decide`);
- the runs at the reference batch only (the largest batch of the setting: the smaller
  ones are the small-batch claim's);
- failing to train is shown as a result: each point's runs counted trained, diverged
  or stuck (`points.outcome`), and its final training loss beside its test accuracy.

Accuracies are fractions internally; `numbers` gives them in % and effects in pp.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bnlab.config import RESIDUAL_INITS
from bnlab.report.arms import BN, NO_BN_ARMS, TRAINS_AT, in_pp, select_arms
from bnlab.report.cells import num_ci, pct, pct_ci
from bnlab.report.claims import DEPTH_MIN_PP, RULE_VALUES
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
    arm_label,
    chance_line,
    ci_errorbar,
    finish,
    legend,
    log_x,
    norm_colour,
    y_top,
)
from bnlab.report.intervals import Estimate, contrast, estimate, verdict_row
from bnlab.report.keys import DIVERGED, RUN_ID, TEST_ACC, TRAIN_LOSS, K
from bnlab.report.load import RunTables
from bnlab.report.own_lr import Point, own_lr
from bnlab.report.points import STUCK, STUCK_BELOW, TRAINED, flag, outcome
from bnlab.report.select import STANDARD, Setting

# ----------------------------------------------------------------------------- constants

ARCHS = ((False, "plain"), (True, "residual"))  # report order: plain first
DEPTH_ARMS = ("none", "fixup", "skipinit")  # the rows' order within an architecture
ARM_ORDER = (BN, *DEPTH_ARMS)
ARM_NAME = {BN: "BN", "none": "He init", "fixup": "Fixup", "skipinit": "SkipInit"}
OUTCOMES = (TRAINED, DIVERGED, STUCK)  # the order the counts are given in

VALUES = {**RULE_VALUES, "stuck": f"{100 * STUCK_BELOW:g}%"}

DEPTH_RULE = Rule(
    """
    Runs: ResNets (model.arch resnet) without dropout, He init or a residual init, init
    scale 1, augmentation, in one setting (dataset, preset, epochs, training images,
    schedule), at the reference batch: the
    largest data.batch_size among them (runs at smaller batches are the small-batch
    claim's; the notes name them). Architectures plain (model.residual=false) and
    residual, at every depth tried (8, 20, 56, and 110 where present). Arms: bn and
    none (He init, no normalisation) in both; fixup and skipinit (no normalisation,
    each residual branch scaled to start at zero) in residual nets only. A point is one
    (architecture, arm, depth) over the lrs tried with it there, and has its own lr: a
    deep net may train best at a smaller lr than a shallow one. Its accuracy is the
    final test accuracy, a diverged run counting as chance ({chance}), each seed at the
    lr with the highest mean over the other seeds (ties to the smaller lr; with one
    seed, its own best), so no run both picks its lr and measures it; the point's best
    lr, shown, is the highest mean over all seeds. Each point's runs are counted
    trained, diverged (a non-finite loss) or stuck (finished with a final test accuracy
    below {stuck}), at its own lr and over all the lrs tried, and its final training
    loss is shown beside its test accuracy: a net that fails to train is a result.
    For each architecture and each no-BN arm tried in it, over the depths both it and
    BN were tried at (at least two): an arm's depth cost is its accuracy at the
    shallowest of them minus at the deepest; the effect is the arm's depth cost minus
    BN's (pp, from the four points), minimum {depth_min}: BN keeps deep nets trainable
    where the arm loses more with depth, falling toward chance. A depth cost needs a
    net that trains shallow: when the arm's or BN's mean accuracy at its best lr at the
    shallowest depth is below {trains} (its runs there diverged or stuck), the
    comparison is not measured (INCONCLUSIVE, no effect). A point whose best lr is the
    smallest or the largest of its lrs (or its only one) blocks a verdict that a better
    lr there could overturn (INCONCLUSIVE, extend its lrs): a SUPPORTED one when it is
    the arm's deepest or BN's shallowest point (raising it shrinks the effect), a NOT
    SUPPORTED one when it is the arm's shallowest or BN's deepest. Except: a deep point
    none of whose runs trains at any of its lrs, whose lrs reach at least one x2 step
    below the lr at which the same arm trains best at the shallowest depth, blocks
    nothing (every lr failed, down to below the shallow net's; its tie at chance goes to
    the smallest lr, which is no sign that a smaller one would train). Effects have 95%
    intervals over seeds (Student t, Welch-Satterthwaite across the four points); fewer
    than {seeds} seeds in a point is exploratory and never decides. A comparison is
    SUPPORTED when its interval excludes zero and the effect reaches the minimum, NOT
    SUPPORTED when the whole interval lies below the minimum, else INCONCLUSIVE. The
    headline counts the comparisons measured and not blocked: SUPPORTED or NOT
    SUPPORTED when they all say so, MIXED when they disagree, INCONCLUSIVE when none
    decided.
    """,
    VALUES,
    version=3,
)


# ----------------------------------------------------------------------------- points


@dataclass(frozen=True)
class Cell:
    """One (architecture, arm, depth): its point at its own lr and every run tried."""

    arch: str
    arm: str
    depth: int
    point: Point  # runs: one per seed, at the lr the other seeds chose
    tried: pd.DataFrame  # every run of the cell, at every lr, with an `outcome` column

    @property
    def acc(self) -> Estimate:
        return self.point.acc

    @property
    def best_mean(self) -> float:
        """The mean accuracy over seeds at the best lr (a diverged run as chance)."""
        at = self.tried[np.isclose(self.tried[K.optim.lr].astype(float), self.point.best_lr)]
        return float(at["acc"].mean())

    @property
    def trains(self) -> bool:
        return self.best_mean >= TRAINS_AT

    @property
    def loss(self) -> Estimate:
        """Final training loss of the runs measured (a diverged run has none)."""
        return estimate(self.point.runs.get(TRAIN_LOSS, pd.Series(dtype=float)).astype(float))

    def counts(self, every_lr: bool = False) -> dict[str, int]:
        runs = self.tried if every_lr else self.point.runs
        found = runs["outcome"].value_counts()
        return {o: int(found.get(o, 0)) for o in OUTCOMES}


def arm_text(arm: str, arch: str, depth: int | None = None) -> str:
    at = f", depth {depth}" if depth is not None else ""
    return f"{ARM_NAME.get(arm, arm)} ({arch}{at})"


def make_cells(sel: pd.DataFrame) -> dict[tuple[str, str, int], Cell]:
    """Every (architecture, arm, depth) of `sel` as a Cell, each at its own lr."""
    cells = {}
    for (arch, arm, depth), part in sel.groupby(["arch", "arm", K.model.depth], sort=True):
        d = int(depth)
        # own_lr reads `fit` for its `trained`; this rule decides training on test
        # accuracy at the best lr (Cell.trains), so `fit` is the accuracy itself.
        point = own_lr(part, str(arm), arm_text(str(arm), arch, d), fit="acc")
        cells[str(arch), str(arm), d] = Cell(str(arch), str(arm), d, point, part)
    return cells


# ----------------------------------------------------------------------------- selection


def recipe_mask(runs: pd.DataFrame) -> pd.Series:
    """ResNet runs without dropout, He-initialised or with a residual init (Fixup,
    SkipInit): a none run with another init is not the He-init arm."""
    nan = pd.Series(np.nan, index=runs.index)
    init = runs.get(K.model.init, nan).fillna(STANDARD[K.model.init])
    dropout = pd.to_numeric(runs.get(K.model.dropout, nan), errors="coerce").fillna(0.0)
    arch = runs.get(K.model.arch, nan).fillna("resnet")
    return (
        init.isin([STANDARD[K.model.init], *RESIDUAL_INITS]) & dropout.eq(0.0) & arch.eq("resnet")
    )


def depth_runs(
    runs: pd.DataFrame, notes: list[str]
) -> tuple[pd.DataFrame, Setting | None, int | None]:
    """The claim's finished runs at the reference batch, with `arch`, `acc`, `outcome`;
    their setting, and the reference batch."""
    vary = [K.model.depth, K.model.residual, K.optim.lr, K.data.batch_size]
    sel, setting, found = select_arms(runs, vary, (BN, *NO_BN_ARMS), recipe_mask(runs))
    notes += found
    if sel.empty:
        return sel, setting, None
    batch = sel[K.data.batch_size].astype(int)
    ref = int(batch.max())
    small = batch[batch.ne(ref)]
    if not small.empty:
        sizes = ", ".join(str(b) for b in sorted(set(small)))
        notes.append(
            f"left out {len(small)} run(s) at batch {sizes}: depth is compared at the "
            f"reference batch {ref}, the largest (the smaller batches are the small-batch "
            "claim's)"
        )
    sel = sel[batch.eq(ref)]
    residual = flag(sel, K.model.residual)
    plain_inits = ~residual & sel["arm"].isin(RESIDUAL_INITS)
    if plain_inits.any():
        notes.append(
            f"left out {int(plain_inits.sum())} Fixup/SkipInit run(s) in plain nets: "
            "they scale residual branches, which a plain net has not"
        )
    sel = sel[~plain_inits]
    residual = residual[~plain_inits]
    arch = residual.map({True: "residual", False: "plain"})
    return sel.assign(arch=arch, outcome=outcome(sel)), setting, ref


# ----------------------------------------------------------------------------- rows


def not_measured(against: str, why: str) -> Verdict:
    return verdict_row(against, None, DEPTH_MIN_PP, "pp", why)


def does_not_train(c: Cell) -> str:
    n = c.counts(every_lr=True)
    return (
        f"{arm_text(c.arm, c.arch, c.depth)} does not train (mean "
        f"{100 * c.best_mean:.1f}% at its best lr {c.point.best_lr:g} < "
        f"{100 * TRAINS_AT:g}%; its runs there: {n[TRAINED]} trained, {n[DIVERGED]} "
        f"diverged, {n[STUCK]} stuck): no depth cost to measure"
    )


def fails_below(c: Cell, shallow: Cell) -> bool:
    """A deep point that trains at no lr tried, down to at least one x2 step below the lr
    at which the same arm trains best shallow: its "edge" is no lead -- every lr failed,
    and the tie between them at chance went to the smallest."""
    if c is shallow or (c.tried["outcome"] == TRAINED).any():
        return False
    return float(c.tried[K.optim.lr].min()) <= shallow.point.best_lr / 2 * (1 + 1e-9)


def edge_block(
    row: Verdict, terms: Sequence[tuple[int, Cell]], shallow_of: dict[int, Cell] | None = None
) -> str:
    """Why a decided `row` is blocked: a point at the edge of its lrs whose better
    tuning would move the effect against the verdict ("" when none). `shallow_of` maps
    a term's id to its arm's shallowest point (fails_below)."""
    if row.verdict not in (SUPPORTED, NOT_SUPPORTED):
        return ""
    # A point better tuned raises its accuracy, moving the effect by its sign.
    against = -1 if row.verdict == SUPPORTED else 1
    for sign, c in terms:
        shallow = (shallow_of or {}).get(id(c))
        if shallow is not None and fails_below(c, shallow):
            continue
        if sign == against and c.point.edge:
            return (
                f"{arm_text(c.arm, c.arch, c.depth)}'s best lr is {c.point.edge}: a "
                "wider lr grid could overturn this; extend it"
            )
    return ""


def depth_row(
    cells: dict[tuple[str, str, int], Cell], arch: str, arm: str, numbers: dict[str, Any]
) -> Verdict:
    """The comparison of `arm` with BN in `arch`: the arm's depth cost minus BN's."""
    against = f"vs {ARM_NAME[arm]} ({arch})"
    mine = {d for a, m, d in cells if (a, m) == (arch, arm)}
    bns = {d for a, m, d in cells if (a, m) == (arch, BN)}
    common = sorted(mine & bns)
    if not bns:
        return not_measured(against, f"needs bn runs in {arch} nets")
    if len(common) < 2:
        found = ", ".join(str(d) for d in common) or "none"
        return not_measured(
            against, f"needs two depths tried with both bn and {arm} ({arch}); found {found}"
        )
    shallow, deep = common[0], common[-1]
    a0, a1 = cells[arch, arm, shallow], cells[arch, arm, deep]
    b0, b1 = cells[arch, BN, shallow], cells[arch, BN, deep]
    for c in (a0, b0):
        if not c.trains:
            return not_measured(against, does_not_train(c))
    terms = [(1, a0), (-1, a1), (-1, b0), (1, b1)]
    effect = in_pp(contrast([(float(s), c.acc) for s, c in terms]))
    numbers |= {
        f"{arch}_{arm}_depth_cost_{shallow}_to_{deep}_pp": pct(a0.acc.mean - a1.acc.mean),
        f"{arch}_bn_depth_cost_{shallow}_to_{deep}_pp": pct(b0.acc.mean - b1.acc.mean),
    }
    row = verdict_row(against, effect, DEPTH_MIN_PP, "pp")
    why = edge_block(row, terms, {id(a1): a0, id(b1): b0})
    return verdict_row(against, effect, DEPTH_MIN_PP, "pp", why) if why else row


# ----------------------------------------------------------------------------- tables


def ordered(cells: dict[tuple[str, str, int], Cell]) -> list[tuple[str, str]]:
    """The (architecture, arm) pairs present, plain first, BN first."""
    pairs = {(a, m) for a, m, _ in cells}
    return [(a, m) for _, a in ARCHS for m in ARM_ORDER if (a, m) in pairs]


def lr_text(p: Point) -> str:
    """The lr used, e.g. "lr 0.05 of 0.025, 0.05, 0.1" (and each seed's when they differ)."""
    grid = ", ".join(f"{v:g}" for v in p.grid)
    text = f"lr {p.best_lr:g} of {grid}"
    if not np.allclose(p.runs[K.optim.lr].astype(float), p.best_lr):
        text += f"; seeds at {p.chosen}"
    return text


def counts_text(c: Cell) -> str:
    own, every = c.counts(), c.counts(every_lr=True)
    own_text, every_text = ("/".join(str(n[o]) for o in OUTCOMES) for n in (own, every))
    return f"{own_text} (all lrs {every_text})"


def loss_text(c: Cell) -> str:
    return num_ci(c.loss) if c.loss.n else "– (every run diverged)"


def evidence_table(cells: dict[tuple[str, str, int], Cell]) -> pd.DataFrame:
    """Rows (architecture, arm); per depth: accuracy with its lr, training loss, and the
    runs trained/diverged/stuck."""
    depths = sorted({d for _, _, d in cells})
    rows = []
    for arch, arm in ordered(cells):
        row: dict[str, str] = {"architecture": arch, "arm": ARM_NAME.get(arm, arm)}
        for d in depths:
            c = cells.get((arch, arm, d))
            row[f"depth {d} acc % [95% CI] (lr used)"] = (
                f"{pct_ci(c.acc)} ({lr_text(c.point)})" if c else "–"
            )
            row[f"depth {d} train loss"] = loss_text(c) if c else "–"
            row[f"depth {d} runs trained/diverged/stuck"] = counts_text(c) if c else "–"
        rows.append(row)
    return pd.DataFrame(rows)


def cells_table(cells: dict[tuple[str, str, int], Cell]) -> pd.DataFrame:
    """One row per cell, for the figure."""
    rows = []
    for (arch, arm, d), c in cells.items():
        e, loss = c.acc, c.loss
        rows.append(
            {
                "arch": arch,
                "arm": arm,
                K.model.depth: d,
                "mean": e.mean,
                "low": e.low,
                "high": e.high,
                "n": e.n,
                "best_lr": c.point.best_lr,
                "edge": bool(c.point.edge),
                "loss_mean": loss.mean,
                "loss_low": loss.low,
                "loss_high": loss.high,
                "loss_n": loss.n,
                **c.counts(),
            }
        )
    return pd.DataFrame(rows)


def measured_runs(cells: dict[tuple[str, str, int], Cell]) -> pd.DataFrame:
    """The runs each point is measured on (one per seed), for the figure's seed marks."""
    cols = [RUN_ID, K.train.seed, K.optim.lr, TEST_ACC, TRAIN_LOSS, "outcome"]
    parts = [
        c.point.runs.reindex(columns=cols).assign(
            arch=c.arch, arm=c.arm, **{K.model.depth: c.depth}
        )
        for c in cells.values()
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# ----------------------------------------------------------------------------- section


@section(
    "depth",
    "Depth",
    "BN makes deep networks trainable.",
    DEPTH_RULE,
    figures=("depth_trainability",),
)
def depth_claim(tables: RunTables) -> Finding:
    notes: list[str] = []
    if K.norm.kind not in tables.runs:
        return no_data(["no run yet"])
    sel, setting, ref = depth_runs(tables.runs, notes)
    if sel.empty or BN not in set(sel["arm"]):
        return no_data(notes + ["no ResNet run with bn at the reference batch"])
    cells = make_cells(sel)
    rows: list[Verdict] = []
    numbers: dict[str, Any] = {"reference_batch": ref}
    for _, arch in ARCHS:
        for arm in DEPTH_ARMS:
            if any((a, m) == (arch, arm) for a, m, _ in cells):
                rows.append(depth_row(cells, arch, arm, numbers))
    for (arch, arm, d), c in cells.items():
        numbers[f"{arch}_{arm}_depth_{d}_lr"] = c.point.best_lr
        numbers[f"{arch}_{arm}_depth_{d}_acc_pct"] = pct(c.acc.mean)
    data = {"cells": cells_table(cells), "runs": measured_runs(cells)}
    return Finding(headline(rows), numbers, evidence_table(cells), setting, notes, data, None, rows)


# ----------------------------------------------------------------------------- figure

STRIP = {DIVERGED: 1.0, STUCK: 0.0}  # the failure strip's rows


def spread(depth: pd.Series, i: int, n: int) -> pd.Series:
    """Depths nudged apart per arm on the log axis, so the arms' marks do not overlap."""
    return depth.astype(float) * 2.0 ** (0.06 * (i - (n - 1) / 2))


def arch_panels(
    axes: Sequence[Axes], cells: pd.DataFrame, runs: pd.DataFrame, arch: str, depths: list[int]
) -> None:
    """One architecture's column: accuracy, the failure strip, training loss."""
    acc_ax, strip_ax, loss_ax = axes
    arms = [a for a in ARM_ORDER if a in set(cells.loc[cells["arch"].eq(arch), "arm"])]
    for i, arm in enumerate(arms):
        pts = cells[cells["arch"].eq(arch) & cells["arm"].eq(arm)].sort_values(K.model.depth)
        pts = pts.assign(x=spread(pts[K.model.depth], i, len(arms)))
        mine = runs[runs["arch"].eq(arch) & runs["arm"].eq(arm)]
        mine = mine.assign(x=spread(mine[K.model.depth], i, len(arms)))
        accuracy_marks(acc_ax, pts, mine, arm)
        failure_marks(strip_ax, mine, arm)
        loss_marks(loss_ax, pts, mine, arm)
    for ax in axes:
        log_x(ax, pd.Series(depths), 2)
    chance_line(acc_ax)
    acc_ax.set_ylim(0, y_top(cells["high"].fillna(cells["mean"])))
    acc_ax.set_title(f"{arch} nets", fontsize=10)
    acc_ax.set_ylabel(
        "final test accuracy (%), mean, 95% interval\n(diverged = chance); dots: seeds"
    )
    legend(acc_ax, loc="lower left")
    strip_ax.set_yticks(list(STRIP.values()), list(STRIP))
    strip_ax.set_ylim(-0.6, 1.6)
    strip_ax.grid(alpha=0.3, axis="x")
    strip_ax.set_ylabel("runs that\nfailed", fontsize=8)
    if not strip_ax.lines:
        strip_ax.text(0.5, 0.5, "no run diverged or stuck", transform=strip_ax.transAxes)
        strip_ax.texts[-1].set(ha="center", va="center", fontsize=8, color="0.4")
    loss_ax.set_ylim(bottom=0)
    loss_ax.grid(alpha=0.3)
    loss_ax.set_xlabel("depth (layers, log scale)")
    loss_ax.set_ylabel("final training loss\n(runs that did not diverge)")


def accuracy_marks(ax: Axes, pts: pd.DataFrame, mine: pd.DataFrame, arm: str) -> None:
    """An arm's accuracy per depth with its interval, and its trained runs as dots. A
    point none of whose runs trained is left to the failure strip, not drawn at chance."""
    trained = pts[pts[TRAINED] > 0]
    if not trained.empty:
        ci_errorbar(ax, trained, "x", arm, arm_label(arm))
    ok = mine[mine["outcome"].eq(TRAINED)]
    ax.plot(ok["x"], 100 * ok[TEST_ACC].astype(float), ".", color=norm_colour(arm), alpha=0.5)


def failure_marks(ax: Axes, mine: pd.DataFrame, arm: str) -> None:
    """An x per diverged or stuck run, on the strip's row for it (seeds stacked)."""
    for what, y in STRIP.items():
        bad = mine[mine["outcome"].eq(what)]
        if bad.empty:
            continue
        jitter = 0.15 * (bad.groupby(K.model.depth).cumcount() - 1)
        ax.plot(bad["x"], y + jitter, "x", color=norm_colour(arm), ms=6, mew=1.5)


def loss_marks(ax: Axes, pts: pd.DataFrame, mine: pd.DataFrame, arm: str) -> None:
    """An arm's final training loss per depth (mean, 95% interval) and per run."""
    colour = norm_colour(arm)
    have = pts[pts["loss_n"] > 0]
    half = (have["loss_high"] - have["loss_mean"]).fillna(0).clip(lower=0)
    if not have.empty:
        ax.errorbar(
            have["x"], have["loss_mean"], yerr=half, color=colour, marker="o", ms=5, capsize=3
        )
    finite = mine[np.isfinite(mine[TRAIN_LOSS].astype(float))]
    ax.plot(finite["x"], finite[TRAIN_LOSS].astype(float), ".", color=colour, alpha=0.5)


@figure("depth_trainability")
def depth_trainability(result: ClaimResult) -> Figure:
    cells, runs = result.data["cells"], result.data["runs"]
    fig = Figure(figsize=(11.5, 8.4), layout="constrained")
    axes = fig.subplots(3, 2, gridspec_kw={"height_ratios": [3.0, 0.8, 2.2]})
    depths = sorted({int(d) for d in cells[K.model.depth]})
    for col, (_, arch) in enumerate(ARCHS):
        arch_panels(axes[:, col], cells, runs, arch, depths)
    seeds = int(cells["n"].max()) if not cells.empty else 0
    what = (
        f"test accuracy and training loss vs depth, each arm at its own lr per depth "
        f"({seeds} seeds; failed runs marked below the accuracy axis, never as points)"
    )
    return finish(fig, result, what)
