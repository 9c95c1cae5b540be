"""The seven claims, and the normalisers side by side: one registered function each.

Each claim compares BN with no-BN arms that train -- Fixup (Zhang et al. 2019) and
SkipInit (De & Smith 2020) -- and, as a third, "naive" line, the He-init net without
normalisation. Every comparison is a `Verdict` row of its own ("vs Fixup", ...), decided
by `intervals.judge` from seeds: an effect with its 95% interval against the minimum
effect the rule states; fewer than 3 seeds is exploratory and never decides. A
comparison against an arm that never trains (best mean accuracy below {trains}) says
nothing and is INCONCLUSIVE. The section's headline is `core.overall` of its rows.

The rules were written, and tested on synthetic stores, before the runs they judge
(rule version 3 for lr/convergence/batch, 2 for the others; the earlier versions stay
computable in bnlab.report.superseded and are shown beside).

Accuracies are fractions internally; `numbers` gives them in % and differences in
percentage points (pp), with the unit in the key name.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from bnlab.report.arms import (
    AGAINST,
    BN,
    NO_BN_ARMS,
    STATISTICS_BATCH,
    TRAINS_AT,
    at_own_lr,
    estimate_at,
    in_pp,
    never_trains,
    select_arms,
    statistics_batch_runs,
)
from bnlab.report.cells import ci_cells, ci_table, num_ci, pct, pct_ci, pp_ci, round2
from bnlab.report.core import (
    DESCRIPTIVE,
    Finding,
    Rule,
    Verdict,
    compared,
    no_data,
    overall,
    section,
    superseded,
)
from bnlab.report.intervals import (
    MIN_SEEDS,
    contrast,
    difference,
    estimate,
    point_table,
    verdict_row,
)
from bnlab.report.keys import BN_EVAL_RUNNING, EPOCH, RUN_ID, TEST_ACC, TRAIN_ACC, TRAIN_LOSS, K
from bnlab.report.load import RunTables
from bnlab.report.points import CHANCE_ACC, epochs_to, pivot, with_acc
from bnlab.report.probe_maths import bn_eval_long
from bnlab.report.select import arm_labels, bn_eval_probed, linear_lr, recipe_without, select

# ----------------------------------------------------------------------------- constants

LR_TRAINS_MARGIN = 0.05  # an lr trains for a seed: within 5 pp of its arm's best mean
LR_MIN_FACTOR = 2.0  # the lr claim needs BN's largest lr at least 2x the arm's
DEPTH_MIN_PP = 2.0  # the arm loses at least 2 pp more than BN from depth 20 to the deepest
CONV_TARGET_FRACTION = 0.9  # target: 90% of the lower of the two arms' best accuracies
CONV_MIN_EPOCHS = 0.5
INIT_MIN_PP = 2.0  # the arm's spread over init scales exceeds BN's by at least 2 pp
REG_MIN_PP = 1.0  # BN's gap at matched training loss is at least 1 pp smaller
INFERENCE_MIN_PP = 1.0
BATCH_MIN_PP = 1.0  # BN with 128-sample statistics beats its smallest-g twin by 1 pp
INFERENCE_EVAL_BATCH = 2  # the eval batch whose own statistics BN is judged with

# The ICS study's noise injections: instruments, not normalisers for the norms table.
NOISE_DEVICES = ("bn_noisy", "none_noisy")

RULE_VALUES = {
    "trains": f"{100 * TRAINS_AT:g}%",
    "chance": f"{100 * CHANCE_ACC:g}%",
    "seeds": f"{MIN_SEEDS}",
    "lr_margin": f"{100 * LR_TRAINS_MARGIN:g} pp",
    "lr_factor": f"{LR_MIN_FACTOR:g}x",
    "depth_min": f"{DEPTH_MIN_PP:g} pp",
    "target": f"{100 * CONV_TARGET_FRACTION:g}%",
    "min_epochs": f"{CONV_MIN_EPOCHS:g}",
    "init_min": f"{INIT_MIN_PP:g} pp",
    "reg_min": f"{REG_MIN_PP:g} pp",
    "inference_min": f"{INFERENCE_MIN_PP:g} pp",
    "batch_min": f"{BATCH_MIN_PP:g} pp",
    "eval_batch": f"{INFERENCE_EVAL_BATCH}",
}
# Every versioned rule of this module ends with the shared decision rule.
DECISION = (
    "Each comparison is decided from seeds: the effect's 95% interval (Student t; "
    "Welch-Satterthwaite for effects combining several points) must exclude zero in "
    "the claimed direction and the effect reach the stated minimum for SUPPORTED; an "
    "interval wholly below the minimum is NOT SUPPORTED; anything else, or fewer than "
    "{seeds} seeds in a group (exploratory: drawn, never deciding), or an arm that "
    "never trains (best mean below {trains}), is INCONCLUSIVE. The headline is the "
    "comparisons' common verdict, MIXED when some are SUPPORTED and others NOT "
    "SUPPORTED."
).format(**RULE_VALUES)
RULE_VALUES["decision"] = DECISION


# ----------------------------------------------------------------------------- lr


@superseded(
    "lr",
    Rule(
        """
        Runs: ResNet-20, residual, init scale 1, augmentation, batch 128, any optim.lr;
        arms bn, fixup, skipinit and none (He init, the naive line). For each arm, its best
        lr is the one with the highest mean final test accuracy (a diverged run counting
        as chance, {chance}). For each seed, its largest lr that trains is the largest lr
        tried with every arm compared at which that seed's run did not diverge, reached
        {trains} and came within {lr_margin} of its arm's best mean. The effect against an
        arm is log2 of BN's largest lr over the arm's (mean over seeds of log2 lr: the
        ratio of geometric means), minimum log2 {lr_factor} = 1. INCONCLUSIVE as well when
        fewer than 3 learning rates were tried with both, when a seed of BN trains at the
        largest lr tried and the effect is not already SUPPORTED, or when a seed of the arm
        does and the effect is not already NOT SUPPORTED (the grid stops before the limit).
        {decision}
        """,
        RULE_VALUES,
        version=3,
    ),
)
def lr_claim(tables: RunTables) -> Finding:
    sel, setting, notes = select_arms(tables.runs, [K.optim.lr], (BN, *NO_BN_ARMS))
    if sel.empty or BN not in set(sel["arm"]):
        return no_data(notes)
    pts = point_table(sel, ["arm", K.optim.lr], "acc")
    pts["diverged"] = _per_point(sel, ["arm", K.optim.lr], "diverged", pts, "sum")
    best = {a: float(p["mean"].max()) for a, p in pts.groupby("arm")}
    best_lr = {a: float(p.loc[p["mean"].idxmax(), K.optim.lr]) for a, p in pts.groupby("arm")}
    numbers: dict[str, Any] = {f"{a}_best_lr": best_lr[a] for a in best_lr}
    numbers |= {f"{a}_best_acc_pct": pct(best[a]) for a in best}
    rows: list[Verdict] = []
    largest_by_arm: dict[str, dict[int, float]] = {}
    for arm in [a for a in NO_BN_ARMS if a in best]:
        lrs = sorted(
            set(sel.loc[sel["arm"].eq(BN), K.optim.lr])
            & set(sel.loc[sel["arm"].eq(arm), K.optim.lr])
        )
        both = sel[sel[K.optim.lr].isin(lrs)]
        largest = {a: _largest_trainable(both[both["arm"].eq(a)], best[a]) for a in (BN, arm)}
        largest_by_arm |= {a: largest[a] for a in (BN, arm)}
        if len(lrs) < 3:
            rows.append(
                verdict_row(
                    AGAINST[arm],
                    None,
                    1.0,
                    "log2 lr",
                    f"needs 3 learning rates tried with both, found {len(lrs)}",
                )
            )
            continue
        if best[arm] < TRAINS_AT:
            rows.append(verdict_row(AGAINST[arm], None, 1.0, "log2 lr", never_trains(best[arm])))
            continue
        logs = {a: estimate(math.log2(v) for v in largest[a].values() if v > 0) for a in (BN, arm)}
        effect = difference(logs[BN], logs[arm])
        row = verdict_row(AGAINST[arm], effect, 1.0, "log2 lr")
        top = max(lrs)
        bn_capped = any(v == top for v in largest[BN].values())
        arm_capped = any(v == top for v in largest[arm].values())
        if (bn_capped and row.verdict != "SUPPORTED") or (
            arm_capped and row.verdict != "NOT SUPPORTED"
        ):
            row = verdict_row(
                AGAINST[arm],
                effect,
                1.0,
                "log2 lr",
                f"a seed trains at the largest lr tried ({top:g}): extend the grid",
            )
        rows.append(row)
        numbers[f"bn_over_{arm}_largest_lr_factor"] = round2(2**effect.value)
    numbers |= {
        f"{a}_largest_lr_per_seed": [largest_by_arm[a][s] for s in sorted(largest_by_arm[a])]
        for a in largest_by_arm
    }
    evidence = pd.DataFrame(
        {
            "arm": pts["arm"],
            "lr": pts[K.optim.lr].map(lambda v: f"{v:g}"),
            "diverged": [
                f"{int(d)}/{int(n)}" for d, n in zip(pts["diverged"], pts["n"], strict=True)
            ],
            "test acc % [95% CI]": ci_cells(pts),
        }
    )
    return compared(rows, numbers, evidence, setting, notes, {"points": pts})


def _largest_trainable(runs: pd.DataFrame, best: float) -> dict[int, float]:
    """Per seed: the largest lr whose run trains (0 when none does)."""
    out: dict[int, float] = {}
    ok = runs[
        ~runs["diverged"] & (runs["acc"] >= TRAINS_AT) & (runs["acc"] >= best - LR_TRAINS_MARGIN)
    ]
    for seed in sorted(set(runs[K.train.seed])):
        lrs = ok.loc[ok[K.train.seed].eq(seed), K.optim.lr]
        out[int(seed)] = float(lrs.max()) if not lrs.empty else 0.0
    return out


def _per_point(
    per_run: pd.DataFrame, keys: list[str], column: str, pts: pd.DataFrame, how: str
) -> np.ndarray:
    agg = per_run.groupby(keys, dropna=False)[column].agg(how).rename(column).reset_index()
    return pts[keys].merge(agg, on=keys, how="left")[column].to_numpy()


# ----------------------------------------------------------------------------- depth


@superseded(
    "depth",
    Rule(
        """
        Runs: ResNets of any depth, residual and plain, init scale 1, augmentation, batch
        128; arms bn, fixup, skipinit (residual only: they scale residual branches) and
        none (He init). Each arm at its own lr: the lr with the best mean final test
        accuracy at depth 20 among those tried at depth 20 and at the deepest depth tried
        with that arm. Final test accuracy, a diverged run counting as chance ({chance}).
        An arm's depth cost is its accuracy at depth 20 minus at the deepest depth both it
        and BN were tried at (in the same architecture). The effect against an arm is the
        arm's depth cost minus BN's (pp, from the four points), minimum {depth_min}: BN
        makes depth trainable where the arm loses more with depth. An arm that does not
        train at depth 20 has no depth cost to measure (INCONCLUSIVE). {decision}
        """,
        RULE_VALUES,
        version=2,
    ),
)
def depth_claim(tables: RunTables) -> Finding:
    sel, setting, notes = select_arms(
        tables.runs, [K.model.depth, K.model.residual, K.optim.lr], (BN, *NO_BN_ARMS)
    )
    if sel.empty or BN not in set(sel["arm"]):
        return no_data(notes)
    sel = at_own_lr(sel, notes)
    pts = point_table(sel, [K.model.residual, "arm", K.model.depth], "acc")
    rows: list[Verdict] = []
    numbers: dict[str, Any] = {}
    for residual in (True, False):
        arch = "residual" if residual else "plain"
        sub = sel[sel[K.model.residual].eq(residual)]
        bn_depths = set(sub.loc[sub["arm"].eq(BN), K.model.depth])
        for arm in [a for a in NO_BN_ARMS if a in set(sub["arm"])]:
            depths = sorted(bn_depths & set(sub.loc[sub["arm"].eq(arm), K.model.depth]))
            against = f"{AGAINST[arm]} ({arch})"
            if 20 not in depths or len(depths) < 2:
                rows.append(
                    verdict_row(
                        against,
                        None,
                        DEPTH_MIN_PP,
                        "pp",
                        f"needs depth 20 and a deeper one, found {depths}",
                    )
                )
                continue
            deep = depths[-1]
            e = {
                (a, d): estimate_at(sub, {"arm": a, K.model.depth: d})
                for a in (BN, arm)
                for d in (20, deep)
            }
            if e[arm, 20].mean < TRAINS_AT:
                rows.append(
                    verdict_row(against, None, DEPTH_MIN_PP, "pp", never_trains(e[arm, 20].mean))
                )
                continue
            effect = contrast(
                [(1, e[arm, 20]), (-1, e[arm, deep]), (-1, e[BN, 20]), (1, e[BN, deep])]
            )
            rows.append(verdict_row(against, in_pp(effect), DEPTH_MIN_PP, "pp"))
            numbers |= {
                f"{arch}_{arm}_depth_cost_20_to_{int(deep)}_pp": pct(
                    e[arm, 20].mean - e[arm, deep].mean
                ),
                f"{arch}_bn_depth_cost_20_to_{int(deep)}_pp": pct(
                    e[BN, 20].mean - e[BN, deep].mean
                ),
            }
    arch = pts[K.model.residual].map({True: "residual", False: "plain"})
    evidence = ci_table(
        pts.assign(architecture=arch), ["architecture", "arm"], K.model.depth, "depth {:g} acc %"
    )
    return compared(rows, numbers, evidence, setting, notes, {"points": pts})


# ----------------------------------------------------------------------------- convergence


def with_curves(
    sel: pd.DataFrame, epochs: pd.DataFrame, notes: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs of `sel` with per-epoch metrics, and those metrics (`epochs`' rows of
    them): a run without metrics.csv is left out, with a note."""
    curves = epochs[epochs[RUN_ID].isin(sel[RUN_ID])]
    no_curve = ~sel[RUN_ID].isin(curves[RUN_ID])
    if no_curve.any():
        notes.append(f"left out {int(no_curve.sum())} run(s) without metrics.csv")
        sel = sel[~no_curve]
    return sel, curves


