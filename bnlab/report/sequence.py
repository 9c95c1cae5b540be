"""The sequence-model claims (issue 26): LayerNorm, RMSNorm and BN in RNNs and a transformer.

Three sections, registered like the claims (bnlab.report.core) and decided with the same
intervals (bnlab.report.intervals), on the row-sequence models (bnlab.models.sequence:
an image's rows are the time steps of an LSTM/GRU, the tokens of a transformer):

- rnn_ln:             (a) in RNNs, LN reaches at least BN's accuracy and trains faster
                      (Ba et al. 2016, against the recurrent BN of Cooijmans et al. 2016)
- rnn_bn_time:        (b) BN in RNNs needs per-time-step statistics (shared ones lose),
                      and fails on sequences longer than those it was trained on and at
                      small batch, where LN does not (Cooijmans et al. 2016, Sec. 4-5)
- transformer_norms:  (c) in the transformer, LN and RMSNorm beat BN and no norm, and
                      RMSNorm matches LN (Shen et al. 2020; Zhang & Sennrich 2019)

What these rules add to the claims before them (written, versioned and tested on
synthetic stores before any of their runs existed):

- every arm, at every batch size and training length, at its own lr from its grid,
  picked by cross-fitting over seeds (`own_lr`): each seed's value is its run at the lr
  that the *other* seeds chose, so no result both picks its lr and measures it;
- a point whose best lr sits at an edge of its grid cannot carry a verdict that a wider
  grid could overturn (`decide`);
- an arm "trains" on its final *training* accuracy (train mode, on the rows it trained
  on): a net that fits its training rows but fails on longer test sequences, or on
  running statistics after small-batch training, did train -- that failure is claim
  (b)'s measurement, not a run that says nothing.

Accuracies are fractions internally; `numbers` gives them in % and differences in pp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator

from bnlab.config import IMAGE_ROWS, RECURRENT_ARCHS
from bnlab.report.arms import TRAINS_AT, in_pp
from bnlab.report.cells import num_ci, pct, pct_ci
from bnlab.report.claims import RULE_VALUES
from bnlab.report.core import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    ClaimResult,
    Finding,
    Rule,
    Verdict,
    compared,
    figure,
    no_data,
    section,
)
from bnlab.report.figure_kit import (
    CI_YLABEL,
    TWO_PANELS,
    band,
    chance_line,
    ci_errorbar,
    finish,
    legend,
    log_x,
    new_figure,
    y_top,
)
from bnlab.report.intervals import (
    MIN_SEEDS,
    Effect,
    contrast,
    difference,
    estimate,
    point_table,
    verdict_row,
)
from bnlab.report.keys import RUN_ID, TEST_ACC, TRAIN_ACC, K
from bnlab.report.load import RunTables
from bnlab.report.own_lr import Point, own_lr
from bnlab.report.points import epochs_to, with_acc
from bnlab.report.select import Setting, select

# ----------------------------------------------------------------------------- constants

TRANSFORMER = "transformer"
FULL_BATCH = 128  # the batch every arm's reference point is trained at
BEATS_PP = 1.0  # "beats", "loses", "fails": an accuracy effect of at least 1 pp
NO_WORSE_PP = 1.0  # "at least BN's accuracy": BN's lead over LN below 1 pp
MATCH_PP = 1.0  # "matches": the difference within +-1 pp
TARGET_FRACTION = 0.9  # "faster": epochs to 90% of the lower of the two arms' accuracies
FASTER_EPOCHS = 0.5  # ... at least half an epoch sooner

# The kinds of comparison: how an effect is judged against its bound.
BEATS, NO_WORSE, MATCHES = "beats", "no worse", "matches"

RECURRENT_BN = ("step_bn", "bn")  # per-time-step statistics (Cooijmans et al.), shared
TRANSFORMER_ARMS = ("ln", "rmsnorm", "bn", "none")
# Labels and colours (Okabe-Ito, as bnlab.report.figure_kit's) of the sequence arms.
ARM_STYLE = {
    "step_bn": ("#009E73", "per-step BN"),
    "bn": ("#0072B2", "BN"),
    "ln": ("#CC79A7", "LN"),
    "rmsnorm": ("#E69F00", "RMSNorm"),
    "none": ("#D55E00", "no norm"),
}
SHARED_BN = "shared BN"  # the recurrent cells' norm=bn: one set of statistics over time

VALUES = {
    **RULE_VALUES,
    "beats": f"{BEATS_PP:g} pp",
    "no_worse": f"{NO_WORSE_PP:g} pp",
    "match": f"{MATCH_PP:g} pp",
    "target": f"{100 * TARGET_FRACTION:g}%",
    "faster": f"{FASTER_EPOCHS:g}",
    "batch": f"{FULL_BATCH}",
}
# The part every sequence rule shares: which runs, the lr of each arm, "trains", the
# decision. (RULE_VALUES brings {chance}, {trains} and {seeds}.)
SHARED = (
    "Runs: one setting (dataset, preset, epochs, training images) and one model shape "
    "(the depth, width and heads with the most runs), init scale 1, no augmentation. "
    "A point is one arm (norm kind) at one batch size and training length, over the lr "
    "grid tried with it there. Its lr is its own and is chosen without the seed it is "
    "measured on: for each seed, the lr with the highest mean final test accuracy over "
    "the other seeds (a diverged run counting as chance, {chance}; with one seed, its "
    "own best), and that seed's run at that lr gives its value. So no run both picks its "
    "lr and measures it, and the luck of the pick does not inflate the arm (when every "
    "seed's pick is one lr, the values are that lr's runs). The point's best lr, shown, is "
    "the highest mean over all seeds; when it is the smallest or largest lr of its grid "
    "(or the only one), a verdict that this point being under-tuned would overturn is "
    "not given: INCONCLUSIVE, extend the grid. A point whose mean final training "
    "accuracy (train mode, on the rows it trained on) is below {trains} at every lr did "
    "not train: any comparison with it is INCONCLUSIVE, not a verdict (training "
    "accuracy, because failing at test time on longer sequences or with running "
    "statistics is what is measured here, not a failure to train). Effects have 95% "
    "intervals over seeds (Student t, Welch-Satterthwaite across the points combined); "
    "fewer than {seeds} seeds in a point is exploratory and never decides. A 'beats' "
    "comparison is SUPPORTED when its interval excludes zero and the effect reaches its "
    "minimum, NOT SUPPORTED when the whole interval lies below the minimum; a 'no worse' "
    "one SUPPORTED when the whole interval lies below its bound, NOT SUPPORTED when above "
    "it; a 'matches' one SUPPORTED when the whole interval lies within plus or minus its "
    "bound, NOT SUPPORTED when wholly outside; anything else INCONCLUSIVE. The headline is "
    "the comparisons' common verdict, MIXED when some are SUPPORTED and others NOT "
    "SUPPORTED."
).format(**VALUES)
VALUES["shared"] = SHARED


# ----------------------------------------------------------------------------- points

# A point is an `own_lr.Point` (`own_lr`: each seed at the lr the other seeds chose),
# its `fit` the final training accuracy.


def did_not_train(p: Point) -> str:
    return (
        f"{p.label} did not train (best mean training accuracy "
        f"{100 * p.best_fit:.1f}% < {100 * TRAINS_AT:g}% at every lr)"
    )


def judge_within(effect: Effect, bound: float) -> tuple[str, str]:
    """(verdict, reason) for a claim that two arms match: the interval within +-bound."""
    if effect.exploratory:
        return INCONCLUSIVE, f"exploratory: fewer than {MIN_SEEDS} seeds"
    if math.isnan(effect.value):
        return INCONCLUSIVE, "no effect measured"
    if -bound < effect.low and effect.high < bound:
        return SUPPORTED, f"interval within ±{bound:g}"
    if effect.low >= bound or effect.high <= -bound:
        return NOT_SUPPORTED, f"interval outside ±{bound:g}"
    return INCONCLUSIVE, "interval too wide to decide"


def decide(
    against: str,
    effect: Effect,
    terms: Sequence[tuple[int, Point]],
    kind: str,
    bound: float,
    unit: str,
) -> Verdict:
    """A verdict row for `effect`, judged as `kind` (BEATS, NO_WORSE, MATCHES) against
    `bound`. `terms`: (sign, point) for each point combined, the sign with which the
    point's performance enters the effect -- a point that did not train makes the row
    undecidable, and one at an edge of its lr grid blocks a verdict that its being
    under-tuned would overturn."""
    untrained = [p for _, p in terms if not p.trained]
    if untrained:
        return verdict_row(against, effect, bound, unit, did_not_train(untrained[0]))
    if kind == MATCHES:
        row = verdict_row(against, effect, bound, unit, rule=judge_within)
    else:
        row = verdict_row(against, effect, bound, unit, below=kind == NO_WORSE)
    if row.verdict not in (SUPPORTED, NOT_SUPPORTED):
        return row
    # A point better tuned moves the effect by its sign: which sign would overturn this?
    if kind == MATCHES:
        signs = {1, -1}
    elif kind == BEATS:
        signs = {-1 if row.verdict == SUPPORTED else 1}
    else:  # NO_WORSE: the effect is claimed small
        signs = {1 if row.verdict == SUPPORTED else -1}
    for sign, p in terms:
        if sign in signs and p.edge:
            why = f"{p.label}'s best lr is {p.edge}: a wider grid could overturn this"
            return verdict_row(against, effect, bound, unit, why)
    return row


def missing(against: str, bound: float, unit: str, needs: str) -> Verdict:
    return verdict_row(against, None, bound, unit, f"needs {needs}")


# ----------------------------------------------------------------------------- selection


@dataclass
class Family:
    """One architecture's runs of a sequence section, as points."""

    arch: str
    runs: pd.DataFrame  # with acc, fit, arm, batch and rows (trained on) columns
    setting: Setting | None
    rows: int  # the images' rows: the full sequence length
    points: dict[tuple[str, int, int], Point]  # (arm, batch, rows trained on) -> Point

    def at(self, arm: str, batch: int = FULL_BATCH, rows: int | None = None) -> Point | None:
        return self.points.get((arm, batch, self.rows if rows is None else rows))

    def variants(self, arm: str, column: str) -> list[int]:
        """The batch sizes below FULL_BATCH, on all rows (`column` "batch"), or the rows
        trained on below all of them, at FULL_BATCH ("rows"), that `arm` was run at,
        smallest first."""
        out = set()
        for a, batch, rows in self.points:
            if a == arm and column == "batch" and batch < FULL_BATCH and rows == self.rows:
                out.add(batch)
            if a == arm and column == "rows" and rows < self.rows and batch == FULL_BATCH:
                out.add(rows)
        return sorted(out)


