"""The batch claim, rule version 4 (issue 24): Wu & He's (2018) protocol.

"BN degrades with small batches, where GroupNorm and LayerNorm do not." Each norm (bn,
gn, ln) is trained at its true batch b, from the reference batch R (the largest batch
of the setting: 64 at preset=cpu, 128 at preset=gpu) down to 2, with the lr
proportional to the batch (lr = base lr x b/R) and the same epochs for every b -- so a
small batch also takes R/b times as many steps, as in Wu & He's Figure 1.

What this rule adds to version 3 (claims.py, which decided on the statistics batch
alone at a fixed optimisation batch): GN and LN tuned before the comparison (each
norm's base lr is its best at R, and the small-batch grid was launched with it; the
rule checks that every small-batch run used it), the claim's second half ("where GN/LN
do not") as rows of their own, and BN's own drop as a row (a relative drop means
little when every norm *gains* accuracy at the small batch, as version 2 saw at CPU
scale).

Accuracies are fractions internally; `numbers` gives them in % and differences in pp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bnlab.report.arms import TRAINS_AT, in_pp, select_arms
from bnlab.report.cells import pct
from bnlab.report.claims import BATCH_MIN_PP, RULE_VALUES
from bnlab.report.core import (
    INCONCLUSIVE,
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
    CI_YLABEL,
    chance_line,
    ci_errorbar,
    finish,
    legend,
    log_x,
    norm_colour,
    norm_label,
    y_top,
)
from bnlab.report.intervals import MIN_SEEDS, Effect, Estimate, contrast, estimate, verdict_row
from bnlab.report.keys import DIVERGED, TEST_ACC, K
from bnlab.report.load import RunTables
from bnlab.report.points import STUCK, STUCK_BELOW, TRAINED, outcome
from bnlab.report.select import Setting

# ----------------------------------------------------------------------------- constants

NORMS = ("bn", "gn", "ln")  # arm labels (select.arm_labels): Ghost BN arms are not these
OTHERS = ("gn", "ln")
NAME = {"bn": "BN", "gn": "GN", "ln": "LN"}
LR_RTOL = 1e-6  # "the same lr": within rounding of base lr x b/R
OUTCOMES = (TRAINED, DIVERGED, STUCK)
EVIDENCE_FIRST = "norm; cells: acc % [95% CI] (trained/diverged/stuck)"
FIGURE_WHAT = (
    "Wu & He protocol: accuracy vs true batch, lr proportional to batch,\n"
    "same epochs (steps grow as the batch shrinks)"
)

VALUES = {**RULE_VALUES, "stuck": f"{100 * STUCK_BELOW:g}%"}

RULE = Rule(
    """
    Wu & He's protocol. Runs: ResNet-20, residual, He init, init scale 1, augmentation,
    no dropout, one setting (dataset, preset, epochs, training images); norms bn, gn
    and ln (Ghost BN and every other arm are not part of this section), at every true
    batch size b and lr found. The reference batch R is the largest batch among these runs (64 at
    preset=cpu, 128 at preset=gpu); S is the smallest (2 in the suite). The lr is
    proportional to the batch, lr = base lr x b/R, and every b trains for the same
    epochs, so a small batch also takes R/b times as many optimisation steps (Wu & He's
    protocol, not a statistics-only comparison). Each norm's base lr is tuned at R:
    among its runs at batch R (several lrs, {seeds} seeds), the lr with the highest
    mean final test accuracy (a diverged run counting as chance, {chance}; ties to the
    smaller lr); its accuracy at R is read from those same runs. The small-batch runs
    were launched after that tuning with the tuned base lr, and the rule checks it:
    at b below R only a norm's runs with lr = its tuned base lr x b/R (within rounding)
    count; runs at other lrs are left out with a note. A run is diverged (its status),
    stuck (finished below {stuck} test accuracy) or trained; a diverged run counts as
    chance, and each point shows the three counts. acc(b): final test accuracy at batch
    b, mean over seeds with its 95% interval; a norm's drop is acc(R) - acc(S) in pp.
    Seeds are not paired (every point is other runs), so an effect combines independent
    points (Student t, Welch-Satterthwaite). Rows: 'BN degrades': BN's drop; 'vs GN'
    and 'vs LN': BN's drop minus the other norm's, acc_BN(R) - acc_BN(S) - acc_X(R) +
    acc_X(S); each SUPPORTED when its whole interval lies above {batch_min}, NOT
    SUPPORTED when it lies wholly below, else INCONCLUSIVE. 'GN does not degrade' and
    'LN does not degrade' (the claim's second half): that norm's drop, SUPPORTED when
    its whole interval lies below {batch_min}, NOT SUPPORTED when wholly above, else
    INCONCLUSIVE. A row is not measured (INCONCLUSIVE, no effect) when a norm it
    involves has no run at R, or none at S with its tuned base lr, or does not train at
    R (mean accuracy at its tuned lr below {trains}); it is measured but blocked
    (INCONCLUSIVE) when a norm's tuned base lr is the smallest or largest lr tried at R
    (or the only one): re-tuning would move every point of that norm. Fewer than
    {seeds} seeds in a point is exploratory and never decides. Headline: the measured,
    unblocked rows must agree -- SUPPORTED or NOT SUPPORTED when every one says so,
    MIXED when they disagree (a measured but undecided row counts as disagreeing),
    INCONCLUSIVE when none is decided or no 'vs' row is measured.
    """,
    VALUES,
    version=4,
)


# ----------------------------------------------------------------------------- tuning


@dataclass(frozen=True)
class Tuning:
    """One norm's base lr, tuned at the reference batch."""

    norm: str
    means: dict[float, float]  # lr tried at R -> mean accuracy over seeds (chance if diverged)
    base_lr: float  # the best mean (ties to the smaller lr)
    seeds_per_lr: dict[float, int] = field(default_factory=dict)  # finished runs per lr

    @property
    def grid(self) -> list[float]:
        return sorted(self.means)

    @property
    def best(self) -> float:
        return self.means[self.base_lr]

    @property
    def trains(self) -> bool:
        return self.best >= TRAINS_AT

    @property
    def edge(self) -> str:
        """Why a re-tuning could move this norm's points ("" when the lr is inside)."""
        grid = self.grid
        if len(grid) < 2 or self.base_lr in (grid[0], grid[-1]):
            tried = ", ".join(f"{v:g}" for v in grid)
            return (
                f"{NAME[self.norm]}'s base lr at the edge of its tuning grid "
                f"({self.base_lr:g}; tried {tried}): extend it"
            )
        return ""

    def lr_at(self, batch: int, reference: int) -> float:
        return self.base_lr * batch / reference


def tune(at_reference: pd.DataFrame, norm: str) -> Tuning:
    """The base lr of `norm` from its runs at the reference batch (with `acc`)."""
    by_lr = at_reference.groupby(K.optim.lr, sort=True)["acc"]
    means, counts = by_lr.mean(), by_lr.count()
    return Tuning(
        norm,
        {float(k): float(v) for k, v in means.items()},
        float(means.idxmax()),
        {float(k): int(v) for k, v in counts.items()},
    )


def tuning_note(t: Tuning, reference: int) -> str:
    parts = [
        f"{lr:g}: {100 * m:.1f}%" + (" (chosen)" if lr == t.base_lr else "")
        for lr, m in t.means.items()
    ]
    return (
        f"{NAME[t.norm]} tuned at batch {reference} (mean final test accuracy over seeds, "
        f"diverged = chance): lr " + ", ".join(parts)
    )


# ----------------------------------------------------------------------------- points


@dataclass
class NormRuns:
    """One norm's runs at its tuned base lr, per batch; and why a batch has none."""

    tuning: Tuning | None
    at: dict[int, pd.DataFrame] = field(default_factory=dict)
    missing: dict[int, str] = field(default_factory=dict)

    def acc(self, batch: int) -> Estimate:
        return estimate(self.at[batch]["acc"])


def at_tuned_lr(runs: pd.DataFrame, norm: str, reference: int, notes: list[str]) -> NormRuns:
    """`norm`'s runs (one norm, with `acc` and `batch`) at its tuned base lr, per batch;
    runs below R at another lr are left out with a note."""
    big = runs[runs["batch"].eq(reference)]
    if big.empty:
        return NormRuns(None)
    t = tune(big, norm)
    out = NormRuns(t)
    for b, part in runs.groupby("batch", sort=True):
        b = int(b)
        want = t.lr_at(b, reference)
        lrs = part[K.optim.lr].astype(float)
        ok = np.isclose(lrs, want, rtol=LR_RTOL, atol=0.0)
        if b != reference and not ok.all():
            other = sorted(set(lrs[~ok]))
            notes.append(
                f"{NAME[norm]} at batch {b}: left out {int((~ok).sum())} run(s) at lr "
                f"{_lrs(other, b, reference)}, not the tuned base lr {t.base_lr:g} "
                f"(lr {want:g} at this batch)"
            )
        if ok.any():
            out.at[b] = part[ok]
        else:
            out.missing[b] = (
                f"no {NAME[norm]} runs at batch {b} with the tuned base lr {t.base_lr:g} "
                f"(lr {want:g}; found lrs {_lrs(sorted(set(lrs)), b, reference)})"
            )
    return out


def _lrs(lrs: Sequence[float], batch: int, reference: int) -> str:
    """lrs at `batch` with the base lr each stands for, e.g. "0.0015625 (base 0.05)"."""
    return ", ".join(f"{lr:g} (base {lr * reference / batch:g})" for lr in lrs)


# ----------------------------------------------------------------------------- rows


def judge_above(effect: Effect, bound: float) -> tuple[str, str]:
    """(verdict, reason) for an effect claimed larger than `bound`: its interval above
    `bound` (SUPPORTED), below it (NOT SUPPORTED), or across it (INCONCLUSIVE) -- the
    mirror of intervals.judge_below."""
    if effect.exploratory:
        return INCONCLUSIVE, f"exploratory: fewer than {MIN_SEEDS} seeds"
    if math.isnan(effect.value):
        return INCONCLUSIVE, "no effect measured"
    if effect.low > bound:
        return SUPPORTED, f"interval above {bound:g}"
    if effect.high < bound:
        return NOT_SUPPORTED, f"interval below {bound:g}"
    return INCONCLUSIVE, "interval too wide to decide"


@dataclass(frozen=True)
class Batches:
    reference: int  # R
    small: int  # S


def drop_row(
    against: str,
    terms: Sequence[tuple[int, str]],
    by_norm: dict[str, NormRuns],
    sizes: Batches,
    below: bool,
) -> Verdict:
    """A row whose effect is sum(sign x drop(norm)) over `terms` (pp), judged against
    BATCH_MIN_PP from above (`below` False) or from below."""
    why = _unmeasured([n for _, n in terms], by_norm, sizes)
    if why:
        return verdict_row(against, None, BATCH_MIN_PP, "pp", why)
    parts: list[tuple[float, Estimate]] = []
    for sign, norm in terms:
        runs = by_norm[norm]
        parts += [(sign, runs.acc(sizes.reference)), (-sign, runs.acc(sizes.small))]
    effect = in_pp(contrast(parts))
    edge = next((e for _, n in terms if (e := _tuning(by_norm, n).edge)), "")
    if edge:
        return verdict_row(against, effect, BATCH_MIN_PP, "pp", edge)
    rule = None if below else judge_above
    return verdict_row(against, effect, BATCH_MIN_PP, "pp", below=below, rule=rule)


def _tuning(by_norm: dict[str, NormRuns], norm: str) -> Tuning:
    t = by_norm[norm].tuning
    assert t is not None  # _unmeasured checked it
    return t


def _unmeasured(norms: Sequence[str], by_norm: dict[str, NormRuns], sizes: Batches) -> str:
    """Why a row over `norms` has no effect to measure ("" when it has one)."""
    if sizes.small == sizes.reference:
        return f"needs a batch below the reference batch {sizes.reference}: none was run"
    for norm in norms:
        runs = by_norm.get(norm)
        if runs is None or runs.tuning is None:
            return f"no {NAME[norm]} runs at the reference batch {sizes.reference}"
        if sizes.small in runs.missing:
            return runs.missing[sizes.small]
        if sizes.small not in runs.at:
            return f"no {NAME[norm]} runs at batch {sizes.small}"
    for norm in norms:
        t = _tuning(by_norm, norm)
        if not t.trains:
            return (
                f"{NAME[norm]} does not train at batch {sizes.reference} (mean "
                f"{100 * t.best:.1f}% < {100 * TRAINS_AT:g}% at its tuned base lr {t.base_lr:g})"
            )
    return ""


def claim_rows(by_norm: dict[str, NormRuns], sizes: Batches) -> list[Verdict]:
    span = f"{sizes.reference} -> {sizes.small}"
    rows = [drop_row(f"BN degrades: BN drop ({span})", [(1, "bn")], by_norm, sizes, False)]
    for other in OTHERS:
        against = f"vs {NAME[other]}: BN drop - {NAME[other]} drop ({span})"
        rows.append(drop_row(against, [(1, "bn"), (-1, other)], by_norm, sizes, False))
    for other in OTHERS:
        against = f"{NAME[other]} does not degrade: {NAME[other]} drop ({span})"
        rows.append(drop_row(against, [(1, other)], by_norm, sizes, True))
    return rows


def is_measured(v: Verdict) -> bool:
    """As core.headline counts a row: an effect with an interval, not blocked."""
    return v.effect is not None and v.low is not None and v.low == v.low and not v.blocked


def section_headline(rows: Sequence[Verdict]) -> str:
    """core.headline, but INCONCLUSIVE unless a 'vs' row was measured: BN's own drop and
    the other norms' are half a claim without the comparison."""
    if not any(is_measured(v) and v.against.startswith("vs ") for v in rows):
        return INCONCLUSIVE
    return headline(rows)


# ----------------------------------------------------------------------------- tables


def points_table(by_norm: dict[str, NormRuns], reference: int) -> pd.DataFrame:
    """Per (norm, batch) at the norm's tuned base lr: the acc estimate and run outcomes."""
    rows = []
    for norm, nr in by_norm.items():
        if nr.tuning is None:
            continue
        for b, part in sorted(nr.at.items()):
            e = estimate(part["acc"])
            counts = part["outcome"].value_counts()
            rows.append(
                {
                    "norm": norm,
                    "batch": b,
                    K.optim.lr: nr.tuning.lr_at(b, reference),
                    "mean": e.mean,
                    "low": e.low,
                    "high": e.high,
                    "n": e.n,
                    **{o: int(counts.get(o, 0)) for o in OUTCOMES},
                }
            )
    columns = ["norm", "batch", K.optim.lr, "mean", "low", "high", "n", *OUTCOMES]
    return pd.DataFrame(rows, columns=columns)


def evidence_table(pts: pd.DataFrame, by_norm: dict[str, NormRuns]) -> pd.DataFrame:
    """Norms (with their base lr) as rows, batch sizes as columns, "acc % [95% CI]
    (trained/diverged/stuck)" cells."""
    batches = sorted(set(pts["batch"]))
    columns = [EVIDENCE_FIRST, *[f"batch {b}" for b in batches]]
    table = []
    for norm, nr in by_norm.items():
        if nr.tuning is None:
            continue
        mine = pts[pts["norm"].eq(norm)].set_index("batch")
        cells = [_cell(mine.loc[b]) if b in mine.index else "–" for b in batches]
        table.append([f"{NAME[norm]} (base lr {nr.tuning.base_lr:g})", *cells])
    return pd.DataFrame(table, columns=columns)


def _cell(p: pd.Series) -> str:
    counts = "/".join(str(int(p[o])) for o in OUTCOMES)
    if int(p["n"]) >= 2 and not pd.isna(p["low"]):
        acc = f"{100 * p['mean']:.1f} [{100 * p['low']:.1f}, {100 * p['high']:.1f}]"
    else:
        acc = f"{100 * p['mean']:.1f} (exploratory)"
    return f"{acc} ({counts})"


def deciding_numbers(
    by_norm: dict[str, NormRuns], pts: pd.DataFrame, sizes: Batches
) -> dict[str, Any]:
    numbers: dict[str, Any] = {
        "reference_batch": sizes.reference,
        "smallest_batch": sizes.small,
    }
    for norm, nr in by_norm.items():
        if nr.tuning is not None:
            numbers[f"{norm}_base_lr"] = nr.tuning.base_lr
    for _, p in pts.iterrows():
        numbers[f"{p['norm']}_acc_batch_{int(p['batch'])}_pct"] = pct(p["mean"])
    drops: dict[str, float] = {}
    for norm, nr in by_norm.items():
        if sizes.reference in nr.at and sizes.small in nr.at and sizes.small != sizes.reference:
            drops[norm] = nr.acc(sizes.reference).mean - nr.acc(sizes.small).mean
            numbers[f"{norm}_drop_{sizes.reference}_to_{sizes.small}_pp"] = pct(drops[norm])
    for other in OTHERS:
        if "bn" in drops and other in drops:
            numbers[f"bn_drop_minus_{other}_drop_pp"] = pct(drops["bn"] - drops[other])
    return numbers


# ----------------------------------------------------------------------------- section


def grid_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, Setting | None, list[str]]:
    """The section's runs: bn, gn and ln without dropout, every lr and batch, one
    setting, with `acc`, `outcome` and `batch` columns."""
    # The dropout claim's runs (model.dropout > 0) are another net; older runs lack the key.
    plain = runs.get(K.model.dropout, pd.Series(0.0, index=runs.index)).fillna(0.0).eq(0.0)
    sel, setting, notes = select_arms(runs, [K.optim.lr, K.data.batch_size], NORMS, plain)
    sel = sel.assign(outcome=outcome(sel), batch=sel[K.data.batch_size].astype(int))
    return sel, setting, notes