@superseded(
    "convergence",
    Rule(
        """
        Runs: ResNet-20, residual, init scale 1, augmentation, batch 128, with per-epoch
        metrics; arms bn, fixup, skipinit, none (He init). Each arm at its best lr (the
        highest mean final test accuracy, a diverged run counting as chance). Against an
        arm, the target is {target} of the lower of the two arms' best mean accuracies.
        A run's epochs to target: where its per-epoch test accuracy (on the fixed
        evaluation subset, if the runs used one) first reaches the target, interpolated
        linearly between epochs (epoch 0 counting as chance); a run that never reaches it
        counts as its planned epochs + 1 (censored). The effect is the arm's mean epochs
        minus BN's, minimum {min_epochs} epoch. {decision}
        """,
        RULE_VALUES,
        version=3,
    ),
)
def convergence_claim(tables: RunTables) -> Finding:
    sel, setting, notes = select_arms(tables.runs, [K.optim.lr], (BN, *NO_BN_ARMS))
    sel, curves = with_curves(sel, tables.epochs, notes)
    if sel.empty or BN not in set(sel["arm"]):
        return no_data(notes)
    means = sel.groupby(["arm", K.optim.lr])["acc"].mean()
    best_lr = {a: float(means[a].idxmax()) for a in means.index.get_level_values(0).unique()}
    best = {a: float(means[a].max()) for a in best_lr}
    at_best = sel[[best_lr[a] == lr for a, lr in zip(sel["arm"], sel[K.optim.lr], strict=True)]]
    rows: list[Verdict] = []
    numbers: dict[str, Any] = {f"{a}_best_lr": best_lr[a] for a in best_lr}
    table = []
    for arm in [a for a in NO_BN_ARMS if a in best]:
        if best[arm] < TRAINS_AT:
            rows.append(
                verdict_row(AGAINST[arm], None, CONV_MIN_EPOCHS, "epochs", never_trains(best[arm]))
            )
            continue
        target = CONV_TARGET_FRACTION * min(best[BN], best[arm])
        reach = {a: epochs_to(at_best[at_best["arm"].eq(a)], curves, target) for a in (BN, arm)}
        effect = difference(estimate(reach[arm]["epochs"]), estimate(reach[BN]["epochs"]))
        rows.append(verdict_row(AGAINST[arm], effect, CONV_MIN_EPOCHS, "epochs"))
        numbers[f"{arm}_target_acc_pct"] = pct(target)
        for a in (BN, arm):
            e = estimate(reach[a]["epochs"])
            table.append(
                {
                    "against": AGAINST[arm],
                    "arm": a,
                    "lr": f"{best_lr[a]:g}",
                    "target acc %": f"{100 * target:.1f}",
                    "reached": f"{int(reach[a]['reached'].sum())}/{e.n}",
                    "epochs to target [95% CI]": num_ci(e),
                }
            )
    ids = at_best[[RUN_ID, "arm", K.optim.lr]].rename(columns={"arm": K.norm.kind})
    data = {"curves": curves.merge(ids, on=RUN_ID)}
    numbers["curve_lr"] = "each arm at its best lr"
    return compared(rows, numbers, pd.DataFrame(table), setting, notes, data)