def arch_label(arch: str) -> str:
    return arch.upper() if arch in RECURRENT_ARCHS else arch


def arm_name(arm: str, arch: str) -> str:
    if arm == "bn" and arch in RECURRENT_ARCHS:
        return SHARED_BN
    return ARM_STYLE.get(arm, (None, arm))[1]


def family(runs: pd.DataFrame, arch: str, arms: Sequence[str], notes: list[str]) -> Family | None:
    """`arch`'s finished runs in `arms`, in one setting and one model shape, as points."""
    if K.model.arch not in runs:
        return None
    fixed = {K.model.arch: arch, K.model.init_scale: 1.0, K.data.augment: False}
    sel, setting, found = select(runs, fixed, arms)
    notes += [f"{arch_label(arch)}: {n}" for n in found]
    if sel.empty or setting is None:
        return None
    sel = _one_shape(sel, arch, notes)
    rows = IMAGE_ROWS.get(str(sel[K.data.name].iloc[0]), 0)
    steps = sel.get(K.model.train_steps, pd.Series(np.nan, index=sel.index))
    trained_on = steps.fillna(rows).astype(float).clip(upper=rows).astype(int)
    sel = with_acc(with_acc(sel), TRAIN_ACC, "fit").assign(
        arm=sel[K.norm.kind].astype(str),
        batch=sel[K.data.batch_size].astype(int),
        rows=trained_on,
    )
    both = sel["batch"].ne(FULL_BATCH) & sel["rows"].ne(rows)
    if both.any():
        notes.append(
            f"{arch_label(arch)}: left out {int(both.sum())} run(s) with both a smaller "
            "batch and fewer rows trained on (each variant is compared alone)"
        )
        sel = sel[~both]
    points = {
        (arm, int(b), int(r)): own_lr(part, arm, f"{arch_label(arch)} {arm_name(arm, arch)}")
        for (arm, b, r), part in sel.groupby(["arm", "batch", "rows"], sort=True)
    }
    return Family(arch, sel, setting, rows, points)


