"""The mechanism sections: *why* BN helps, and what replaces it.

Registered like the claims (bnlab.report.core), decided with the same interval rule
(bnlab.report.intervals), against arms that train:

- ics:          "ICS is not why BN helps" (Santurkar et al. 2018, Sec. 2), with noise
                of several magnitudes, the shift it produces measured against Fixup's
- landscape:    "BN smooths the loss landscape" (Santurkar et al. 2018, Sec. 3), BN
                against Fixup at checkpoints matched on training loss
- alternatives: GroupNorm and LayerNorm against BN with small-batch statistics
- batch_why:    why BN degrades at small batch: the train/test mismatch of its
                statistics, or noisier training (Singh & Shrivastava 2019's EvalNorm
                question, answered with precise BN); ghost BN against BN at the same
                batch, seeds paired, the mismatch measured on the training set
- deep_no_norm: Fixup / SkipInit vs the He-init net without normalisation, deep

ics and landscape read the training probes (probes.csv); batch_why the five
evaluations in summary.json (`bn_modes`); the others final accuracies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bnlab.report.arms import (
    AGAINST,
    BN,
    TRAINS_AT,
    at_own_lr,
    estimate_at,
    in_pp,
    never_trains,
    select_arms,
    statistics_batch_runs,
)
from bnlab.report.cells import ci_cells, ci_table, pct, pct_ci, pp_ci, sig3_cell, sig4
from bnlab.report.claims import RULE_VALUES
from bnlab.report.core import (
    SUPPORTED,
    Finding,
    Rule,
    Verdict,
    compared,
    headline,
    no_data,
    section,
    superseded,
)
from bnlab.report.intervals import (
    Effect,
    Estimate,
    difference,
    estimate,
    judge,
    point_table,
    verdict_row,
)
from bnlab.report.keys import (
    BN_MODES,
    DIVERGED,
    METRIC,
    PROBE,
    RUN_ID,
    STEP,
    TRAIN_ACC,
    VALUE,
    K,
)
from bnlab.report.load import RunTables
from bnlab.report.own_lr import EdgeWords, edge_of
from bnlab.report.points import (
    CHANCE_ACC,
    STUCK,
    STUCK_BELOW,
    TRAINED,
    flag,
    outcome,
    pivot,
    with_acc,
)
from bnlab.report.probe_maths import ics_by_run, shift_by_run, shift_rows
from bnlab.report.select import STANDARD, Setting, arm_labels, recipe_without, select

# ----------------------------------------------------------------------------- constants

ICS_COST_BOUND = 5.0  # noisy BN trains "about as well": its cost below 5 pp
ICS_MIN_PP = 1.0
SMOOTHER_RATIO = 1.1  # a landscape quantity is lower when the other is >= 1.1x it
LANDSCAPE_LEVELS = (0.25, 0.5, 0.75)  # matched-loss levels, between the runs' extremes
LANDSCAPE = {  # probes.csv metric -> what the report calls it
    "loss_variation": "loss variation",
    "grad_change_max": "gradient change (l2)",
    "beta_smoothness": "effective beta-smoothness",
}
LANDSCAPE_LOSS = "loss@0"  # the batch loss at the probed step (eta = 0)
ALTERNATIVES = ("gn", "ln")
ALT_MIN_PP = 1.0
WHY_MIN_PP = 1.0
DEEP_MIN_PP = 5.0
DEEP_ARMS = ("fixup", "skipinit")

VALUES = {
    **RULE_VALUES,
    "cost_bound": f"{ICS_COST_BOUND:g} pp",
    "ics_min": f"{ICS_MIN_PP:g} pp",
    "ratio": f"{SMOOTHER_RATIO:g}",
    "levels": ", ".join(f"{q:g}" for q in LANDSCAPE_LEVELS),
    "alt_min": f"{ALT_MIN_PP:g} pp",
    "why_min": f"{WHY_MIN_PP:g} pp",
    "deep_min": f"{DEEP_MIN_PP:g} pp",
}


# ----------------------------------------------------------------------------- ics


@section(
    "ics",
    "ICS is not why BN helps",
    (
        "Injecting distribution shift after every BN layer barely hurts: noisy BN, whose "
        "layer inputs shift at least as much as those of a net without BN, trains about as "
        "well as BN, and better than that net."
    ),
    Rule(
        """
        Runs: ResNet-20, residual, init scale 1, augmentation, batch 128, lr 0.1, with the
        activations probe; arms bn, fixup (the no-BN net that trains) and bn_noisy (BN
        followed by noise whose mean and scale change every step; each magnitude m its own
        arm, m x (mean 0.5, scale 1, jitter 0.25)). Accuracy: the final epoch's training
        accuracy in training mode (the noisy nets with their noise on: how well they
        train). A run's distribution shift: for every conv/linear layer, between
        consecutive activation-probe points (init and each epoch end, one fixed batch,
        train mode), |change of the output's mean| + |change of its std| in units of its
        std averaged over the two points; averaged over layers and points. The noise
        level compared is the smallest magnitude whose mean shift is at least Fixup's;
        if none is, INCONCLUSIVE (the noise did not test the claim). Two comparisons at
        that level: the cost of the noise, BN's accuracy minus noisy BN's (pp), SUPPORTED
        when its whole interval lies below {cost_bound} and NOT SUPPORTED when it lies
        above; and noisy BN against Fixup, noisy BN's accuracy minus Fixup's (pp), minimum
        {ics_min}. Shown beside: Santurkar's gradient ICS (1 - cos between a layer's
        gradient before and after one SGD step) where the ics probe ran. {decision}
        """,
        VALUES,
        version=2,
    ),
    figures=("ics_mechanism",),
)
def ics_section(tables: RunTables) -> Finding:
    runs, probes = tables.runs, tables.probes
    noisy = [a for a in _arm_names(runs) if a.startswith("bn_noisy/")]
    sel, setting, notes = select_arms(
        runs, [], (BN, "fixup", *noisy), flag(runs, K.probe.activations)
    )
    if sel.empty or BN not in set(sel["arm"]):
        return no_data(notes)
    mine = probes[probes[RUN_ID].isin(sel[RUN_ID])]
    shift = shift_by_run(mine)
    per_run = sel.assign(
        train=sel[TRAIN_ACC].where(~sel["diverged"], CHANCE_ACC),
        shift=sel[RUN_ID].map(shift),
        ics=sel[RUN_ID].map(ics_by_run(mine)),
    )
    pts = point_table(per_run, ["arm"], "train")
    for column in ("shift", "ics", "acc"):
        pts[column] = pts["arm"].map(per_run.groupby("arm")[column].mean())
    rows: list[Verdict] = []
    numbers: dict[str, Any] = {"lr": STANDARD[K.optim.lr]}
    shifts = per_run.groupby("arm")["shift"].mean()
    if "fixup" not in shifts or not noisy:
        rows.append(
            verdict_row(
                "noisy BN vs BN",
                None,
                ICS_COST_BOUND,
                "pp",
                "needs bn, fixup and bn_noisy runs with the activations probe",
            )
        )
    else:
        level = next(
            (a for a in sorted(noisy, key=_magnitude) if shifts.get(a, -1) >= shifts["fixup"]), None
        )
        numbers |= {f"{a}_shift": sig4(shifts[a]) for a in shifts.index}
        if level is None:
            why = "no noise magnitude shifted the layer inputs as much as Fixup's"
            rows.append(verdict_row("noisy BN vs BN", None, ICS_COST_BOUND, "pp", why))
        else:
            numbers["noise_level_compared"] = level
            e = {
                a: estimate(per_run.loc[per_run["arm"].eq(a), "train"])
                for a in (BN, level, "fixup")
            }
            cost = in_pp(difference(e[BN], e[level]))
            rows.append(
                verdict_row(
                    f"noisy BN ({level.split('/')[1]}) vs BN: accuracy cost",
                    cost,
                    ICS_COST_BOUND,
                    "pp",
                    below=True,
                )
            )
            fixup_best = e["fixup"].mean
            why = never_trains(fixup_best) if fixup_best < TRAINS_AT else ""
            rows.append(
                verdict_row(
                    f"noisy BN ({level.split('/')[1]}) vs Fixup",
                    in_pp(difference(e[level], e["fixup"])),
                    ICS_MIN_PP,
                    "pp",
                    why,
                )
            )
    evidence = pd.DataFrame(
        {
            "arm": pts["arm"],
            "train acc % [95% CI]": ci_cells(pts),
            "test acc % (no noise)": pts["acc"].map(lambda v: f"{100 * v:.1f}"),
            "distribution shift": pts["shift"].map(sig3_cell),
            "ICS (1 - cos)": pts["ics"].map(sig3_cell),
        }
    )
    curves = tables.epochs[tables.epochs[RUN_ID].isin(sel[RUN_ID])].merge(
        sel[[RUN_ID, "arm"]].rename(columns={"arm": K.norm.kind}), on=RUN_ID
    )
    data = {
        "points": pts,
        "curves": curves.assign(**{K.optim.lr: STANDARD[K.optim.lr]}),
        "shift": shift_rows(mine, _as_norms(sel)),
        "ics": _ics_rows(mine, sel),
    }
    return compared(rows, numbers, evidence, setting, notes, data)


def _arm_names(runs: pd.DataFrame) -> list[str]:
    from bnlab.report.select import arm_labels

    return sorted(set(arm_labels(runs)))


def _magnitude(arm: str) -> float:
    tail = arm.split("/", 1)[1]
    return float(tail[1:]) if tail.startswith("m") else float(tail.split(",")[1])


def _as_norms(sel: pd.DataFrame) -> pd.DataFrame:
    """The arms as the figures' series (`norm.kind`), at the experiment's lr."""
    return sel.assign(**{K.norm.kind: sel["arm"], K.optim.lr: STANDARD[K.optim.lr]})


def _ics_rows(probes: pd.DataFrame, sel: pd.DataFrame) -> pd.DataFrame:
    rows = probes[probes[PROBE].eq("ics") & probes[METRIC].eq("ics_cos")]
    return rows.merge(sel[[RUN_ID, "arm"]].rename(columns={"arm": K.norm.kind}), on=RUN_ID).assign(
        **{K.optim.lr: STANDARD[K.optim.lr]}
    )


# ----------------------------------------------------------------------------- landscape


@section(
    "landscape",
    "BN smooths the loss landscape",
    (
        "Along the gradient, at the same fit of the training data, BN's loss varies less, "
        "its gradient changes less and its effective beta-smoothness is lower than a net "
        "without BN that trains (Fixup)."
    ),
    Rule(
        """
        Runs: ResNet-20, residual, init scale 1, augmentation, batch 128, lr 0.1, with the
        landscape probe at many steps (probe.steps) and step multiple 0 among
        probe.landscape_steps (so the batch loss at each probed step is recorded); arms bn,
        fixup and skipinit. At each probed step the probe moves the weights along the
        gradient g by eta = m x lr for each multiple m and records the loss variation (max -
        min of the loss over the etas), the gradient change (largest l2 distance between the
        gradient there and g) and the effective beta-smoothness (largest gradient change per
        unit of distance moved). Checkpoints are matched on training loss: between the
        lowest loss at the first probed step and the highest of the runs' lowest probed
        losses, levels at fractions {levels}; for each run and level, the first probed step
        whose loss is at most the level. A run's value of a quantity is its mean log over
        the levels (a non-finite value, the loss blowing up along the gradient, counts as
        1e6). The effect against an arm is the arm's mean log minus BN's (shown as a ratio
        arm/BN), minimum log {ratio}: BN smoother. One comparison per arm and quantity.
        {decision}
        """,
        VALUES,
        version=2,
    ),
    figures=("landscape_bands",),
)
def landscape_section(tables: RunTables) -> Finding:
    runs, probes = tables.runs, tables.probes
    sel, setting, notes = select_arms(
        runs, [], (BN, "fixup", "skipinit"), flag(runs, K.probe.landscape)
    )
    if sel.empty or BN not in set(sel["arm"]):
        return no_data(notes)
    mine = probes[probes[RUN_ID].isin(sel[RUN_ID]) & probes[PROBE].eq("landscape")]
    mine = mine.merge(sel[[RUN_ID, "arm"]], on=RUN_ID)
    loss = mine[mine[METRIC].eq(LANDSCAPE_LOSS)]
    rows: list[Verdict] = []
    numbers: dict[str, Any] = {}
    table = []
    if loss.empty:
        rows.append(
            verdict_row(
                "vs Fixup",
                None,
                math.log(SMOOTHER_RATIO),
                "log ratio",
                f"no {LANDSCAPE_LOSS} rows: probe.landscape_steps lacks 0",
            )
        )
    else:
        first = loss.sort_values(STEP).groupby(RUN_ID)[VALUE].first()
        lowest = loss.groupby(RUN_ID)[VALUE].min()
        top, bottom = float(first.min()), float(lowest.max())
        levels = [bottom + q * (top - bottom) for q in LANDSCAPE_LEVELS]
        numbers["matched_loss_levels"] = [round(v, 3) for v in levels]
        steps = {rid: _steps_at(part, levels) for rid, part in loss.groupby(RUN_ID)}
        for arm in [a for a in ("fixup", "skipinit") if a in set(sel["arm"])]:
            for metric, label in LANDSCAPE.items():
                logs = {
                    a: estimate(
                        _mean_log(mine, rid, metric, steps.get(rid, []))
                        for rid in sel.loc[sel["arm"].eq(a), RUN_ID]
                    )
                    for a in (BN, arm)
                }
                effect: Effect = difference(logs[arm], logs[BN])
                rows.append(
                    verdict_row(
                        f"{AGAINST[arm]}: {label}", effect, math.log(SMOOTHER_RATIO), "log ratio"
                    )
                )
                table.append(
                    {
                        "against": AGAINST[arm],
                        "quantity": label,
                        "bn (geometric mean)": sig3_cell(math.exp(logs[BN].mean)),
                        f"{arm} (geometric mean)": sig3_cell(math.exp(logs[arm].mean)),
                        f"{arm} / bn": sig3_cell(math.exp(effect.value)),
                    }
                )
    evidence = pd.DataFrame(table)
    data = {
        "landscape": mine.rename(columns={"arm": K.norm.kind}).assign(
            **{K.optim.lr: STANDARD[K.optim.lr]}
        )
    }
    return compared(rows, numbers, evidence, setting, notes, data)


def _steps_at(loss_rows: pd.DataFrame, levels: list[float]) -> list[int]:
    """For each level, the first probed step whose loss is at most the level."""
    ordered = loss_rows.sort_values(STEP)
    out = []
    for level in levels:
        hit = ordered.loc[ordered[VALUE] <= level, STEP]
        if not hit.empty:
            out.append(int(hit.iloc[0]))
    return out


def _mean_log(rows: pd.DataFrame, run_id: str, metric: str, steps: list[int]) -> float:
    values = rows.loc[rows[RUN_ID].eq(run_id) & rows[METRIC].eq(metric), [STEP, VALUE]]
    values = values.set_index(STEP)[VALUE]
    picked = [values.get(s, np.nan) for s in steps]
    picked = [1e6 if not np.isfinite(v) and not np.isnan(v) else v for v in picked]
    picked = [v for v in picked if not np.isnan(v) and v > 0]
    return float(np.mean(np.log(picked))) if picked else math.nan


# ----------------------------------------------------------------------------- alternatives


@section(
    "alternatives",
    "Alternatives at small batch",
    ("GroupNorm and LayerNorm hold up better than BN when the batch statistics get small."),
    Rule(
        """
        Runs: the statistics-batch experiment of the batch claim (ResNet-20, residual,
        augmentation, optimisation batch 128, lr 0.1): BN with statistics over g samples
        (bn: g = 128; ghost_bn: g = norm.virtual_batch), and GroupNorm and LayerNorm,
        which compute no batch statistics. Final test accuracy, a diverged run counting
        as chance ({chance}). For each alternative, the effect is its accuracy minus BN's
        with the smallest g tried (pp), minimum {alt_min}. Shown beside: the same against
        BN with 128-sample statistics. {decision}
        """,
        VALUES,
        version=3,
    ),
    figures=("alternatives_accuracy",),
)
def alternatives_section(tables: RunTables) -> Finding:
    sel, setting, notes = statistics_batch_runs(tables.runs)
    if sel.empty:
        return no_data(notes)
    bn_arms = sel[sel["stat_batch"].notna()]
    small = float(bn_arms["stat_batch"].min())
    small_arm = bn_arms.loc[bn_arms["stat_batch"].eq(small), "arm"].iloc[0]
    pts = point_table(sel, ["arm"], "acc")
    rows: list[Verdict] = []
    numbers: dict[str, Any] = {"smallest_statistics_batch": int(small)}
    for alt in [a for a in ALTERNATIVES if a in set(sel["arm"])]:
        alt_e = estimate_at(sel, {"arm": alt})
        why = never_trains(alt_e.mean) if alt_e.mean < TRAINS_AT else ""
        effect = in_pp(difference(alt_e, estimate_at(sel, {"arm": small_arm})))
        rows.append(
            verdict_row(
                f"{alt} vs BN with {int(small)}-sample statistics", effect, ALT_MIN_PP, "pp", why
            )
        )
        numbers[f"{alt}_minus_bn128_pp"] = pct(alt_e.mean - estimate_at(sel, {"arm": BN}).mean)
    if not rows:
        rows.append(
            verdict_row(
                "alternatives vs BN",
                None,
                ALT_MIN_PP,
                "pp",
                "needs gn or ln in the statistics-batch experiment",
            )
        )
    evidence = pd.DataFrame({"arm": pts["arm"], "test acc % [95% CI]": ci_cells(pts)})
    return compared(rows, numbers, evidence, setting, notes, {"points": pts})


# ----------------------------------------------------------------------------- batch_why

MODES = {  # summary.json bn_modes key -> the evaluation's name in the report
    "running_acc": "(a) running averages",
    "precise_acc": "(b) precise BN",
    "batch_stats_acc": "(c) test-group statistics",
    "train_mode_acc": "(d) train mode, training set",
}


@superseded(
    "batch_why",
    Rule(
        """
        Runs: the BN models of the statistics-batch experiment (bn and ghost_bn at
        optimisation batch 128, lr 0.1) evaluated four ways after training
        (probe.bn_modes): (a) the running averages (the usual test accuracy); (b) precise
        BN: statistics re-estimated over at least 100 training batches of the model's own
        statistics size g, weights frozen; (c) each test group of g images normalised by
        its own statistics; (d) accuracy on the training set in train mode, groups of g.
        Two comparisons at the smallest g tried: the statistics mismatch, (b) minus (a)
        (pp), minimum {why_min}; and the noise in training, (d) of the 128-sample model
        minus (d) at the smallest g (pp), minimum {why_min}. Shown beside: the share of
        (a)'s loss against g = 128 that (b) recovers. {decision}
        """,
        VALUES,
        version=1,
    ),
)
def batch_why_section_v1(tables: RunTables) -> Finding:
    runs = tables.runs
    cols = [BN_MODES + k for k in MODES]
    if not set(cols) <= set(runs.columns):
        return no_data(["no run has the bn_modes evaluations (probe.bn_modes)"])
    # Only runs with the four evaluations (a twin without probe.bn_modes trained the same).
    sel, setting, notes = statistics_batch_runs(runs, runs[cols].notna().all(axis=1))
    sel = sel[sel["stat_batch"].notna()]
    if sel.empty:
        return no_data(notes + ["no BN run has the bn_modes evaluations"])
    long = sel.melt(
        id_vars=[RUN_ID, "stat_batch"], value_vars=cols, var_name="mode", value_name="value"
    )
    long["mode"] = long["mode"].str.removeprefix(BN_MODES).map(MODES)
    pts = point_table(long, ["mode", "stat_batch"], "value")
    sizes = sorted(set(sel["stat_batch"]))
    rows: list[Verdict] = []
    numbers: dict[str, Any] = {}
    small = sizes[0]
    at = {k: estimate_at(sel, {"stat_batch": float(small)}, BN_MODES + k) for k in MODES}
    numbers |= {f"g{int(small)}_{k}_pct": pct(at[k].mean) for k in MODES}
    rows.append(
        verdict_row(
            f"statistics mismatch at g={int(small)}: (b) - (a)",
            in_pp(difference(at["precise_acc"], at["running_acc"])),
            WHY_MIN_PP,
            "pp",
        )
    )
    if 128.0 in sizes and small < 128:
        ref = {k: estimate_at(sel, {"stat_batch": 128.0}, BN_MODES + k) for k in MODES}
        rows.append(
            verdict_row(
                f"training noise: (d) at g=128 - (d) at g={int(small)}",
                in_pp(difference(ref["train_mode_acc"], at["train_mode_acc"])),
                WHY_MIN_PP,
                "pp",
            )
        )
        lost = ref["running_acc"].mean - at["running_acc"].mean
        recovered = at["precise_acc"].mean - at["running_acc"].mean
        numbers["loss_vs_g128_pp"] = pct(lost)
        numbers["share_recovered_by_precise_bn"] = round(recovered / lost, 3) if lost > 0 else None
    else:
        notes.append("needs the 128-sample model and a smaller g for the training-noise part")
    evidence = ci_table(pts, ["mode"], "stat_batch", "g={:g} acc %")
    return compared(rows, numbers, evidence, setting, notes, {"points": pts})


# The current rule (version 2, issue 24): the ghost-BN decomposition, seeds paired, its
# train-set measure in eval conditions.

GHOST = "ghost_bn"
TRAIN_RUNNING = "train_running_acc"  # (e): probe.bn_modes records it since this rule's v2
MODES_V2 = {**MODES, TRAIN_RUNNING: "(e) running averages, training set"}
PREDATES = f"runs predate the eval-conditions probe ({TRAIN_RUNNING})"
# The accuracy gap and its parts: slug -> (name, signed bn_modes fields). A part's value
# for one seed is the signed sum for ghost_bn/g minus the same sum for bn. gap = noise +
# mismatch + rest, exactly; precise is a second view of the test-time statistics.
PARTS: dict[str, tuple[str, dict[str, int]]] = {
    "gap": ("accuracy gap", {"running_acc": -1}),
    "noise": ("training noise", {"train_mode_acc": -1}),
    "mismatch": ("statistics mismatch, training set", {"train_mode_acc": 1, TRAIN_RUNNING: -1}),
    "rest": ("rest: train/test gap in eval mode", {TRAIN_RUNNING: 1, "running_acc": -1}),
    "precise": ("recovered by precise statistics", {"precise_acc": 1, "running_acc": -1}),
}
DECIDED = ("mismatch", "precise", "noise")  # the parts judged, in row order
# How ArmAtLr.edge words a best lr at an edge of the lrs tried (its ladder).
LADDER_EDGES = EdgeWords(
    only="its only lr ({lr})",
    bottom="at the bottom of its ladder ({lr})",
    top="at the top of its ladder ({lr})",
)
WHY_VALUES = {**VALUES, "stuck": f"{100 * STUCK_BELOW:g}%"}


@dataclass(frozen=True)
class ArmAtLr:
    """One arm (bn, or ghost_bn/g) at its own lr: each seed at the lr the others chose."""

    arm: str
    g: int  # the samples its BN statistics cover in training
    runs: pd.DataFrame  # one row per seed (indexed by seed): its run at the chosen lr
    grid: tuple[float, ...]  # the lrs tried
    best_lr: float  # the highest mean accuracy over all seeds (the fixed lr when `fixed`)
    fixed: bool = False  # measured at one lr for every arm (v2): no ladder edge applies

    @property
    def edge(self) -> str:
        """Where the best lr sits when a wider ladder could beat it ("" inside it)."""
        return "" if self.fixed else edge_of(self.grid, self.best_lr, LADDER_EDGES)

    @property
    def outcomes(self) -> pd.Series:
        return outcome(self.runs)


def _why_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, Setting | None, list[str]]:
    """BN and Ghost BN runs of the standard recipe, every lr, one setting, at the
    reference batch (the largest), with `acc`, `arm` and `g`. A run counts when it has
    the bn_modes evaluations, or when it failed to train (diverged or stuck: its lr is
    still a rung of the ladder) -- so a twin without probe.bn_modes never stands in for
    the one with it."""
    cols = [BN_MODES + k for k in MODES]
    if not set(cols) <= set(runs.columns):
        return runs.iloc[:0], None, []
    measured = runs[cols].notna().all(axis=1)
    extra = runs[K.norm.kind].isin([BN, GHOST]) & (measured | outcome(runs).ne(TRAINED))
    fixed = recipe_without(K.data.batch_size, K.optim.lr)
    sel, setting, notes = select(runs, fixed, None, extra)
    if sel.empty:
        return sel, setting, notes
    batch = sel[K.data.batch_size].astype(float)
    reference = batch.max()
    nan = pd.Series(np.nan, index=sel.index)
    g = batch.where(sel[K.norm.kind].eq(BN), sel.get(K.norm.virtual_batch, nan).astype(float))
    other = ~np.isclose(batch, reference)
    if other.any():
        notes.append(
            f"left out {int(other.sum())} run(s) at a batch other than the reference batch "
            f"{reference:g} (the small-batch claim's)"
        )
    not_ghost = ~other & sel[K.norm.kind].eq(GHOST) & (g >= reference)
    if not_ghost.any():
        notes.append(
            f"left out {int(not_ghost.sum())} ghost_bn run(s) whose virtual batch is not "
            f"below the batch {reference:g}: their statistics are BN's"
        )
    sel = with_acc(sel[~other & ~not_ghost])
    return sel.assign(arm=arm_labels(sel), g=g[sel.index].astype(int)), setting, notes


def shared_lr(sel: pd.DataFrame) -> float | None:
    """The one lr every arm is measured at: among the lrs every arm was run at, BN's
    best mean `acc` (ties to the smaller lr; None when no lr is shared or no BN arm)."""
    lr = K.optim.lr
    common = set.intersection(*(set(p[lr]) for _, p in sel.groupby("arm")))
    bn = sel[sel["arm"].eq(BN) & sel[lr].isin(common)]
    if bn.empty:
        return None
    return float(bn.groupby(lr)["acc"].mean().idxmax())


def at_lr(part: pd.DataFrame, arm: str, lr: float) -> ArmAtLr:
    """`part` (one arm's runs) at the fixed `lr`: one run per seed."""
    at = part[np.isclose(part[K.optim.lr].astype(float), lr)]
    runs = at.groupby(K.train.seed, sort=True).head(1)
    return ArmAtLr(
        arm=arm,
        g=int(part["g"].iloc[0]),
        runs=runs.set_index(K.train.seed, drop=False),
        grid=tuple(sorted(float(v) for v in part[K.optim.lr].unique())),
        best_lr=lr,
        fixed=True,
    )


def _pairs(bn: ArmAtLr, ghost: ArmAtLr) -> list[Any]:
    """The seeds both arms trained at (neither run diverged nor stuck)."""
    common = sorted(set(bn.runs.index) & set(ghost.runs.index))
    return [s for s in common if bn.outcomes[s] == TRAINED and ghost.outcomes[s] == TRAINED]


def _signed(arm: ArmAtLr, seeds: list[Any], terms: dict[str, int]) -> pd.Series:
    """Per seed (the index), the signed sum of `terms`' bn_modes fields of the arm's run."""
    rows = arm.runs.loc[seeds]
    out = pd.Series(0.0, index=rows.index)
    for mode, sign in terms.items():
        out = out + sign * rows[BN_MODES + mode].astype(float)
    return out


def _measured(arms: tuple[ArmAtLr, ...], seeds: list[Any], terms: dict[str, int]) -> bool:
    """Every field of `terms` recorded for every paired run (older runs lack (e))."""
    for arm in arms:
        rows = arm.runs.loc[seeds]
        if not all(BN_MODES + k in rows and rows[BN_MODES + k].notna().all() for k in terms):
            return False
    return True


def _paired(bn: ArmAtLr, ghost: ArmAtLr, seeds: list[Any], terms: dict[str, int]) -> Estimate:
    """The per-seed differences ghost - bn of a part (fractions), as an Estimate."""
    return estimate(_signed(ghost, seeds, terms) - _signed(bn, seeds, terms))


def _paired_effect(e: Estimate) -> Effect:
    """The per-seed differences' t-interval as an effect in pp (both arms' seeds: the pairs)."""
    return in_pp(Effect(e.mean, e.low, e.high, (e.n, e.n)))


def _blocked(bn: ArmAtLr, ghost: ArmAtLr, gap: Estimate) -> str:
    """Why a ghost arm's measured parts cannot decide ("" when they can)."""
    common = sorted(set(bn.runs.index) & set(ghost.runs.index))
    for arm in (bn, ghost):
        failed = arm.outcomes[common].value_counts()
        if failed.drop(TRAINED, errors="ignore").sum():
            counts = ", ".join(f"{failed.get(k, 0)} {k}" for k in (DIVERGED, STUCK))
            return f"{arm.arm} at its lr: {counts} of {len(common)} seeds (failed to train)"
    for arm in (bn, ghost):
        if arm.edge:
            return f"{arm.arm}'s best lr is {arm.edge}: extend it"
    effect = _paired_effect(gap)
    if not effect.exploratory and judge(effect, WHY_MIN_PP)[0] != SUPPORTED:
        return (
            f"no accuracy gap to decompose: bn - ghost g={ghost.g} is "
            f"{effect.value:+.2f} [{effect.low:+.2f}, {effect.high:+.2f}] pp"
        )
    return ""


def _ghost_rows(bn: ArmAtLr, ghost: ArmAtLr) -> tuple[list[Verdict], dict[str, Any]]:
    """The decided parts of one ghost arm against bn, and every part as a number."""
    seeds = _pairs(bn, ghost)
    names = {slug: f"ghost g={ghost.g}: {name}" for slug, (name, _) in PARTS.items()}
    if not seeds:
        why = f"needs bn and {ghost.arm} trained at the same seeds"
        return [verdict_row(names[s], None, WHY_MIN_PP, "pp", why) for s in DECIDED], {}
    estimates = {
        slug: _paired(bn, ghost, seeds, terms)
        for slug, (_, terms) in PARTS.items()
        if _measured((bn, ghost), seeds, terms)
    }
    numbers = {f"g{ghost.g}_{slug}_pp": pp_ci(e) for slug, e in estimates.items()}
    why = _blocked(bn, ghost, estimates["gap"])
    rows = [
        verdict_row(names[slug], _paired_effect(estimates[slug]), WHY_MIN_PP, "pp", why)
        if slug in estimates
        else verdict_row(names[slug], None, WHY_MIN_PP, "pp", PREDATES)
        for slug in DECIDED
    ]
    return rows, numbers


def _mode_cell(arm: ArmAtLr, mode: str) -> str:
    """An evaluation's mean over the seeds that trained, "–" where none recorded it."""
    rows = arm.runs[arm.outcomes.eq(TRAINED)]
    e = estimate(rows.get(BN_MODES + mode, pd.Series(dtype=float)).astype(float))
    return pct_ci(e) if e.n else "–"


def _why_evidence(arms: list[ArmAtLr]) -> pd.DataFrame:
    """One row per arm: its lrs, the lr each seed was measured at, what became of those
    runs, and the five evaluations (mean over the seeds that trained, 95% interval)."""
    rows = []
    for arm in arms:
        counts = arm.outcomes.value_counts()
        rows.append(
            {
                "arm": arm.arm,
                "g": arm.g,
                "lrs tried": ", ".join(f"{v:g}" for v in arm.grid),
                "best lr": f"{arm.best_lr:g}" + (" (edge)" if arm.edge else ""),
                "lr per seed": ", ".join(f"{v:g}" for v in arm.runs[K.optim.lr]),
                "trained / diverged / stuck": " / ".join(
                    str(int(counts.get(k, 0))) for k in (TRAINED, DIVERGED, STUCK)
                ),
                **{f"{name} %": _mode_cell(arm, mode) for mode, name in MODES_V2.items()},
            }
        )
    return pd.DataFrame(rows)


def _why_points(arms: list[ArmAtLr]) -> pd.DataFrame:
    """Per evaluation and statistics batch g: the mean over the seeds that trained."""
    parts = [arm.runs[arm.outcomes.eq(TRAINED)].assign(stat_batch=float(arm.g)) for arm in arms]
    runs = pd.concat(parts)
    cols = [BN_MODES + k for k in MODES_V2 if BN_MODES + k in runs]
    long = runs.melt(id_vars=["stat_batch"], value_vars=cols, var_name="mode", value_name="value")
    long["mode"] = long["mode"].str.removeprefix(BN_MODES).map(MODES_V2)
    return point_table(long.dropna(subset=["value"]), ["mode", "stat_batch"], "value")


def _why_outcomes(arms: list[ArmAtLr]) -> pd.DataFrame:
    """Per arm: its statistics batch and how many of its measured seeds failed to train."""
    return pd.DataFrame(
        [
            {
                "stat_batch": float(a.g),
                DIVERGED: int(a.outcomes.eq(DIVERGED).sum()),
                STUCK: int(a.outcomes.eq(STUCK).sum()),
            }
            for a in arms
        ],
        columns=["stat_batch", DIVERGED, STUCK],
    )


BATCH_WHY_RULE = Rule(
    """
    Version 2: the train-set measure in eval conditions; seeds paired. Runs: ResNets of
    the standard recipe (depth 20, residual, He init, init scale 1, augmentation) with
    norm bn or ghost_bn, every lr, one setting (dataset, preset, epochs, training
    images), at the reference batch B: the largest batch among them (runs at other
    batches are the small-batch claim's). Arms: bn (statistics over the B samples of a
    batch) and, for each virtual batch g below B, ghost_bn/g (the same optimisation
    batch B, statistics over groups of g: ghost BN). A fixed setting, not each arm at
    its own best lr: the decomposition asks what the statistics alone cost at one
    optimisation, so every arm is measured at one lr, BN's -- among the lrs every arm
    was run at, the one with BN's highest mean final test accuracy (a diverged run
    counting as chance, {chance}; ties to the smaller lr; in the suite, BN's tuned base
    lr, the only lr the Ghost BN arms run at) -- each seed's run there giving its
    values. A run
    either trained, diverged (its status) or stuck (finished below {stuck} final test
    accuracy); a seed whose run failed to train in either arm is left out of the pairs
    and blocks the comparisons. A run that trained counts only with the evaluations of
    probe.bn_modes (one that diverged or got stuck counts on its arm's lr ladder without
    them), taken after training on copies of the model: (a) test accuracy with the
    running averages; (b) test accuracy with precise statistics (re-estimated over 100
    training batches of g, weights frozen); (c) test groups of g normalised by their own
    statistics; and on the training set without augmentation, the same images for both:
    (d) train mode, each group of g normalised by its own statistics, and (e) eval mode
    with the running averages. Seeds are paired: every quantity below is a difference
    between ghost_bn/g and bn taken seed by seed (the two runs of one seed), and its 95%
    interval the Student t interval of those per-seed differences. The accuracy gap,
    bn's (a) minus ghost_bn/g's, is exactly the sum of three parts: the training noise,
    bn's (d) minus ghost_bn/g's; the statistics mismatch on the training set, (d) - (e)
    of ghost_bn/g minus (d) - (e) of bn, so images, weights and augmentation are the
    same and only the statistics differ (g-sample batch statistics vs running averages);
    and the rest, the train/test gap in eval mode, (e) - (a) of ghost_bn/g minus bn's.
    Three comparisons per ghost arm, each in pp, minimum {why_min}: the statistics
    mismatch; the recovery by precise statistics at test, (b) - (a) of ghost_bn/g minus
    bn's; and the training noise. Each is SUPPORTED when its interval lies above zero
    and the effect reaches the minimum, NOT SUPPORTED when the whole interval lies below
    the minimum, else INCONCLUSIVE; fewer than {seeds} pairs is exploratory and never
    decides. A ghost arm whose accuracy gap is not SUPPORTED by the same rule has
    nothing to decompose: its parts are shown, not decided. Runs without (e) (they
    predate it) leave the statistics mismatch not measured. The gap and all its parts
    are shown per ghost arm. Headline: the measured, unblocked comparisons must agree --
    SUPPORTED or NOT SUPPORTED when every one says so, MIXED when they disagree (a
    measured but undecided comparison counts as disagreeing), INCONCLUSIVE when none is
    decided.
    """,
    WHY_VALUES,
    version=2,
)


@section(
    "batch_why",
    "Why BN degrades at small batch",
    (
        "Part of BN's loss with small-batch statistics is the train/test mismatch of its "
        "statistics (re-estimating them recovers it), and part is noisier training."
    ),
    BATCH_WHY_RULE,
    figures=("batch_why_modes",),
)
def batch_why_section(tables: RunTables) -> Finding:
    sel, setting, notes = _why_runs(tables.runs)
    if sel.empty:
        return no_data(notes + ["no BN or Ghost BN run has the bn_modes evaluations"])
    lr = shared_lr(sel)
    if lr is None:
        return no_data(notes + ["no lr at which bn and every Ghost BN arm were run"])
    by_arm = {arm: at_lr(part, arm, lr) for arm, part in sel.groupby("arm", sort=False)}
    arms = sorted(by_arm.values(), key=lambda a: -a.g)  # bn first, then smaller g
    reference = int(sel[K.data.batch_size].max())
    bn, ghosts = by_arm.get(BN), [a for a in arms if a.arm != BN]
    rows: list[Verdict] = []
    numbers: dict[str, Any] = {"reference_batch": reference, "lr": lr}
    if bn is None or not ghosts:
        why = f"needs bn and ghost_bn (virtual batch below {reference}) at batch {reference}"
        rows.append(verdict_row("ghost BN vs BN", None, WHY_MIN_PP, "pp", why))
    for ghost in ghosts if bn is not None else []:
        found, parts = _ghost_rows(bn, ghost)
        rows += found
        numbers |= parts
    data = {"points": _why_points(arms), "outcomes": _why_outcomes(arms)}
    evidence = _why_evidence(arms)
    figures = () if data["points"].empty else None  # nothing trained: nothing to draw
    return Finding(headline(rows), numbers, evidence, setting, notes, data, figures, rows)


# ----------------------------------------------------------------------------- deep_no_norm


@section(
    "deep_no_norm",
    "Depth without BN",
    (
        "Deep residual nets train without any normalisation when each residual branch "
        "starts at zero (Fixup, SkipInit), where the same nets with He init do not."
    ),
    Rule(
        """
        Runs: residual ResNets of any depth, init scale 1, augmentation, batch 128; arms
        bn, none (He init), fixup and skipinit, each at its own lr (its best at depth 20
        among those also tried at its deepest depth). Final test accuracy, a diverged run
        counting as chance ({chance}). Decided at the deepest depth tried with every arm:
        for Fixup and SkipInit, the effect is its accuracy minus the He-init net's (pp),
        minimum {deep_min}, and the arm must train there (mean at least {trains}). Shown
        beside: each no-norm arm's gap to BN at every depth. {decision}
        """,
        VALUES,
        version=2,
    ),
    figures=("deep_no_norm_accuracy",),
)
def deep_no_norm_section(tables: RunTables) -> Finding:
    sel, setting, notes = select_arms(
        tables.runs,
        [K.model.depth, K.optim.lr],
        (BN, "none", *DEEP_ARMS),
        tables.runs[K.model.residual].eq(True),
    )
    if sel.empty:
        return no_data(notes)
    sel = at_own_lr(sel, notes)
    key = K.model.depth
    pts = point_table(sel, ["arm", key], "acc")
    arms = (BN, "none", *DEEP_ARMS)
    depths = sorted(
        set.intersection(*(set(pts.loc[pts["arm"].eq(a), key]) for a in arms))
        if set(arms) <= set(pts["arm"])
        else set()
    )
    rows: list[Verdict] = []
    numbers: dict[str, Any] = {"depths_with_all_arms": [int(d) for d in depths]}
    for arm in DEEP_ARMS:
        for depth in sorted(
            set(pts.loc[pts["arm"].eq(arm), key]) & set(pts.loc[pts["arm"].eq(BN), key])
        ):
            numbers[f"{arm}_minus_bn_depth_{int(depth)}_pp"] = pct(
                estimate_at(sel, {"arm": arm, key: depth}).mean
                - estimate_at(sel, {"arm": BN, key: depth}).mean
            )
    if not depths:
        rows.append(
            verdict_row(
                "vs naive He init", None, DEEP_MIN_PP, "pp", f"needs {', '.join(arms)} at one depth"
            )
        )
    else:
        deep = depths[-1]
        numbers["deciding_depth"] = int(deep)
        naive = estimate_at(sel, {"arm": "none", key: deep})
        for arm in DEEP_ARMS:
            e = estimate_at(sel, {"arm": arm, key: deep})
            why = never_trains(e.mean) if e.mean < TRAINS_AT else ""
            rows.append(
                verdict_row(
                    f"{arm} vs naive He init at depth {int(deep)}",
                    in_pp(difference(e, naive)),
                    DEEP_MIN_PP,
                    "pp",
                    why,
                )
            )
    evidence = pivot(pts, key, "depth", by="arm", order=arms)
    return compared(rows, numbers, evidence, setting, notes, {"points": pts})