# ----------------------------------------------------------------------------- init


@section(
    "init",
    "Initialisation",
    "BN reduces sensitivity to the weight initialisation scale.",
    Rule(
        """
        Runs: ResNet-20, residual, augmentation, batch 128, lr 0.1, any model.init_scale
        (every conv/linear weight multiplied by it after init); arms bn, fixup, skipinit,
        none (He init). Final test accuracy, a diverged run counting as chance ({chance}).
        Over the scales tried with both BN and the arm (at least 2), each arm's spread is
        the mean accuracy at its best scale minus at its worst. The effect against an arm
        is the arm's spread minus BN's (pp, from the four points), minimum {init_min}.
        {decision}
        """,
        RULE_VALUES,
        version=2,
    ),
    figures=("init_accuracy",),
)
def init_claim(tables: RunTables) -> Finding:
    key = K.model.init_scale
    sel, setting, notes = select_arms(tables.runs, [key], (BN, *NO_BN_ARMS))
    if sel.empty or BN not in set(sel["arm"]):
        return no_data(notes)
    pts = point_table(sel, ["arm", key], "acc")
    rows: list[Verdict] = []
    numbers: dict[str, Any] = {}
    for arm in [a for a in NO_BN_ARMS if a in set(pts["arm"])]:
        scales = sorted(
            set(pts.loc[pts["arm"].eq(BN), key]) & set(pts.loc[pts["arm"].eq(arm), key])
        )
        if len(scales) < 2:
            rows.append(
                verdict_row(
                    AGAINST[arm],
                    None,
                    INIT_MIN_PP,
                    "pp",
                    f"needs 2 init scales tried with both, found {scales}",
                )
            )
            continue
        ends = {}
        for a in (BN, arm):
            sub = pts[pts["arm"].eq(a) & pts[key].isin(scales)]
            hi, lo = sub.loc[sub["mean"].idxmax(), key], sub.loc[sub["mean"].idxmin(), key]
            ends[a] = (
                estimate_at(sel, {"arm": a, key: float(hi)}),
                estimate_at(sel, {"arm": a, key: float(lo)}),
            )
            numbers[f"{a}_spread_pp"] = pct(ends[a][0].mean - ends[a][1].mean)
        if ends[arm][0].mean < TRAINS_AT:
            rows.append(
                verdict_row(AGAINST[arm], None, INIT_MIN_PP, "pp", never_trains(ends[arm][0].mean))
            )
            continue
        effect = contrast(
            [(1, ends[arm][0]), (-1, ends[arm][1]), (-1, ends[BN][0]), (1, ends[BN][1])]
        )
        rows.append(verdict_row(AGAINST[arm], in_pp(effect), INIT_MIN_PP, "pp"))
    evidence = pivot(pts, key, "init scale", by="arm", order=(BN, *NO_BN_ARMS))
    return compared(rows, numbers, evidence, setting, notes, {"points": pts})