def _one_shape(sel: pd.DataFrame, arch: str, notes: list[str]) -> pd.DataFrame:
    """The runs of the model shape (depth, width, heads) with the most runs."""
    keys = [k for k in (K.model.depth, K.model.width, K.model.heads) if k in sel]
    shapes = sel[keys].astype(float).fillna(-1).astype(str).agg("/".join, axis=1)
    counts = shapes.value_counts()
    top = max(counts.index, key=lambda s: (counts[s], s))
    if len(counts) > 1:
        notes.append(
            f"{arch_label(arch)}: left out {int((shapes != top).sum())} run(s) of another "
            "model shape (depth, width, heads)"
        )
    return sel[shapes == top]


def families(
    tables: RunTables, archs: Sequence[str], arms: Sequence[str]
) -> tuple[list[Family], Setting | None, list[str]]:
    notes: list[str] = []
    found = [f for a in archs if (f := family(tables.runs, a, arms, notes)) is not None]
    setting = found[0].setting if found else None
    for f in found[1:]:
        if f.setting and setting and f.setting.caption != setting.caption:
            notes.append(f"{arch_label(f.arch)} runs: {f.setting.caption}")
    return found, setting, notes


def points_table(fams: Sequence[Family]) -> pd.DataFrame:
    """Every grid point (arch, arm, batch, rows trained on, lr): mean acc over seeds."""
    parts = [
        point_table(f.runs, ["arm", "batch", "rows", K.optim.lr], "acc").assign(
            arch=f.arch, full_rows=f.rows
        )
        for f in fams
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def evidence_table(fams: Sequence[Family]) -> pd.DataFrame:
    """One row per point: its grid, best lr, the lr each seed was measured at, its
    cross-fitted accuracy and its best training accuracy."""
    rows = []
    for f in fams:
        for (_, batch, trained_on), p in f.points.items():
            rows.append(
                {
                    "model": arch_label(f.arch),
                    "arm": arm_name(p.arm, f.arch),
                    "batch": batch,
                    "rows trained on": f"{trained_on} of {f.rows}",
                    "lrs tried": ", ".join(f"{v:g}" for v in p.grid),
                    "best lr": f"{p.best_lr:g}" + (" (edge)" if p.edge else ""),
                    "lr per seed": p.chosen,
                    "test acc % [95% CI]": pct_ci(p.acc),
                    "train acc % (best)": f"{100 * p.best_fit:.1f}",
                }
            )
    return pd.DataFrame(rows)


def chosen_table(fams: Sequence[Family]) -> pd.DataFrame:
    """The cross-fitted estimate of every point, for the figures."""
    rows = []
    for f in fams:
        for (arm, batch, trained_on), p in f.points.items():
            e = p.acc
            rows.append(
                {
                    "arch": f.arch,
                    "arm": arm,
                    "batch": batch,
                    "rows": trained_on,
                    "full_rows": f.rows,
                    "mean": e.mean,
                    "low": e.low,
                    "high": e.high,
                    "n": e.n,
                }
            )
    return pd.DataFrame(rows)


def acc_effect(terms: Sequence[tuple[int, Point]]) -> Effect:
    """sum(sign x accuracy) over the points, in pp."""
    return in_pp(contrast([(float(s), p.acc) for s, p in terms]))


# ----------------------------------------------------------------------------- speed


# ----------------------------------------------------------------------------- (a) rnn_ln


@section(
    "rnn_ln",
    "LayerNorm in RNNs",
    (
        "In recurrent networks, LayerNorm reaches at least BN's accuracy and trains "
        "faster (Ba et al. 2016, against the recurrent BN of Cooijmans et al. 2016)."
    ),
    Rule(
        """
        model=lstm and model=gru (each decided on its own), trained at batch {batch} on
        all of the image's rows, every lr tried; arms ln and step_bn -- BN with
        statistics per time step, Cooijmans et al.'s recurrent BN, the BN this claim
        is about (BN with statistics shared over time is the foil of the next section,
        BN over time in RNNs). Two
        comparisons per model. Accuracy ('no worse'): per-step BN's final test accuracy
        minus LN's (pp), bound {no_worse}: LN reaches at least BN's accuracy when BN's
        lead is below {no_worse}. Speed ('beats'): with the target at {target} of the
        lower of the two arms' accuracies, a run's epochs to target is where its
        per-epoch test accuracy (on the fixed evaluation subset, if the runs used one)
        first reaches the target, interpolated linearly between epochs (epoch 0 counting
        as chance); a run that never reaches it counts as its planned epochs + 1; the
        effect is per-step BN's mean epochs minus LN's, minimum {faster} epoch, each
        seed's run the one its accuracy is measured on. (Epochs to a target both arms
        reach, as the convergence claim measures speed, and not the area under the
        accuracy curve: that area grows with the final accuracy too, which the first
        comparison judges on its own.) {shared}
        """,
        VALUES,
    ),
    figures=("rnn_ln_speed",),
)
def rnn_ln_section(tables: RunTables) -> Finding:
    fams, setting, notes = families(tables, RECURRENT_ARCHS, ("ln", "step_bn"))
    if not fams:
        return no_data(notes + ["no LSTM or GRU run with norm ln or step_bn yet"])
    rows: list[Verdict] = []
    numbers: dict[str, Any] = {}
    curves = []
    for f in fams:
        name = arch_label(f.arch)
        bn, ln = f.at("step_bn"), f.at("ln")
        acc_row = f"{name} accuracy: per-step BN − LN"
        speed_row = f"{name} epochs to target: per-step BN − LN"
        if bn is None or ln is None:
            needs = f"ln and step_bn at batch {FULL_BATCH} on all {f.rows} rows"
            rows += [missing(acc_row, NO_WORSE_PP, "pp", needs)]
            rows += [missing(speed_row, FASTER_EPOCHS, "epochs", needs)]
            continue
        rows.append(
            decide(
                acc_row,
                acc_effect([(1, bn), (-1, ln)]),
                [(1, bn), (-1, ln)],
                NO_WORSE,
                NO_WORSE_PP,
                "pp",
            )
        )
        target = TARGET_FRACTION * min(bn.acc.mean, ln.acc.mean)
        reach = {p.arm: epochs_to(p.runs, tables.epochs, target) for p in (bn, ln)}
        speed = difference(estimate(reach["step_bn"]["epochs"]), estimate(reach["ln"]["epochs"]))
        # Slower is worse: BN's epochs enter the effect as -performance.
        rows.append(decide(speed_row, speed, [(-1, bn), (1, ln)], BEATS, FASTER_EPOCHS, "epochs"))
        key = f.arch
        numbers |= {
            f"{key}_step_bn_acc_pct": pct(bn.acc.mean),
            f"{key}_ln_acc_pct": pct(ln.acc.mean),
            f"{key}_step_bn_best_lr": bn.best_lr,
            f"{key}_ln_best_lr": ln.best_lr,
            f"{key}_target_acc_pct": pct(target),
            f"{key}_step_bn_epochs_to_target": num_ci(estimate(reach["step_bn"]["epochs"])),
            f"{key}_ln_epochs_to_target": num_ci(estimate(reach["ln"]["epochs"])),
        }
        for p in (bn, ln):
            c = tables.epochs[tables.epochs[RUN_ID].isin(p.runs[RUN_ID])]
            curves.append(c.assign(arch=f.arch, arm=p.arm, target=target))
    data = {
        "points": points_table(fams),
        "curves": pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
    }
    return compared(rows, numbers, evidence_table(fams), setting, notes, data)


# ----------------------------------------------------------------------------- (b) rnn_bn_time


@section(
    "rnn_bn_time",
    "BN over time in RNNs",
    (
        "BN in recurrent networks needs per-time-step statistics (statistics shared over "
        "time lose), and fails on sequences longer than those it was trained on and at "
        "small batch, where LayerNorm does not (Cooijmans et al. 2016)."
    ),
    Rule(
        """
        model=lstm and model=gru (each decided on its own); arms step_bn (statistics per
        time step; beyond the last step trained on, evaluation uses the last step's), bn
        (one set of statistics shared over time; in training both normalise each step by
        its own batch statistics, so the two differ only in the running statistics they
        evaluate with) and ln. Shared statistics ('beats', for each model shared BN was
        run with): per-step BN's final test accuracy minus shared BN's, at batch {batch}
        on all rows, minimum {beats}. Longer sequences ('beats'), for each BN arm run
        with model.train_steps = T below the image's rows (the smallest such T): a net
        trained on the first T rows and tested on all of them; each arm's drop is its
        accuracy trained on all rows minus trained on T rows (both tested on all rows,
        batch {batch}), and the effect is the BN arm's drop minus LN's (pp), minimum
        {beats}. Small batch ('beats'), for each BN arm run at a batch B below {batch}
        (the smallest such B, over the lrs tried at B): each arm's drop is its accuracy
        at batch {batch} minus at batch B (all rows, the same epochs), and the effect is
        the BN arm's drop minus LN's (pp), minimum {beats}. And, for 'where LN does
        not', LN's own drop at each such T and B ('no worse'), bound {no_worse}: a claim
        that BN fails more, when LN fails too, is half true, and the verdict says so
        (MIXED). A BN arm that fits its training rows but tests at chance on longer
        sequences has trained and failed: that counts. {shared}
        """,
        VALUES,
    ),
    figures=("rnn_bn_time",),
)
def rnn_bn_time_section(tables: RunTables) -> Finding:
    fams, setting, notes = families(tables, RECURRENT_ARCHS, (*RECURRENT_BN, "ln"))
    if not fams:
        return no_data(notes + ["no LSTM or GRU run with norm bn, step_bn or ln yet"])
    rows: list[Verdict] = []
    numbers: dict[str, Any] = {}
    for f in fams:
        name = arch_label(f.arch)
        step, shared = f.at("step_bn"), f.at("bn")
        against = f"{name}: per-step − shared BN statistics"
        if not any(arm == "bn" for arm, _, _ in f.points):
            pass  # shared BN was not run with this model: nothing to compare
        elif step is None or shared is None:
            needs = f"step_bn and bn at batch {FULL_BATCH} on all {f.rows} rows"
            rows.append(missing(against, BEATS_PP, "pp", needs))
        else:
            terms = [(1, step), (-1, shared)]
            rows.append(decide(against, acc_effect(terms), terms, BEATS, BEATS_PP, "pp"))
            numbers[f"{f.arch}_per_step_minus_shared_pp"] = pct(step.acc.mean - shared.acc.mean)
        for column in ("rows", "batch"):
            rows += variant_rows(f, column, numbers)
    data = {"points": points_table(fams), "chosen": chosen_table(fams)}
    return compared(rows, numbers, evidence_table(fams), setting, notes, data)


def variant_rows(f: Family, column: str, numbers: dict[str, Any]) -> list[Verdict]:
    """Claim (b)'s rows for one variant (`column` "rows": trained on fewer rows; "batch":
    a smaller batch): each BN arm's drop minus LN's, and LN's own drop."""
    what = "longer sequences" if column == "rows" else "small batch"

    def title(small: int) -> str:
        if column == "rows":
            return f"{arch_label(f.arch)} {what} (trained on {small} of {f.rows} rows)"
        return f"{arch_label(f.arch)} {what} ({FULL_BATCH} -> {small})"

    rows: list[Verdict] = []
    ln_sizes: list[int] = []
    for bn in RECURRENT_BN:
        sizes = f.variants(bn, column)
        if not sizes:
            continue
        small = sizes[0]
        against = f"{title(small)}: {arm_name(bn, f.arch)} drop − LN drop"
        pts = {
            (arm, v): f.at(arm, **({column: small} if v else {}))
            for arm in (bn, "ln")
            for v in (False, True)
        }
        if any(p is None for p in pts.values()):
            needs = f"{arm_name(bn, f.arch)} and LN, both at the full setting and the {what}"
            rows.append(missing(against, BEATS_PP, "pp", needs))
            continue
        terms = [
            (1, pts[bn, False]),
            (-1, pts[bn, True]),
            (-1, pts["ln", False]),
            (1, pts["ln", True]),
        ]
        rows.append(decide(against, acc_effect(terms), terms, BEATS, BEATS_PP, "pp"))
        numbers[f"{f.arch}_{bn}_drop_{column}_{small}_pp"] = pct(
            pts[bn, False].acc.mean - pts[bn, True].acc.mean
        )
        if small not in ln_sizes:
            ln_sizes.append(small)
            terms = [(1, pts["ln", False]), (-1, pts["ln", True])]
            against = f"{title(small)}: LN drop"
            rows.append(decide(against, acc_effect(terms), terms, NO_WORSE, NO_WORSE_PP, "pp"))
            numbers[f"{f.arch}_ln_drop_{column}_{small}_pp"] = pct(
                pts["ln", False].acc.mean - pts["ln", True].acc.mean
            )
    return rows


# ----------------------------------------------------------------------------- (c) transformer


@section(
    "transformer_norms",
    "Norms in the transformer",
    (
        "In the transformer, LayerNorm and RMSNorm beat BN and no normalisation, and "
        "RMSNorm matches LayerNorm (Shen et al. 2020; Zhang & Sennrich 2019)."
    ),
    Rule(
        """
        model=transformer (pre-norm), batch {batch}, every lr tried; arms ln, rmsnorm,
        bn (statistics over batch x tokens, per feature) and none. Four 'beats'
        comparisons: LN minus BN, LN minus no norm, RMSNorm minus BN and RMSNorm minus
        no norm, in final test accuracy (pp), minimum {beats}. One 'matches'
        comparison: RMSNorm minus LN (pp), bound {match}. {shared}
        """,
        VALUES,
    ),
    figures=("transformer_norms",),
)
def transformer_section(tables: RunTables) -> Finding:
    fams, setting, notes = families(tables, (TRANSFORMER,), TRANSFORMER_ARMS)
    if not fams:
        return no_data(notes + ["no transformer run yet"])
    [f] = fams
    rows: list[Verdict] = []
    numbers: dict[str, Any] = {}
    at = {arm: f.at(arm) for arm in TRANSFORMER_ARMS}
    for p in at.values():
        if p is not None:
            numbers[f"{p.arm}_acc_pct"] = pct(p.acc.mean)
            numbers[f"{p.arm}_best_lr"] = p.best_lr
    pairs = [(a, b, BEATS) for a in ("ln", "rmsnorm") for b in ("bn", "none")]
    for a, b, kind in [*pairs, ("rmsnorm", "ln", MATCHES)]:
        against = f"{arm_name(a, f.arch)} − {arm_name(b, f.arch)}"
        bound = MATCH_PP if kind == MATCHES else BEATS_PP
        pa, pb = at[a], at[b]
        if pa is None or pb is None:
            rows.append(missing(against, bound, "pp", f"{a} and {b} at batch {FULL_BATCH}"))
            continue
        terms = [(1, pa), (-1, pb)]
        rows.append(decide(against, acc_effect(terms), terms, kind, bound, "pp"))
    data = {"points": points_table(fams), "chosen": chosen_table(fams)}
    return compared(rows, numbers, evidence_table(fams), setting, notes, data)


# ----------------------------------------------------------------------------- figures


def arm_colour(arm: str) -> str:
    return ARM_STYLE.get(arm, ("#000000", arm))[0]


def lr_panel(ax: Axes, pts: pd.DataFrame, where: pd.Series, arch_styles: bool = True) -> None:
    """Accuracy vs lr, one line per (arch, arm) among `where`'s points."""
    sub = pts[where]
    for (arch, arm), part in sub.groupby(["arch", "arm"], sort=True):
        ls = "--" if arch_styles and arch == "gru" else "-"
        label = f"{arch_label(arch)} {arm_name(arm, arch)}" if arch_styles else arm_name(arm, arch)
        ci_errorbar(ax, part, K.optim.lr, arm_colour(arm), label, ls=ls)
    if not sub.empty:
        log_x(ax, sub[K.optim.lr])
        ax.set_ylim(0, y_top(sub["high"].fillna(sub["mean"])))
    chance_line(ax)
    ax.set_xlabel("peak learning rate (log scale)")
    ax.set_ylabel(CI_YLABEL)
    legend(ax, loc="lower left")


def full_points(pts: pd.DataFrame) -> pd.Series:
    """The points at batch FULL_BATCH trained on all rows."""
    return pts["batch"].eq(FULL_BATCH) & pts["rows"].eq(pts["full_rows"])


@figure("rnn_ln_speed")
def rnn_ln_speed(result: ClaimResult) -> Figure:
    pts, curves = result.data["points"], result.data["curves"]
    fig, (lr_ax, curve_ax) = new_figure(TWO_PANELS, ncols=2)
    lr_panel(lr_ax, pts, full_points(pts))
    lr_ax.set_title("accuracy vs lr (solid LSTM, dashed GRU)", fontsize=9)
    if not curves.empty:
        for (arch, arm), part in curves.groupby(["arch", "arm"], sort=True):
            n = part[RUN_ID].nunique()
            label = f"{arch_label(arch)} {arm_name(arm, arch)} ({n} seed{'s' if n > 1 else ''})"
            band(curve_ax, part, TEST_ACC, arm_colour(arm), label, scale=100)
            if arch == "gru":
                curve_ax.lines[-1].set_linestyle("--")
        for arch, part in curves.groupby("arch"):
            target = 100 * float(part["target"].iloc[0])
            curve_ax.axhline(
                target,
                color="0.3",
                ls=":" if arch == "gru" else "--",
                lw=1,
                label=f"{arch_label(arch)} target {target:.1f}%",
            )
    curve_ax.set_xlabel("epoch")
    curve_ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    curve_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    curve_ax.grid(alpha=0.3)
    curve_ax.set_title("test accuracy per epoch, each seed at its own lr", fontsize=9)
    legend(curve_ax, loc="lower right")
    return finish(fig, result, "LN vs per-step BN")


@figure("rnn_bn_time")
def rnn_bn_time(result: ClaimResult) -> Figure:
    pts, chosen = result.data["points"], result.data["chosen"]
    fig = Figure(figsize=(15.0, 4.6), layout="constrained")
    lr_ax, rows_ax, batch_ax = fig.subplots(1, 3)
    lr_panel(lr_ax, pts, full_points(pts))
    lr_ax.set_title(f"batch {FULL_BATCH}, all rows: accuracy vs lr", fontsize=9)
    # The variants: each arm at its own lr, the full point against the shorter / smaller.
    for ax, column, xlabel in (
        (rows_ax, "rows", "rows trained on (tested on all)"),
        (batch_ax, "batch", "batch size (log2)"),
    ):
        for (arch, arm), part in chosen.groupby(["arch", "arm"], sort=True):
            full_rows = int(part["full_rows"].iloc[0])
            other = "batch" if column == "rows" else "rows"
            other_full = FULL_BATCH if other == "batch" else full_rows
            line = part[part[other].eq(other_full)]
            if len(line) < 2:
                continue
            ls = "--" if arch == "gru" else "-"
            label = f"{arch_label(arch)} {arm_name(arm, arch)}"
            ci_errorbar(ax, line, column, arm_colour(arm), label, ls=ls)
        if column == "batch" and not chosen.empty:
            log_x(ax, chosen["batch"], 2)
        elif not chosen.empty:
            ax.xaxis.set_major_locator(FixedLocator(sorted(set(chosen["rows"]))))
        chance_line(ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("final test accuracy (%), each seed at its own lr\n(95% interval)")
        ax.set_ylim(0, 102)
        legend(ax, loc="lower left")
    rows_ax.set_title("longer sequences than trained on", fontsize=9)
    batch_ax.set_title("small batch (the same epochs)", fontsize=9)
    return finish(fig, result, "shared vs per-step statistics, longer sequences, small batch")


@figure("transformer_norms")
def transformer_norms(result: ClaimResult) -> Figure:
    pts, chosen = result.data["points"], result.data["chosen"]
    fig, (lr_ax, bar_ax) = new_figure(TWO_PANELS, ncols=2)
    lr_panel(lr_ax, pts, full_points(pts), arch_styles=False)
    lr_ax.set_title("accuracy vs lr", fontsize=9)
    full = chosen[chosen["batch"].eq(FULL_BATCH)]
    arms = [a for a in TRANSFORMER_ARMS if a in set(full["arm"])]
    for i, arm in enumerate(arms):
        row = full[full["arm"].eq(arm)].iloc[0]
        half = 0.0 if pd.isna(row["high"]) else 100 * (row["high"] - row["mean"])
        hollow = int(row["n"]) < MIN_SEEDS
        bar_ax.bar(
            i,
            100 * row["mean"],
            0.6,
            yerr=half,
            capsize=4,
            color="white" if hollow else arm_colour(arm),
            edgecolor=arm_colour(arm),
            lw=1.5,
        )
        bar_ax.annotate(
            f"{100 * row['mean']:.1f}",
            (i, 100 * row["mean"] + half),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    bar_ax.set_xticks(range(len(arms)), [arm_name(a, TRANSFORMER) for a in arms])
    chance_line(bar_ax)
    bar_ax.set_ylim(0, 102)
    bar_ax.set_ylabel("final test accuracy (%), each seed at its own lr\n(95% interval)")
    bar_ax.set_title("each arm at its own lr (hollow: < 3 seeds)", fontsize=9)
    return finish(fig, result, "LN, RMSNorm, BN and no norm")