def tuned_bases(tables: RunTables) -> tuple[int, dict[str, Tuning]]:
    """The reference batch and each norm's base lr tuned there, as this rule tunes it:
    what scripts/tune_small_batch.py writes into conf/grid/small_batch.yaml before the
    small-batch runs (step 2 of the grid)."""
    sel, _, _ = grid_runs(tables.runs)
    if sel.empty:
        return 0, {}
    reference = int(sel["batch"].max())
    big = sel[sel["batch"].eq(reference)]
    return reference, {n: tune(big[big["arm"].eq(n)], n) for n in NORMS if n in set(big["arm"])}


@section(
    "batch",
    "Batch size",
    "BN degrades at small batch sizes; GroupNorm and LayerNorm do not.",
    RULE,
    figures=("small_batch",),
)
def small_batch_claim(tables: RunTables) -> Finding:
    sel, setting, notes = grid_runs(tables.runs)
    if sel.empty or "bn" not in set(sel["arm"]):
        return no_data(notes + ["no BN run of the small-batch grid (ResNet-20, residual)"])
    sizes = Batches(int(sel["batch"].max()), int(sel["batch"].min()))
    if sizes.small == sizes.reference:  # a drop needs a batch below the reference
        notes.append(f"no run below the reference batch {sizes.reference}: no drop to measure")
        return no_data(notes)
    by_norm: dict[str, NormRuns] = {}
    for norm in NORMS:
        part = sel[sel["arm"].eq(norm)]
        if part.empty:
            by_norm[norm] = NormRuns(None)
            continue
        by_norm[norm] = at_tuned_lr(part, norm, sizes.reference, notes)
        t = by_norm[norm].tuning
        if t is not None:
            notes.append(tuning_note(t, sizes.reference))
    rows = claim_rows(by_norm, sizes)
    pts = points_table(by_norm, sizes.reference)
    drawn = [part for nr in by_norm.values() for part in nr.at.values()]
    data = {"points": pts, "runs": _figure_runs(pd.concat(drawn)) if drawn else pd.DataFrame()}
    return Finding(
        section_headline(rows),
        deciding_numbers(by_norm, pts, sizes),
        evidence_table(pts, by_norm),
        setting,
        notes,
        data,
        None if not pts.empty else (),
        rows,
    )