# ----------------------------------------------------------------------------- regularization


@section(
    "regularization",
    "Regularisation",
    "BN regularises mildly.",
    Rule(
        """
        Runs: ResNet-20, residual, init scale 1, batch 128, lr 0.1, without augmentation
        (where a net can overfit 5k images); arms bn, fixup, skipinit, none (He init).
        A regulariser narrows the train-test gap at the same fit of the training data, so
        the gap is compared at matched training loss: the level is the highest last-epoch
        training loss among the two arms' runs (every run gets down to it); a run's train
        and test accuracy at that level are interpolated linearly between the epochs where
        its training loss crosses it (per-epoch test accuracy on the evaluation subset, if
        the runs used one); gap = train - test accuracy there. The effect against an arm
        is the arm's mean gap minus BN's (pp), minimum {reg_min}. Diverged runs are left
        out (they have no gap). {decision}
        """,
        RULE_VALUES,
        version=2,
    ),
    figures=("regularization_gap",),
)
def regularization_claim(tables: RunTables) -> Finding:
    sel, setting, notes = select_arms(
        tables.runs, [K.data.augment], (BN, *NO_BN_ARMS), tables.runs[K.data.augment].eq(False)
    )
    if sel.empty or BN not in set(sel["arm"]):
        return no_data(notes)
    if sel["diverged"].any():
        notes.append(f"left out {int(sel['diverged'].sum())} diverged run(s)")
    sel = sel[~sel["diverged"]]
    curves = tables.epochs[tables.epochs[RUN_ID].isin(sel[RUN_ID])]
    rows: list[Verdict] = []
    numbers: dict[str, Any] = {}
    points = []
    for arm in [a for a in NO_BN_ARMS if a in set(sel["arm"])]:
        pair = sel[sel["arm"].isin([BN, arm])]
        best = pair[pair["arm"].eq(arm)]["acc"].mean()
        if best < TRAINS_AT:
            rows.append(verdict_row(AGAINST[arm], None, REG_MIN_PP, "pp", never_trains(best)))
            continue
        level = float(pair[TRAIN_LOSS].max())
        gaps = {a: _gap_at(pair[pair["arm"].eq(a)], curves, level) for a in (BN, arm)}
        effect = difference(estimate(gaps[arm]["gap"]), estimate(gaps[BN]["gap"]))
        rows.append(verdict_row(AGAINST[arm], in_pp(effect), REG_MIN_PP, "pp"))
        numbers[f"{arm}_matched_train_loss"] = round(level, 3)
        for a in (BN, arm):
            g = gaps[a]
            points.append(
                {
                    "against": AGAINST[arm],
                    "arm": a,
                    "train loss": round(level, 3),
                    "mean": g["gap"].mean(),
                    "n": len(g),
                    "gap pp [95% CI]": pp_ci(estimate(g["gap"])),
                    "train acc %": f"{100 * g['train_acc'].mean():.1f}",
                    "test acc %": f"{100 * g['test_acc'].mean():.1f}",
                    "final test acc % [95% CI]": pct_ci(estimate_at(sel, {"arm": a})),
                }
            )
    if not rows:
        rows.append(
            verdict_row(
                "vs no-BN arms", None, REG_MIN_PP, "pp", "no no-BN arm was run without augmentation"
            )
        )
    evidence = pd.DataFrame(points).drop(columns=["mean", "n"], errors="ignore")
    data = {"points": pd.DataFrame(points)}
    figures = None if points else ()
    return compared(rows, numbers, evidence, setting, notes, data, figures)


def _gap_at(runs: pd.DataFrame, curves: pd.DataFrame, level: float) -> pd.DataFrame:
    """Per run: train and test accuracy where its training loss first reaches `level`."""
    out = []
    for run_id in runs[RUN_ID]:
        c = curves[curves[RUN_ID].eq(run_id)].sort_values(EPOCH)
        loss, tr, te = (c[k].to_numpy(dtype=float) for k in (TRAIN_LOSS, TRAIN_ACC, TEST_ACC))
        i = int(np.argmax(loss <= level)) if (loss <= level).any() else len(loss) - 1
        if i == 0 or loss[i] == loss[i - 1]:
            train_acc, test_acc = tr[i], te[i]
        else:
            w = (loss[i - 1] - level) / (loss[i - 1] - loss[i])
            train_acc, test_acc = (
                tr[i - 1] + w * (tr[i] - tr[i - 1]),
                te[i - 1] + w * (te[i] - te[i - 1]),
            )
        out.append(
            {
                RUN_ID: run_id,
                TRAIN_ACC: train_acc,
                TEST_ACC: test_acc,
                "gap": train_acc - test_acc,
            }
        )
    return pd.DataFrame(out, columns=[RUN_ID, TRAIN_ACC, TEST_ACC, "gap"])


# ----------------------------------------------------------------------------- batch