def _figure_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run drawn: norm, batch, seed, final test accuracy, outcome."""
    return pd.DataFrame(
        {
            "norm": runs["arm"],
            "batch": runs["batch"],
            "seed": runs[K.train.seed],
            "test_acc": runs[TEST_ACC].astype(float),
            "outcome": runs["outcome"],
        }
    ).reset_index(drop=True)


# ----------------------------------------------------------------------------- figure

SEED_JITTER = 0.06  # log2 units: seeds of one point side by side, norms apart
FAILED_MARKS = {DIVERGED: ("x", "diverged"), STUCK: ("v", "stuck")}


@figure("small_batch")
def small_batch(result: ClaimResult) -> Figure:
    pts, runs = result.data["points"], result.data["runs"]
    fig = Figure(figsize=(8.5, 6.0), layout="constrained")
    ax, strip = fig.subplots(2, 1, sharex=True, height_ratios=(4, 1))
    norms = [n for n in NORMS if n in set(pts["norm"])]
    for i, norm in enumerate(norms):
        mine = pts[pts["norm"].eq(norm)]
        lr = float(mine.loc[mine["batch"].idxmax(), K.optim.lr])
        label = f"{norm_label(norm)} (base lr {lr:g}), mean, 95% interval"
        # A point where no seed trained sits at chance by construction: the strip shows it.
        ci_errorbar(ax, mine[mine[TRAINED] > 0], "batch", norm, label)
        shift = 2 ** ((i - (len(norms) - 1) / 2) * SEED_JITTER)
        _seed_points(ax, runs[runs["norm"].eq(norm)], norm, shift)
        _failed_marks(strip, mine, norm, i, shift)
    chance_line(ax)
    ax.set_ylabel(CI_YLABEL + "\ndots: trained seeds")
    top = pts["high"].fillna(pts["mean"])
    ax.set_ylim(0, y_top(pd.concat([top, runs["test_acc"]])))
    ax.tick_params(labelbottom=False)
    legend(ax, loc="best")
    strip.set_yticks(range(len(norms)), [norm_label(n) for n in norms])
    strip.set_ylim(-0.7, len(norms) - 0.3)
    strip.set_ylabel("runs that did\nnot train")
    strip.set_title("x diverged, v stuck (< 12% test accuracy): k of n seeds", fontsize=8)
    strip.grid(alpha=0.3, axis="x")
    log_x(strip, pts["batch"], 2)
    strip.set_xlabel("true batch size b (log2); lr = base lr x b / reference batch")
    return finish(fig, result, FIGURE_WHAT)


def _seed_points(ax: Axes, runs: pd.DataFrame, norm: str, shift: float) -> None:
    """Each trained seed's final test accuracy (diverged and stuck runs: the strip)."""
    ok = runs[runs["outcome"].eq(TRAINED)]
    ax.plot(
        ok["batch"] * shift,
        100 * ok["test_acc"],
        ".",
        color=norm_colour(norm),
        alpha=0.6,
        ms=6,
        ls="none",
    )


def _failed_marks(strip: Axes, pts: pd.DataFrame, norm: str, row: int, shift: float) -> None:
    for outcome_name, (marker, _) in FAILED_MARKS.items():
        bad = pts[pts[outcome_name] > 0]
        offset = 0.15 if outcome_name == DIVERGED else -0.15
        strip.plot(
            bad["batch"] * shift,
            [row + offset] * len(bad),
            marker,
            color=norm_colour(norm),
            ms=7,
            mew=1.5,
            ls="none",
        )
        for b, k, n in zip(bad["batch"], bad[outcome_name], bad["n"], strict=True):
            strip.annotate(
                f"{int(k)}/{int(n)}",
                (b * shift, row + offset),
                xytext=(6, -3),
                textcoords="offset points",
                fontsize=7,
            )