@superseded(
    "batch",
    Rule(
        """
        Decided on the statistics batch alone: runs of ResNet-20, residual, init scale 1,
        augmentation, optimisation batch 128, lr 0.1 (the same steps for all), norm bn
        (statistics over all 128 samples) or ghost_bn (statistics over each group of
        norm.virtual_batch = g samples). Final test accuracy with the running averages,
        a diverged run counting as chance ({chance}). The effect is the accuracy with
        128-sample statistics minus with the smallest g tried (pp), minimum {batch_min}:
        BN degrades when its statistics come from few samples. GroupNorm and LayerNorm
        compute no batch statistics, so in this experiment they cannot degrade by
        construction (the alternatives section compares them with BN). Shown beside,
        exploratory unless it has {seeds} seeds: Wu & He's own protocol (the true batch b
        for BN and GN, lr 0.1 x b/128, the same epochs, so small batches also take more
        steps), as BN's drop from the largest to the smallest batch minus GN's.
        {decision}
        """,
        RULE_VALUES,
        version=3,
    ),
)
def batch_claim(tables: RunTables) -> Finding:
    sel, setting, notes = statistics_batch_runs(tables.runs)
    if sel.empty:
        return no_data(notes)
    pts = point_table(sel[sel["stat_batch"].notna()], ["stat_batch"], "acc")
    rows: list[Verdict] = []
    numbers: dict[str, Any] = {}
    sizes = sorted(set(pts["stat_batch"]))
    if STATISTICS_BATCH not in sizes or len(sizes) < 2:
        rows.append(
            verdict_row(
                f"statistics batch {STATISTICS_BATCH} vs smaller",
                None,
                BATCH_MIN_PP,
                "pp",
                f"needs {STATISTICS_BATCH} and a smaller statistics batch, found {sizes}",
            )
        )
    else:
        small = sizes[0]
        big_e = estimate_at(sel, {"stat_batch": float(STATISTICS_BATCH)})
        small_e = estimate_at(sel, {"stat_batch": float(small)})
        effect = in_pp(difference(big_e, small_e))
        rows.append(
            verdict_row(
                f"statistics batch {STATISTICS_BATCH} vs {int(small)}", effect, BATCH_MIN_PP, "pp"
            )
        )
        numbers |= {
            "smallest_statistics_batch": int(small),
            "bn_acc_128_pct": pct(big_e.mean),
            "bn_acc_smallest_pct": pct(small_e.mean),
        }
    protocol, protocol_row = _wu_he(tables.runs)
    if protocol_row is not None:
        rows.append(protocol_row)
    evidence = pd.DataFrame(
        {"statistics batch g": pts["stat_batch"].astype(int), "test acc % [95% CI]": ci_cells(pts)}
    )
    data = {"points": pts, "protocol": protocol}
    decided = [r for r in rows if not r.against.startswith("Wu & He")]
    return Finding(overall(decided), numbers, evidence, setting, notes, data, comparisons=rows)


def _wu_he(runs: pd.DataFrame) -> tuple[pd.DataFrame, Verdict | None]:
    """Wu & He's protocol: true batch b for BN and GN, lr 0.1 b/128. Its points, and BN's
    drop from the largest to the smallest batch minus GN's (a Verdict row)."""
    fixed = recipe_without(K.optim.lr, K.data.batch_size)
    sel, _, _ = select(runs, fixed, ("bn", "gn"), linear_lr(runs))
    if sel.empty:
        return pd.DataFrame(), None
    sel = with_acc(sel)
    pts = point_table(sel, [K.norm.kind, K.data.batch_size], "acc")
    sizes = sorted(
        set(sel.loc[sel[K.norm.kind].eq("bn"), K.data.batch_size])
        & set(sel.loc[sel[K.norm.kind].eq("gn"), K.data.batch_size])
    )
    if len(sizes) < 2:
        return pts, None
    lo, hi = sizes[0], sizes[-1]
    e = {
        (n, b): estimate_at(sel, {K.norm.kind: n, K.data.batch_size: b})
        for n in ("bn", "gn")
        for b in (lo, hi)
    }
    effect = contrast([(1, e["bn", hi]), (-1, e["bn", lo]), (-1, e["gn", hi]), (1, e["gn", lo])])
    row = verdict_row(
        f"Wu & He protocol: BN drop minus GN drop, batch {int(hi)} to {int(lo)}",
        in_pp(effect),
        BATCH_MIN_PP,
        "pp",
    )
    return pts, row


# ----------------------------------------------------------------------------- inference


@section(
    "inference",
    "Inference statistics",
    (
        "BN needs its running averages at inference: normalising with the statistics of "
        "small eval batches costs accuracy."
    ),
    Rule(
        """
        Runs: ResNet-20 with BN, residual, init scale 1, augmentation, lr 0.1 x batch/128,
        completed, with the bn_eval probe (probe.bn_eval_batch_sizes). For each training
        batch size: test accuracy with the running statistics, and with each eval batch's
        own statistics at each eval batch size. The effect is running-statistics accuracy
        minus batch-statistics accuracy at eval batch {eval_batch} (pp; the smallest tried
        if {eval_batch} was not), at each training batch size, minimum {inference_min}; the
        headline combines the training batch sizes like arms. {decision}
        """,
        RULE_VALUES,
        version=2,
    ),
    figures=("inference_accuracy",),
)
def inference_claim(tables: RunTables) -> Finding:
    runs = tables.runs
    extra = bn_eval_probed(runs)
    fixed = recipe_without(K.optim.lr, K.data.batch_size)
    sel, setting, notes = select(runs, fixed, (BN,), extra)
    if sel.empty:
        return no_data(notes)
    long = bn_eval_long(sel)
    pts = point_table(long, [K.data.batch_size, "eval_batch"], "acc")
    running = point_table(sel, [K.data.batch_size], BN_EVAL_RUNNING)
    rows: list[Verdict] = []
    table = []
    numbers: dict[str, Any] = {}
    for batch, sub in long.groupby(K.data.batch_size):
        sizes = sorted(set(sub["eval_batch"]))
        size = INFERENCE_EVAL_BATCH if INFERENCE_EVAL_BATCH in sizes else sizes[0]
        run_e = estimate(sel.loc[sel[K.data.batch_size].eq(batch), BN_EVAL_RUNNING])
        for s in sizes:
            e = estimate(sub.loc[sub["eval_batch"].eq(s), "acc"])
            table.append(
                {
                    "train batch": int(batch),
                    "eval batch": int(s),
                    "batch-stats acc % [95% CI]": pct_ci(e),
                    "running-stats acc % [95% CI]": pct_ci(run_e),
                    "running - batch (pp)": f"{100 * (run_e.mean - e.mean):+.1f}",
                }
            )
        effect = difference(run_e, estimate(sub.loc[sub["eval_batch"].eq(size), "acc"]))
        rows.append(
            verdict_row(
                f"train batch {int(batch)}, eval batch {size}",
                in_pp(effect),
                INFERENCE_MIN_PP,
                "pp",
            )
        )
        numbers[f"train_batch_{int(batch)}_running_acc_pct"] = pct(run_e.mean)
    data = {"points": pts, "running": running}
    return compared(rows, numbers, pd.DataFrame(table), setting, notes, data)


# ----------------------------------------------------------------------------- norms


@section(
    "norms",
    "Normalisers side by side",
    "BN, GroupNorm, LayerNorm, no normalisation, and any other norm kind found.",
    Rule(
        """
        The normalisers side by side (descriptive: no verdict). Runs: ResNet-20, residual,
        init scale 1, augmentation, linearly scaled lr, every norm kind (each Ghost BN
        virtual batch and Batch Renorm warm-up its own arm; not the ICS study's noise
        injections) and batch size found. Final test accuracy (a diverged run counting as
        chance, {chance}), mean over seeds with its 95% interval; for each batch size the
        best norm is named. (Version 1 showed mean ± std; it decided nothing either.)
        """,
        RULE_VALUES,
        version=2,
    ),
    figures=("norms_accuracy",),
)
def norms_section(tables: RunTables) -> Finding:
    runs = tables.runs
    fixed = recipe_without(K.optim.lr, K.data.batch_size)
    normalisers = ~runs[K.norm.kind].isin(NOISE_DEVICES)
    sel, setting, notes = select(runs, fixed, None, linear_lr(runs) & normalisers)
    if sel.empty:
        return no_data(notes)
    key = K.data.batch_size
    labelled = with_acc(sel).assign(**{K.norm.kind: arm_labels(sel)})
    pts = point_table(labelled, [K.norm.kind, key], "acc")
    numbers: dict[str, Any] = {}
    for batch, sub in pts.dropna(subset=["mean"]).groupby(key):
        top = sub.loc[sub["mean"].idxmax()]
        numbers[f"batch_{int(batch)}_best_norm"] = top[K.norm.kind]
        numbers[f"batch_{int(batch)}_best_acc_pct"] = pct(top["mean"])
    evidence = pivot(pts, key, "batch")
    return Finding(DESCRIPTIVE, numbers, evidence, setting, notes, {"points": pts})
